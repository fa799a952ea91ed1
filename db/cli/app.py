"""The ``codx-db`` command line (also ``python -m db``): parse, run one command, render, exit code.

Exit codes: 0 success; 1 a codx-db error (not found, exists, invalid, unavailable...), printed
as one line on stderr, or a report that found problems; 2 a usage error; 130 interrupted.
``--json`` prints the result as JSON on stdout. Passwords are read from a prompt or from stdin,
never from the command line.

``Cli(database, stdin=..., stdout=..., stderr=...)`` runs commands on an explicit database and
streams (an application embedding the CLI, or a test); ``main()`` is the console script, on the
global database and the process's streams.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from db import db as global_database
from db.cli import commands
from db.cli.parser import build_parser
from db.cli.progress import write
from db.cli.render import render
from db.cli.results import CommandError, Outcome, UsageError
from db.database import Database
from db.errors import CodxDBError, FileNotWritable, StorageInUse
from migrations.runner import holds_database


class Cli:
    """One command line run on a database, reading ``stdin`` and writing ``stdout``/``stderr``."""

    def __init__(
        self,
        database: Database | None = None,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        # The console script works on the global database its settings describe (this and the
        # UserDB face are the only modules that touch it).
        self.database = global_database if database is None else database
        self.stdin = sys.stdin if stdin is None else stdin
        self.stdout = sys.stdout if stdout is None else stdout
        self.stderr = sys.stderr if stderr is None else stderr

    def run(self, argv: Sequence[str] | None = None) -> int:
        """Run one command line; return the exit code. The database is closed at the end."""
        for stream in (self.stdout, self.stderr):
            # Never a UnicodeEncodeError traceback on a terminal or pipe that is not UTF-8.
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        parser = build_parser()
        try:
            # argparse prints --help, --version and usage errors on sys.stdout/sys.stderr itself.
            with contextlib.redirect_stdout(self.stdout), contextlib.redirect_stderr(self.stderr):
                args = parser.parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="codx-db: %(levelname)s: %(message)s",
        )
        if not args.verbose:
            # RelStorage logs connection failures as warnings before raising; the CLI's own
            # one-line error says the same thing.
            logging.getLogger("relstorage").setLevel(logging.ERROR)
        try:
            self._require_existing_database(args)
            result = self._handle(args)
        except UsageError as exc:
            parser.print_usage(self.stderr)
            self._err(f"codx-db: error: {exc}")
            return 2
        except CodxDBError as exc:
            self._fail(args, str(exc))
            return 1
        except KeyboardInterrupt:
            self._err("codx-db: interrupted")
            return 130
        except Exception as exc:
            if args.verbose:
                raise
            self._fail(args, f"unexpected {type(exc).__name__}: {exc} (run with -v for details)")
            return 1
        finally:
            self.database.close()
        outcome = result if isinstance(result, Outcome) else Outcome(result)
        if outcome.result is not None:
            self._out(render(outcome.result, as_json=args.json))
        return 0 if outcome.ok else 1

    def _handle(self, args: argparse.Namespace) -> Any:
        """Run the command. One that only reads a file in use, or one it cannot write, reads it
        read-only instead (db/file_read_only.py): `codx-db user list` works beside codx-api."""
        try:
            return args.handler(commands.Session(self.database, self.stdin, self.stdout, self.stderr), args)
        except (StorageInUse, FileNotWritable) as exc:
            settings = self.database.settings
            writes = getattr(args, "repair", False) or getattr(args, "apply", False)
            if not getattr(args, "reads", False) or writes or settings.db_read_only:
                raise
            summary = exc.summary
        self.database.close()
        self.database = Database(settings.with_overrides(db_read_only=True))
        self._err(f"codx-db: note: {summary}: reading it read-only, as it is now")
        return args.handler(commands.Session(self.database, self.stdin, self.stdout, self.stderr), args)

    def _require_existing_database(self, args: argparse.Namespace) -> None:
        """Refuse to work on an empty database (no file, no tables, no root) rather than create one.

        Opening a database creates it: a command that only reads (check, user list, backup...)
        would leave a new file, RelStorage's tables or a root behind, after which `copy` and
        `restore` need --force; a typo in the location would show "0 users". Commands that
        create (user add, import, restore, migrate --apply) may; `info` reports the emptiness.
        """
        if getattr(args, "creates", False) or getattr(args, "apply", False) or args.handler is commands.cmd_info:
            return
        settings = self.database.settings
        if not holds_database(settings):
            setting = {"file": "CODX_JUNIOR_DB_FILE_PATH", "config": "CODX_JUNIOR_DB_CONFIG_FILE"}
            raise CommandError(
                f"{commands.EMPTY} (no database at {settings.location}): check "
                f"{setting.get(settings.kind, 'CODX_JUNIOR_DB_DSN')} if you expected one; "
                "the first write creates it, e.g. `codx-db user add`"
            )

    def _fail(self, args: argparse.Namespace, message: str) -> None:
        message = " ".join(message.split())  # one line, whatever the library wrote
        if getattr(args, "json", False):
            self._out(json.dumps({"error": message}))
        self._err(f"codx-db: error: {message}")

    def _out(self, text: str) -> None:
        """Print ``text`` on stdout; a reader that has gone (``| head``, ``| true``) is not an error.

        The work is done by then: the exit code stays the command's, with no traceback.
        """
        write(self.stdout, text + "\n")

    def _err(self, text: str) -> None:
        write(self.stderr, text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on the global database and the process's streams; return the exit code."""
    return Cli().run(argv)
