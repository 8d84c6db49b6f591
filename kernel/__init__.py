"""The pure event-sourced core of a DAG run.

Nothing in this package does I/O or reads ambient state (no clock, no randomness, no
environment): time, ids and seeds arrive as command fields stamped by the shell.
"""
