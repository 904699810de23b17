"""Real pieces of production topologies for the tests: a PgBouncer in transaction pooling mode in
front of the test server, a database owned by a non-superuser with the least-privilege roles,
and a primary with a streaming standby.

Each piece is a real process started here; as root (CI) it runs as the unprivileged user the
embedded server uses, because neither PgBouncer nor PostgreSQL runs as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgqueue.embedded import SERVICE_USER, EmbeddedServer, _make_reachable
from pgqueue.migrations import apply_roles, migrate

PGBOUNCER_CANDIDATES = ("pgbouncer", "/usr/sbin/pgbouncer")


def pgbouncer_binary() -> str:
    """PgBouncer's path; skips the test (with how to get it) only when it is not installed."""
    for candidate in PGBOUNCER_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    pytest.skip("pgbouncer is not installed (Debian package `pgbouncer`; scripts/test.sh installs it as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not listen on port {port} within {timeout}s") from None
            time.sleep(0.05)


class PgBouncer:
    """A `pgbouncer` process in `pool_mode = transaction` in front of 127.0.0.1:`server_port`,
    every database passed through (`* =`), trusting the users named in `users`."""

    def __init__(self, folder: Path, server_port: int, users: list[str], pool_size: int = 20) -> None:
        self.folder = folder
        self.server_port = server_port
        self.users = users
        self.pool_size = pool_size
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = pgbouncer_binary()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        userlist = self.folder / "userlist.txt"
        userlist.write_text("".join(f'"{user}" ""\n' for user in self.users))
        ini = self.folder / "pgbouncer.ini"
        # logfile and pidfile empty: it logs to stderr (our file) and needs no folder it may write
        ini.write_text(f"""[databases]
* = host=127.0.0.1 port={self.server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 2000
logfile =
pidfile =
""")
        for path in (userlist, ini):
            path.chmod(0o644)
        # PgBouncer refuses to run as root; -u is its own way to drop to another user
        as_user = ["-u", SERVICE_USER] if os.geteuid() == 0 else []
        log = open(self.folder / "pgbouncer.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([binary, *as_user, str(ini)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, what="pgbouncer")
        except AssertionError:
            self.stop()
            raise AssertionError(f"pgbouncer did not start: {self.log()}") from None

    def log(self) -> str:
        return (self.folder / "pgbouncer.log").read_text(errors="replace")[-3000:]

    def dsn_for(self, direct_dsn: str) -> str:
        """The same database and user as `direct_dsn`, through this PgBouncer."""
        params = conninfo_to_dict(direct_dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo("", **params)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


#: login roles of the least-privilege tests (cluster-wide, created once): the database's owner
#: (runs migrate and sql/roles.sql; CREATEROLE, no superuser), and one login per group role
OWNER = "pgq_owner"
LOGINS = {"producer": "pgq_producer", "worker": "pgq_worker", "reader": "pgq_reader"}


def owned_database(admin_dsn: str, dsn_for: Callable[[str], str], name: str) -> str:
    """A new, empty database `name` owned by the non-superuser OWNER (the login roles of LOGINS
    created too); its DSN as the admin."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for login in [OWNER, *LOGINS.values()]:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone() is None:
                extra = " CREATEROLE" if login == OWNER else ""
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER" + extra).format(sql.Identifier(login)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(OWNER)))
    return dsn_for(name)


def least_privilege_database(admin_dsn: str, dsn_for: Callable[[str], str], name: str) -> dict[str, str]:
    """A new database `name` owned by a non-superuser, migrated and given the roles by that
    owner; the DSN of each login: {"owner", "producer", "worker", "reader", "admin"}."""
    admin = owned_database(admin_dsn, dsn_for, name)
    dsns = {"admin": admin, "owner": make_conninfo(admin, user=OWNER),
            **{kind: make_conninfo(admin, user=login) for kind, login in LOGINS.items()}}
    migrate(dsns["owner"])
    apply_roles(dsns["owner"])
    with psycopg.connect(dsns["owner"], autocommit=True) as conn:
        for kind, login in LOGINS.items():
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(f"pgqueue_{kind}"), sql.Identifier(login)))
    return dsns


class StreamingPair:
    """A primary and a hot standby streaming from it (pg_basebackup -R), replication synchronous
    (`synchronous_standby_names = '*'`: a commit returns once the standby has flushed it)."""

    def __init__(self, folder: Path, bin_dir: Path) -> None:
        self.primary = EmbeddedServer(folder / "primary", bin_dir)
        self.standby = EmbeddedServer(folder / "standby", bin_dir)

    def start(self) -> None:
        self.primary.ensure_running()
        self.standby.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            _make_reachable(self.standby.data_dir, SERVICE_USER)
        # run by the server's user (root may not own a data folder PostgreSQL starts from)
        self.standby._run([str(self.standby.bin_dir / "pg_basebackup"), "-D", str(self.standby.pgdata),
                           "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                           "-R", "-X", "stream", "-c", "fast"])
        self.standby.ensure_running()
        with psycopg.connect(self.primary.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 60
            while conn.execute("SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone() is None:
                if time.monotonic() > deadline:
                    raise AssertionError("the standby did not become synchronous within 60 s")
                time.sleep(0.1)

    def multi_host_dsn(self, dsn: str) -> str:
        """`dsn` (a database and user on the primary) naming both servers, read-write wanted:
        libpq tries them in turn and keeps the one that accepts writes."""
        return make_conninfo(dsn, host="127.0.0.1,127.0.0.1", port=f"{self.primary.port},{self.standby.port}",
                             target_session_attrs="read-write")

    def crash_primary(self) -> None:
        self.primary._pg_ctl("stop", "-m", "immediate", "-w")

    def promote_standby(self) -> None:
        self.standby._pg_ctl("promote", "-w")

    def destroy(self) -> None:
        for server in (self.primary, self.standby):
            server.destroy()
