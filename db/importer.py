"""Compatibility path: new code imports db.ops.import_codx_junior (the file shapes are in db.codx_junior)."""

from db.ops.import_codx_junior import (
    Conflict,
    ImportEntry,
    ImportReport,
    Refusal,
    import_codx_junior,
    read_codx_junior_settings,
)

__all__ = ["Conflict", "ImportEntry", "ImportReport", "Refusal", "import_codx_junior", "read_codx_junior_settings"]
