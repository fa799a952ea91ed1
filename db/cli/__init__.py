"""The ``codx-db`` command line: ``main`` is the console script; ``Cli`` runs it on any database and streams."""

from db.cli.app import Cli, main
from db.cli.parser import build_parser

__all__ = ["Cli", "build_parser", "main"]
