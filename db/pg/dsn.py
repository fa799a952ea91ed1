"""PostgreSQL DSNs: parse, check, mask and scrub; the one place a DSN password is handled."""

from __future__ import annotations

import re

from psycopg2.extensions import make_dsn, parse_dsn

# libpq parameters that hold a secret: the password, and the passphrase of the client's TLS key.
SECRET_PARAMS = ("password", "sslpassword")


def mask_dsn(dsn: str) -> str:
    """Return the DSN with its secrets (``SECRET_PARAMS``) replaced by ``***`` (URI or ``key=value`` form)."""
    try:
        params = parse_dsn(dsn)
    except Exception:  # noqa: BLE001 - an unparsable DSN must not be echoed: it may hold a password
        return "<unparsable DSN>"
    for name in SECRET_PARAMS:
        if name in params:
            params[name] = "***"
    return str(make_dsn(**params))


def keyword_dsn(dsn: str) -> str:
    """The DSN in libpq ``key=value`` form.

    RelStorage appends `` application_name=...`` to the DSN it is given, which only works
    with the keyword form: a ``postgresql://`` URI would swallow it into the database name.
    """
    return str(make_dsn(**parse_dsn(dsn)))


def check_dsn(dsn: str) -> None:
    """Raise ``ValueError`` (never quoting the DSN) if ``dsn`` is not a usable libpq DSN or URI."""
    try:
        params = parse_dsn(dsn)
    except Exception:  # noqa: BLE001 - psycopg2's message quotes the DSN; never show it
        raise ValueError("not a valid libpq DSN or postgresql:// URI (value hidden)") from None
    if _unencoded_at(dsn, params):
        # libpq split a URI at its first "@": the rest of the password became the host name (or
        # the database name), which `info` and every connection error would show.
        raise ValueError(
            "the DSN holds an '@' outside its user:password@ separator (value hidden): in a postgresql:// "
            "URI, percent-encode an '@' in the password as %40 (or give the password in PGPASSWORD)"
        )
    # libpq only checks the port when connecting; a typo should fail at load time.
    if not all(p.strip().isdigit() for p in params.get("port", "5432").split(",")):
        raise ValueError("the port in the DSN is not a number")


def _unencoded_at(dsn: str, params: dict[str, str]) -> bool:
    """An '@' libpq did not read as the user:password@ separator (an unencoded one in the password)."""
    text = dsn.strip()
    if text.startswith(("postgresql://", "postgres://")):
        before_query = text.split("?", 1)[0]
        return before_query.count("@") > 1
    return "@" in params.get("host", "")


def scrub(message: str, dsn: str | None) -> str:
    """Remove a DSN's secrets (``SECRET_PARAMS``) from a message that might quote them."""
    if not dsn:
        return message
    try:
        params = parse_dsn(dsn)
    except Exception:  # noqa: BLE001 - if it does not parse, nothing of it can be trusted
        return "connection failed"
    for name in SECRET_PARAMS:
        secret = params.get(name)
        if secret:
            # Whole occurrences only: a password "e" must not turn "connection" into "conn***ction"
            # (and the gaps in a database name would spell a short password out).
            message = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", "***", message)
    return message


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (libpq adds context lines that may repeat the DSN)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def with_server_settings(dsn: str, **settings: str) -> str:
    """The keyword DSN with ``-c name=value`` server settings added to libpq's ``options``.

    The server applies them when the session starts: no statement, no extra round trip.
    Settings already in the DSN's ``options`` are kept; a later ``-c`` wins on the server.
    Values must not contain spaces or backslashes (libpq's separators and escape there).
    """
    params = parse_dsn(dsn)
    extra = " ".join(f"-c {name}={value}" for name, value in settings.items())
    params["options"] = f"{params['options']} {extra}" if params.get("options") else extra
    return str(make_dsn(**params))
