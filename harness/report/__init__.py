"""Leaderboard reporting: statistics over seeds (`stats`), the tables' schemas (`tables`) and their renderers
(`render`). `harness.leaderboard` aggregates cells with these and publishes the files."""
