"""Shared fixtures: a real nats-server for integration tests (see tests/nats_fixtures.py)."""

from tests.nats_fixtures import js, nats_server, nc, private_js, private_server, server_dir

__all__ = ["js", "nats_server", "nc", "private_js", "private_server", "server_dir"]
