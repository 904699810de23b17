"""Helpers for tests that run real `pgqueue worker` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from conftest import ROOT

FAST = ["--lease", "2", "--heartbeat", "0.5", "--poll-interval", "0.1"]


class Workers:
    """Starts worker processes and makes sure none outlives the test."""

    def __init__(self, dsn: str, logs: Path, app: str = "worker_app:app", env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.env = env or {}
        self.logs = logs
        self.app = app
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PGQUEUE_DSN": self.dsn, "PYTHONPATH": str(ROOT / "tests"), **self.env}
        log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "pgqueue_cli", "worker", self.app, *args],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def log_of(self, index: int) -> str:
        return (self.logs / f"worker-{index}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def sql(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def wait_until(check: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
