"""The report stage, by its data flow: merge runs into one cells table (`merge`), aggregate it over seeds
(`aggregate`, with the rules in `stats`) into the published tables (`tables`; the summary's columns in `columns`),
render them (`render`, one module per output format) and write the files (`publish`). `harness.leaderboard` is the
public façade."""
