"""Shared fixtures: real servers (Dovecot, aiosmtpd) and databases come from tests/servers/."""

pytest_plugins = [
    "tests.servers.dovecot",
    "tests.servers.smtp",
    "tests.servers.databases",
    "tests.servers.dovecot_oauth",
]
