"""Shared fixtures: real servers come from tests/servers/, databases from tests/servers/databases.py."""

pytest_plugins = [
    "tests.servers.dovecot",
    "tests.servers.smtp",
    "tests.servers.databases",
]
