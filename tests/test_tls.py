"""TLS to PostgreSQL: ``sslmode=verify-full`` against a private server with a self-signed CA.

The server is a private instance of this test run (initdb in a temporary directory, a free port,
ssl=on); certificates are made with the ``openssl`` command: a CA, and a server certificate for
``localhost`` and ``127.0.0.1`` signed by it. codx-db opens it with ``sslmode=verify-full
sslrootcert=...`` in the DSN and does a user round trip; a CA that did not sign the server's
certificate, and a host name the certificate does not name, are refused with DatabaseUnavailable
naming the TLS failure and never the password.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from db.database import Database
from db.errors import DatabaseUnavailable
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import IN_CI
from tests.test_crash import PrivatePostgres

PASSWORD = "tls pass/+=@ 'q\\"  # travels in the DSN here: it must never show in an error


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"openssl {args[0]} failed: {result.stderr}"


def make_ca(directory: Path, name: str) -> None:
    """A self-signed CA: ``name``.key and ``name``.pem."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def make_server_certificate(directory: Path, ca: str) -> None:
    """server.key and server.crt for localhost and 127.0.0.1, signed by the CA ``ca``."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=directory)  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-extfile", "server.ext", "-out", "server.crt", cwd=directory)  # fmt: skip


class TLSServer:
    def __init__(self, server: PrivatePostgres, certs: Path) -> None:
        self.server = server
        self.certs = certs

    def dsn(self, host: str = "127.0.0.1", ca: str = "ca", **extra: str) -> str:
        params = {"host": host, "port": str(self.server.port), "dbname": "codx", "user": "codx",
                  "password": PASSWORD, "connect_timeout": "10", "sslmode": "verify-full",
                  "sslrootcert": str(self.certs / f"{ca}.pem"), **extra}  # fmt: skip
        return make_dsn(**params)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TLSServer]:
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("the openssl command is missing", pytrace=False)
        pytest.skip("the openssl command is missing")
    try:
        server = PrivatePostgres()
    except (FileNotFoundError, RuntimeError) as exc:
        if IN_CI:
            pytest.fail(f"cannot start a private PostgreSQL: {exc}", pytrace=False)
        pytest.skip(f"cannot start a private PostgreSQL: {exc}")
    try:
        # Certificates beside the cluster: the server (user postgres) must read its key, which
        # PostgreSQL refuses unless it is private to that user.
        certs = server.dir / "certs"
        certs.mkdir()
        make_ca(certs, "ca")
        make_ca(certs, "other-ca")
        make_server_certificate(certs, "ca")
        if server.as_postgres:
            for path in [certs, *certs.iterdir()]:
                shutil.chown(path, "postgres")
        (certs / "server.key").chmod(0o600)
        # TCP only over TLS, with a password; the admin connection (trust) over TLS too.
        (server.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all postgres 127.0.0.1/32 trust\n"
            "hostssl all codx 127.0.0.1/32 scram-sha-256\n"
            "hostssl all codx ::1/128 scram-sha-256\n"
        )
        server.start(
            "ssl=on",
            f"ssl_cert_file={certs / 'server.crt'}",
            f"ssl_key_file={certs / 'server.key'}",
            "listen_addresses=localhost",
        )
        admin = psycopg2.connect(server.admin_dsn, sslmode="require")
        try:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute("CREATE ROLE codx LOGIN PASSWORD %s", (PASSWORD,))
                cur.execute("CREATE DATABASE codx OWNER codx")
        finally:
            admin.close()
        yield TLSServer(server, certs)
    finally:
        server.destroy()


def _open(dsn: str) -> Database:
    return Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn, db_startup="evolve"))


@pytest.mark.postgres
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_verify_full_round_trip(tls_server: TLSServer, host: str) -> None:
    database = _open(tls_server.dsn(host=host))
    try:
        users = UserDB(database)
        name = "tls-" + host.replace(".", "-")
        users.create(username=name, email=f"{name}@example.com", password="a TLS password")
        assert users.get(name).email == f"{name}@example.com"
        assert users.authenticate(name, "a TLS password") is not None
    finally:
        database.close()
    # The session really is encrypted (not a silent fallback to plain TCP).
    conn = psycopg2.connect(tls_server.dsn(host=host))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (True,)
    finally:
        conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("host", "ca", "reason"),
    [
        ("127.0.0.1", "other-ca", "certificate verify failed"),
        # The right server and CA, reached under a name its certificate does not carry.
        ("codx-db.invalid", "ca", "does not match host name"),
    ],
    ids=["wrong-ca", "wrong-host"],
)
def test_tls_failures_are_refused_clearly(tls_server: TLSServer, host: str, ca: str, reason: str) -> None:
    database = _open(tls_server.dsn(host=host, ca=ca, hostaddr="127.0.0.1"))
    try:
        with pytest.raises(DatabaseUnavailable) as excinfo:
            UserDB(database).count()
    finally:
        database.close()
    message = str(excinfo.value)
    assert reason in message, message
    assert "SSL" in message or "certificate" in message
    assert PASSWORD not in message and "tls pass" not in message
