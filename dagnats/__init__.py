"""The I/O shell and public API of DagNats."""
