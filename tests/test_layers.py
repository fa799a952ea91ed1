"""The layers hold: a file-only process never loads the PostgreSQL stack.

Each check runs in a fresh interpreter (this one has loaded everything already) and asserts
which modules are loaded, not how long anything took.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

POSTGRES_STACK = {"psycopg2", "relstorage", "ZConfig", "ZODB.config"}


def _loaded_after(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_db_loads_no_storage_backend() -> None:
    loaded = _loaded_after("import db")
    assert not (POSTGRES_STACK | {"ZODB.FileStorage"}) & loaded


def test_a_file_database_never_loads_the_postgres_stack(tmp_path: Path) -> None:
    code = (
        "from db.database import Database\n"
        "from db.settings import CodxJuniorGlobalSettings\n"
        "from db.user_db import UserDB\n"
        f"settings = CodxJuniorGlobalSettings.load(db_backend='file', db_file_path={str(tmp_path / 'users.fs')!r})\n"
        "database = Database(settings)\n"
        "users = UserDB(database)\n"
        "users.create(username='ada', password='correct horse battery')\n"
        "with database.transaction() as uow:\n"
        "    assert users.get('ada').username == 'ada'\n"
        "database.close()\n"
    )
    loaded = _loaded_after(code)
    assert "ZODB.FileStorage" in loaded  # the check sees what the process really loaded
    assert not POSTGRES_STACK & loaded, sorted(POSTGRES_STACK & loaded)
