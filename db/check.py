"""Compatibility path: new code imports ``db.ops.check`` (and the reports from ``db.ops.reports``)."""

from db.ops.check import check, check_root, rebuild_indexes, repair
from db.ops.reports import CheckReport, Problem, RepairReport

__all__ = ["CheckReport", "Problem", "RepairReport", "check", "check_root", "rebuild_indexes", "repair"]
