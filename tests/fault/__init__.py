"""Fault-injection helpers: a crash wrapper around the real daemon, a TCP proxy, a private
PostgreSQL cluster, a killing SMTP sink and the invariant checks every fault test ends with."""
