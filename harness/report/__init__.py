"""Leaderboard reporting: statistics over seeds (`stats`), the tables' schemas (`tables`) and their renderers
(`render`), merging runs and the cautions (`merge`). `harness.leaderboard` aggregates cells with these and publishes
the files."""
