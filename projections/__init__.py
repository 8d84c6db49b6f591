"""Projections: consumers of the history stream (snapshots, SQLite tables, users' own)."""
