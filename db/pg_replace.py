"""Compatibility path: new code imports ``db.pg.replace``."""

from db.pg.replace import drop_leftover_staging, replace_from_staging, staging_storage

__all__ = ["drop_leftover_staging", "replace_from_staging", "staging_storage"]
