"""mailbridge: email-to-ticket ingestion daemon."""

__version__ = "0.1.0"
