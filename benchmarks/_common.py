"""Helpers shared by the benchmarks: a throwaway server, fresh databases, pgbench, reporting.

Nothing here is pgqueue-specific beyond `migrate`; the enqueue and worker benchmarks both
build on it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgqueue.embedded import EmbeddedServer, find_pg_bin
from pgqueue.errors import ConfigurationError
from pgqueue.migrations import migrate

DSN_VARIABLE = "PGQUEUE_BENCH_DSN"


@dataclass
class BenchServer:
    """A PostgreSQL server to benchmark on: a throwaway embedded one, or one given by DSN."""

    admin_dsn: str
    embedded: EmbeddedServer | None = None

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def create_database(self, prefix: str) -> str:
        """A new empty database with a unique name; returns its DSN."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}".lower()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def create_migrated_database(self, prefix: str) -> str:
        dsn = self.create_database(prefix)
        migrate(dsn)
        return dsn

    def drop_database(self, dsn: str) -> None:
        name = str(conninfo_to_dict(dsn)["dbname"])
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def version(self) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT version()").fetchone()
        return str(row[0]) if row else "unknown"

    def settings(self, names: Sequence[str]) -> dict[str, str]:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT name, setting || coalesce(unit, '') FROM pg_settings "
                                "WHERE name = ANY(%s)", (list(names),)).fetchall()
        return {name: value for name, value in rows}


@contextmanager
def bench_server(dsn: str | None = None) -> Iterator[BenchServer]:
    """The server at `dsn` (or PGQUEUE_BENCH_DSN), else a throwaway embedded server removed at exit."""
    given = dsn or os.environ.get(DSN_VARIABLE)
    if given:
        yield BenchServer(given)
        return
    folder = Path(tempfile.mkdtemp(prefix="pgqueue-bench-"))
    embedded = EmbeddedServer(folder, find_pg_bin())
    try:
        yield BenchServer(embedded.ensure_running(), embedded)
    finally:
        embedded.destroy()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def fresh_database(server: BenchServer, prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """A database of the benchmark's own for the duration of the block."""
    dsn = server.create_migrated_database(prefix) if migrated else server.create_database(prefix)
    try:
        yield dsn
    finally:
        server.drop_database(dsn)


# -- pgbench ------------------------------------------------------------------------------------

_TPS = re.compile(r"^tps = ([\d.]+) \((?:without|excluding) initial connection", re.MULTILINE)


def find_pgbench() -> str:
    """pgbench next to the server binaries (same version), else the one on PATH."""
    try:
        candidate = find_pg_bin() / "pgbench"
        if candidate.exists():
            return str(candidate)
    except ConfigurationError:
        pass
    found = shutil.which("pgbench")
    if found is None:
        raise ConfigurationError("pgbench not found next to the PostgreSQL binaries nor on PATH")
    return found


def parse_tps(output: str) -> float:
    match = _TPS.search(output)
    if match is None:
        raise RuntimeError(f"no tps line in pgbench output:\n{output}")
    return float(match[1])


def pgbench_argv(dsn: str, script: Path, *, clients: int, seconds: int, mode: str = "prepared") -> list[str]:
    params = conninfo_to_dict(dsn)
    argv = [find_pgbench(), "-n", "-M", mode, "-c", str(clients), "-j", str(clients),
            "-T", str(seconds), "-f", str(script)]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        if params.get(key):
            argv += [flag, str(params[key])]
    return [*argv, str(params["dbname"])]


def run_pgbench(dsn: str, script_text: str, *, clients: int = 1, seconds: int = 5,
                mode: str = "prepared") -> float:
    """Run a custom pgbench script; return its tps (excluding connection time)."""
    env = dict(os.environ)
    password = conninfo_to_dict(dsn).get("password")
    if password:
        env["PGPASSWORD"] = str(password)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="pgbench-") as script:
        script.write(script_text)
        script.flush()
        argv = pgbench_argv(dsn, Path(script.name), clients=clients, seconds=seconds, mode=mode)
        result = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed ({shlex.join(argv)}):\n{result.stderr}{result.stdout}")
    return parse_tps(result.stdout)


# -- measuring and reporting --------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    """Seconds taken by one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with right-aligned columns after the first."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def command_line() -> str:
    return shlex.join([sys.executable, *sys.argv])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SETTINGS_SHOWN = ("shared_buffers", "synchronous_commit", "fsync", "wal_level", "max_wal_size", "max_connections",
                  "shared_preload_libraries", "autovacuum")


def print_server_header(server: BenchServer) -> None:
    """The lines every benchmark starts with: how it was run and on what server."""
    print(f"command:    {command_line()}")
    print(f"postgres:   {server.version()}")
    settings = server.settings(list(SETTINGS_SHOWN))
    print("settings:   " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    print(f"server:     {'throwaway embedded' if server.embedded else 'given by DSN'}, same machine; "
          f"{os.cpu_count()} CPUs")
