"""``python -m db`` runs the codx-db command line."""

from db.cli import main

raise SystemExit(main())
