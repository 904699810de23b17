"""`pgqueue dev` on an embedded server, and the built wheel in a fresh virtual environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import psycopg
import pytest

from conftest import ROOT
from pgqueue.testing import TestServer


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dev_starts_reuses_and_stops_an_embedded_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PGQUEUE_DSN", "DATABASE_URL")}
    env["PGQUEUE_DATA_DIR"] = str(tmp_path / "pg")
    cli = [sys.executable, "-m", "pgqueue_cli"]
    try:
        first = run([*cli, "dev"], env)
        assert first.returncode == 0, first.stderr
        dsn = re.search(r"export PGQUEUE_DSN=(\S+)", first.stdout)
        assert dsn and "migration(s) applied now" in first.stdout
        with psycopg.connect(dsn[1]) as conn:
            assert conn.execute("SELECT count(*) FROM pgqueue.schema_migrations").fetchone() != (0,)
        second = run([*cli, "dev"], env)
        assert f"export PGQUEUE_DSN={dsn[1]}" in second.stdout and "(0 migration(s)" in second.stdout
    finally:
        stopped = run([*cli, "dev", "--stop"], env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn[1], connect_timeout=2)


@pytest.mark.slow
def test_two_dev_commands_at_once_on_a_fresh_folder_share_one_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PGQUEUE_DSN", "DATABASE_URL")}
    env["PGQUEUE_DATA_DIR"] = str(tmp_path / "pg")
    cli = [sys.executable, "-m", "pgqueue_cli"]
    try:
        both = [subprocess.Popen([*cli, "dev"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        outputs = [p.communicate(timeout=600) for p in both]
        for process, (_out, err) in zip(both, outputs, strict=True):
            assert process.returncode == 0, err  # before the lock: one initdb met the other's files
        dsns = {re.search(r"export PGQUEUE_DSN=(\S+)", out)[1] for out, _ in outputs}  # type: ignore[index]
        assert len(dsns) == 1
    finally:
        first = run([*cli, "dev", "--stop"], env)
    again = run([*cli, "dev", "--stop"], env)
    assert first.returncode == 0 and first.stdout.endswith("stopped\n")
    assert again.returncode == 0 and "is not running: nothing to stop" in again.stdout


@pytest.mark.slow
def test_built_wheel_installs_and_migrates(tmp_path: Path, pg_server: TestServer) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PGQUEUE_DSN", "DATABASE_URL", "PYTHONPATH")}
    built = run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)], env)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("pgqueue-*.whl"))
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    installed = run([str(bin_dir / "pip"), "install", "-q", str(wheel)], env)
    assert installed.returncode == 0, installed.stderr[-2000:]
    dsn = pg_server.create_database("t_wheel", migrated=False)
    try:
        migrated = run([str(bin_dir / "pgqueue"), "migrate", "--dsn", dsn], env, cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        assert "applied" in migrated.stdout
        checked = run([str(bin_dir / "pgqueue"), "migrate", "--check", "--dsn", dsn], env, cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout
        enqueued = run([str(bin_dir / "pgqueue"), "enqueue", "hello", "--queue", "default", "--dsn", dsn], env,
                       cwd=tmp_path)
        assert enqueued.returncode == 0 and enqueued.stdout.strip().isdigit(), enqueued.stderr
    finally:
        pg_server.drop_database(dsn)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["enqueue.py", "durable.py"])
def test_benchmark_smoke_run(script: str) -> None:
    """The benchmarks keep working (figures are not checked: these machines are noisy)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGQUEUE_DSN", "DATABASE_URL", "PGQUEUE_BENCH_DSN")}
    result = run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio" in result.stdout and "PostgreSQL" in result.stdout


def test_the_server_binaries_are_reachable_from_a_private_checkout(tmp_path: Path) -> None:
    """As root the embedded server runs as another user: a checkout (with its .venv and the
    server's binaries) in a folder only its owner can enter, as `mktemp -d` makes, must let that
    user pass through, without letting it list anything."""
    from pgqueue.embedded import _make_searchable

    private = tmp_path / "checkout"
    binaries = private / ".venv" / "pginstall" / "bin"
    binaries.mkdir(parents=True)
    private.chmod(0o700)
    _make_searchable(binaries.parent)
    assert private.stat().st_mode & 0o777 == 0o701
    assert all(folder.stat().st_mode & 0o001 for folder in (binaries.parent, *binaries.parent.parents))
