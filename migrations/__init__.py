"""Alembic migrations: the only source of mailbridge's database schema."""
