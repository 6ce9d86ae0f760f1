"""Revisions of the SQLite job store's schema, applied in order by Alembic."""
