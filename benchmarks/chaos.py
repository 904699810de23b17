"""Chaos suite: a mixed workload through four real workers while faults are injected, then the
recorded history is checked for violations of pgqueue's guarantees.

Workload (benchmarks/chaos_app.py): plain runs, three-step durable runs whose middle step writes
through `step_in_transaction` into a table without a unique constraint, fan-outs (spawn +
gather), keyed runs under a concurrency limit recording their spans, runs waiting for events
that this process sends (two waiting runs per key, EVENTS_PER_KEY events per key), runs meant to
fail, and a per-second cron schedule; through four `pgqueue worker` processes (`--lease 3
--heartbeat 1`), one of them connected through a TCP proxy (benchmarks/chaos_proxy.py).

Faults, from this process: SIGKILL of a random worker and a replacement started; random
backends of the workers terminated (`pg_terminate_backend`); PostgreSQL stopped (`-m fast` or
`-m immediate`) and started again on the same port; the proxied worker cut off for longer than
its lease, then let back (a zombie: its held writes arrive late and must be rejected).

Checks, from the database after the faults stop and the workers drain the rest: no run lost
(every enqueued run exists and finished, succeeded unless meant to fail, with the right
result), no `step_in_transaction` effect committed twice (or never), no concurrency limit
exceeded (spans per key, each cut at the end the database gave its attempt), each cron tick
fired once and no second in between skipped, each event taken at most once per run and every
waiting run took every event of its key, in send order. Exit code 1 on any violation.

    .venv/bin/python benchmarks/chaos.py                       # 20,000 runs, 120 s of faults
    .venv/bin/python benchmarks/chaos.py --runs 2000 --fault-seconds 40 --quick-faults
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chaos_app  # noqa: E402
from chaos_proxy import PartitionProxy  # noqa: E402
from pgqueue.embedded import EmbeddedServer, find_pg_bin  # noqa: E402
from pgqueue.migrations import migrate  # noqa: E402

INJECTOR = "chaos-injector"  # application_name of this process's own connections: never terminated
EVENTS_PER_KEY = 3
WAITERS_PER_KEY = 2
CHILDREN = 5
WAVES = 10
WAVES_SHARE = 0.6  # the waves are enqueued during the first 60 % of the fault period
FINAL = ("succeeded", "failed", "cancelled", "dead")
WORKER_ARGS = ["--concurrency", "20", "--lease", "3", "--heartbeat", "1", "--poll-interval", "0.2",
               "--grace-period", "2", "--max-recoveries", "100", "--max-interruptions", "100"]


@dataclass(frozen=True)
class Faults:
    """Periods (min, max seconds) between faults of each kind."""

    kill: tuple[float, float] = (2.0, 5.0)
    terminate: tuple[float, float] = (1.0, 3.0)
    restart: tuple[float, float] = (20.0, 40.0)
    partition_every: tuple[float, float] = (15.0, 25.0)
    partition_seconds: float = 7.0  # longer than the lease (3 s): the worker is rescued meanwhile


QUICK_FAULTS = Faults(kill=(1.5, 3.0), terminate=(1.0, 2.0), restart=(8.0, 12.0), partition_every=(6.0, 10.0))


@dataclass
class Config:
    runs: int = 20_000
    fault_seconds: float = 120.0
    drain_timeout: float = 600.0
    workers: int = 4
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    # enqueue every run before the workers start (a backlog at start), not in waves
    upfront: bool = False


@dataclass
class Report:
    faults: Counter[str] = field(default_factory=Counter)
    runs: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        lines = ["faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
                 "runs by task/status: " + ", ".join(f"{k} {v}" for k, v in sorted(self.runs.items())),
                 f"runs in total: {sum(self.runs.values())}",
                 "attempts by outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(self.attempts.items()))]
        lines += [f"{k}: {v}" for k, v in self.info.items()]
        lines.append(f"violations: {len(self.violations)}")
        lines += [f"  - {v}" for v in self.violations[:50]]
        lines.append(f"wall time: {self.seconds:.1f} s")
        return "\n".join(lines)


@dataclass
class Workload:
    """What was enqueued, to be checked against what the database recorded."""

    expected: dict[int, tuple[str, Any]] = field(default_factory=dict)  # run id -> (task, result)
    keys: list[str] = field(default_factory=list)  # event keys
    waiters: dict[int, str] = field(default_factory=dict)  # run id -> event key
    planned: list[tuple[str, dict[str, Any], Any]] = field(default_factory=list)  # enqueued in waves


# -- workers ------------------------------------------------------------------------------------


class WorkerPool:
    """`pgqueue worker chaos_app:app` processes, one slot per worker; slot 0 goes through the proxy."""

    def __init__(self, dsns: list[str], logs: Path) -> None:
        self.dsns = dsns
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(dsns)
        self.started = 0
        self.hung = 0  # workers that did not exit within 20 s of SIGTERM
        self.pids: list[set[int]] = [set() for _ in dsns]  # every process each slot ran

    def start(self, slot: int) -> None:
        env = {**os.environ, "PGQUEUE_DSN": self.dsns[slot], "PYTHONPATH": str(HERE), "PYTHONFAULTHANDLER": "1"}
        log = open(self.logs / f"worker-{slot}-{self.started}.log", "wb")  # noqa: SIM115
        self.started += 1
        self.procs[slot] = subprocess.Popen([sys.executable, "-m", "pgqueue_cli", "worker", "chaos_app:app",
                                             *WORKER_ARGS], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.pids[slot].add(self.procs[slot].pid)  # type: ignore[union-attr]

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def ensure_all(self) -> int:
        """Start any worker that exited by itself; return how many were restarted."""
        restarted = 0
        for slot, proc in enumerate(self.procs):
            if proc is None or proc.poll() is not None:
                self.start(slot)
                restarted += 1 if proc is not None else 0
        return restarted

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.hung += 1
                proc.send_signal(signal.SIGABRT)  # its threads' stacks go to its log (PYTHONFAULTHANDLER)
                proc.wait()

    def log_text(self, slot: int) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"worker-{slot}-*.log")))


# -- database access from this process ------------------------------------------------------------


async def connect(dsn: str) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name=INJECTOR, connect_timeout=5)


async def query(dsn: str, statement: str, params: Any = None, *, attempts: int = 60) -> list[tuple[Any, ...]]:
    """A statement of the injector's own, retried while the server restarts."""
    for attempt in range(attempts):
        try:
            async with await connect(dsn) as conn:
                cur = await conn.execute(statement, params)
                return await cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def plan_workload(config: Config, rng: random.Random) -> tuple[Workload, list[tuple[str, list[dict[str, Any]]]]]:
    """The runs to enqueue, as (task, inputs) batches in a random order; the expected results."""
    work = Workload()
    n = config.runs
    shares = {"plain": 0.35, "durable3": 0.30, "parent": 0.05, "keyed": 0.20, "doomed": 0.02}
    counts = {task: max(1, int(n * share)) for task, share in shares.items()}
    waiter_runs = max(WAITERS_PER_KEY, n - sum(counts.values()))
    work.keys = [f"ev-{i}" for i in range(max(1, waiter_runs // WAITERS_PER_KEY))]
    keyed_keys = max(2, counts["keyed"] // 20)
    items: list[tuple[str, dict[str, Any], Any]] = (
        [("plain", {"n": i}, i) for i in range(counts["plain"])]
        + [("durable3", {"n": i}, 2 * i + 2) for i in range(counts["durable3"])]
        + [("parent", {"n": CHILDREN}, sum(range(CHILDREN)))] * counts["parent"]
        + [("keyed", {"key": f"k{i % keyed_keys}", "n": i}, i) for i in range(counts["keyed"])]
        + [("doomed", {"n": i}, None) for i in range(counts["doomed"])])
    rng.shuffle(items)
    work.planned = items
    waiters = [("waiter", {"key": k, "count": EVENTS_PER_KEY}, list(range(EVENTS_PER_KEY)))
               for k in work.keys for _ in range(WAITERS_PER_KEY)]
    return work, waiters


def enqueue(dsn: str, work: Workload, items: list[tuple[str, dict[str, Any], Any]], wave: int) -> None:
    """Enqueue ITEMS (one batch per task), exactly once even when a commit's answer is lost to a
    fault: each run has an idempotency key, so a retry finds the runs already there."""
    app = chaos_app.app
    app.db.use_dsn(dsn)
    by_task: dict[str, list[tuple[int, dict[str, Any], Any]]] = {}
    for i, (task, data, result) in enumerate(items):
        by_task.setdefault(task, []).append((i, data, result))
    try:
        for task, batch in by_task.items():
            keys = [f"chaos-{wave}-{i}" for i, _, _ in batch]
            for attempt in range(120):
                try:
                    handles = app.enqueue_many(task, [data for _, data, _ in batch], idempotency_keys=keys)
                    break
                except Exception:  # the server is restarting, a backend was terminated: again
                    if attempt == 119:
                        raise
                    time.sleep(0.5)
            for handle, (_, data, result) in zip(handles, batch, strict=True):
                work.expected[handle.id] = (task, result)
                if task == "waiter":
                    work.waiters[handle.id] = data["key"]
    finally:
        app.close()


# -- the fault injector -----------------------------------------------------------------------------


class Injector:
    def __init__(self, server: EmbeddedServer, dsn: str, pool: WorkerPool, proxy: PartitionProxy,
                 faults: Faults, rng: random.Random, report: Report) -> None:
        self.server, self.dsn, self.pool, self.proxy = server, dsn, pool, proxy
        self.faults, self.rng, self.report = faults, rng, report
        self.restarting = asyncio.Lock()
        self.restart_in_flight: asyncio.Future[None] | None = None

    def pause(self, period: tuple[float, float]) -> float:
        return self.rng.uniform(*period)

    async def kill_workers(self) -> None:
        while True:
            await asyncio.sleep(self.pause(self.faults.kill))
            # slot 0, behind the proxy, is partitioned rather than killed: it must live through
            # its cut to come back as a zombie
            slot = self.rng.randrange(1, len(self.pool.procs))
            await asyncio.to_thread(self.pool.kill, slot)
            self.pool.start(slot)
            self.report.faults["worker SIGKILLed and replaced"] += 1
            # as a process manager would: a worker that exited by itself (it could not start while
            # the server restarted) is started again
            exited = self.pool.ensure_all()
            if exited:
                self.report.info["workers that exited by themselves, restarted"] = (
                    self.report.info.get("workers that exited by themselves, restarted", 0) + exited)

    async def terminate_backends(self) -> None:
        while True:
            await asyncio.sleep(self.pause(self.faults.terminate))
            if self.restarting.locked():
                continue
            with contextlib.suppress(psycopg.OperationalError):
                rows = await query(self.dsn, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                             " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                                             " AND application_name IS DISTINCT FROM %s", (INJECTOR,), attempts=1)
                victims = self.rng.sample([r[0] for r in rows], min(len(rows), self.rng.randint(1, 3)))
                done = await query(self.dsn, "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                                             " FROM unnest(%s::int[]) pid", (victims,), attempts=1)
                self.report.faults["backend terminated"] += int(done[0][0]) if done else 0

    async def restart_postgres(self) -> None:
        while True:
            await asyncio.sleep(self.pause(self.faults.restart))
            mode = self.rng.choice(["fast", "immediate"])
            async with self.restarting:
                # a thread cannot be cancelled: the end of the faults waits for it (settle())
                self.restart_in_flight = asyncio.ensure_future(asyncio.to_thread(self._restart, mode))
                await asyncio.shield(self.restart_in_flight)
            self.report.faults[f"postgres restarted (-m {mode})"] += 1

    async def settle(self) -> None:
        """After the fault tasks are cancelled: the server restarted, up and running."""
        if self.restart_in_flight is not None:
            with contextlib.suppress(Exception):
                await self.restart_in_flight
        if not await asyncio.to_thread(self.server.is_running):
            await asyncio.to_thread(self.server.ensure_running)
        self.proxy.heal()

    def _restart(self, mode: str) -> None:
        self.server._pg_ctl("stop", "-m", mode, "-w")
        self.server.ensure_running()

    async def partition(self) -> None:
        while True:
            await asyncio.sleep(self.pause(self.faults.partition_every))
            await self.until_proxied_worker_runs()
            self.proxy.cut()
            await asyncio.sleep(self.faults.partition_seconds)
            self.proxy.heal()
            self.report.faults[f"proxied worker cut off for {self.faults.partition_seconds:g} s"] += 1

    async def until_proxied_worker_runs(self) -> None:
        """Wait (up to 30 s: a loaded machine starts runs slowly) until the proxied worker holds
        running runs: cut off then, it becomes a zombie with work in flight."""
        for _ in range(300):
            with contextlib.suppress(psycopg.OperationalError):
                rows = await query(self.dsn, "SELECT count(*) FROM pgqueue.runs r JOIN pgqueue.workers w"
                                             " ON w.id = r.worker_id WHERE r.status = 'running' AND w.pid = ANY(%s)",
                                   (sorted(self.pool.pids[0]),), attempts=1)
                if rows and rows[0][0] > 0:
                    return
            await asyncio.sleep(0.1)

    async def send_events(self, keys: list[str], seconds: float) -> None:
        """Round r sends event seq=r on every key, rounds spread over the fault period. Each send
        is recorded in chaos_sent in the same transaction, so a retry after a lost commit never
        sends an event twice (the sender's own exactly-once)."""
        for seq in range(EVENTS_PER_KEY):
            await asyncio.sleep(seconds / (EVENTS_PER_KEY + 1))
            await self.send_round(keys, seq)
            self.report.info["event rounds sent during the faults"] = seq + 1

    async def send_round(self, keys: list[str], seq: int) -> None:
        statement = """
            WITH todo AS (INSERT INTO chaos_sent (key, seq) SELECT k, %(seq)s FROM unnest(%(keys)s::text[]) k
                          ON CONFLICT DO NOTHING RETURNING key)
            SELECT count(pgqueue.send_event(%(name)s, key, jsonb_build_object('seq', %(seq)s))) FROM todo"""
        for _ in range(120):
            try:
                async with await connect(self.dsn) as conn, conn.transaction():
                    await conn.execute(statement, {"keys": keys, "seq": seq, "name": chaos_app.EVENT_NAME})
                return
            except psycopg.OperationalError:
                await asyncio.sleep(0.5)
        raise RuntimeError(f"could not send event round {seq}")


# -- the checks -------------------------------------------------------------------------------------


async def check(dsn: str, work: Workload, report: Report) -> None:
    v = report.violations
    ids = list(work.expected)
    found = {r[0]: r[1:] for r in await query(dsn, "SELECT id, task, status, result, error->>'type'"
                                                  " FROM pgqueue.runs WHERE id = ANY(%s)", (ids,))}
    for run_id, (task, result) in work.expected.items():
        row = found.get(run_id)
        if row is None:
            v.append(f"run {run_id} ({task}) lost: not in pgqueue.runs")
            continue
        _, status, got, error = row
        if task == "doomed":
            if status != "failed" or error != "Doomed":
                v.append(f"run {run_id} (doomed) ended {status} ({error}), expected failed (Doomed)")
        elif status != "succeeded":
            v.append(f"run {run_id} ({task}) ended {status} ({error}), expected succeeded")
        elif got != result:
            v.append(f"run {run_id} ({task}) returned {got!r}, expected {result!r}")
    unfinished = await query(dsn, "SELECT id, task, status FROM pgqueue.runs WHERE status <> ALL(%s)", (list(FINAL),))
    v += [f"run {i} ({t}) never finished: {s}" for i, t, s in unfinished]
    children = await query(dsn, "SELECT id, status FROM pgqueue.runs WHERE task = 'child' AND status <> 'succeeded'")
    v += [f"child run {i} ended {s}" for i, s in children]

    durable = [i for i, (t, _) in work.expected.items() if t == "durable3"]
    effects = dict(await query(dsn, "SELECT r, count(e.run_id) FROM unnest(%s::bigint[]) r"
                                    " LEFT JOIN chaos_effects e ON e.run_id = r GROUP BY r", (durable,)))
    v += [f"run {r}: step_in_transaction effect committed {c} times" for r, c in effects.items() if c != 1]
    report.info["step_in_transaction effects"] = f"{sum(effects.values())} for {len(durable)} durable runs"

    # Spans per key, each cut at the end the database gave its attempt (a killed or cut-off worker's
    # attempt ends when it is rescued; what a zombie does afterwards is fenced off).
    spans = await query(dsn, """
        SELECT s.key, s.run_id, s.attempt, a.outcome, s.started_at,
               least(coalesce(s.ended_at, a.finished_at), a.finished_at), a.worker_id, a.started_at
        FROM chaos_spans s JOIN pgqueue.attempts a ON a.run_id = s.run_id AND a.attempt = s.attempt
        ORDER BY s.key, s.started_at""")
    worst = 0
    for key, group in itertools.groupby(spans, key=lambda s: s[0]):
        live: list[tuple[Any, ...]] = []
        peak: list[tuple[Any, ...]] = []
        for span in (s for s in group if s[4] < s[5]):  # ordered by start
            live = [o for o in live if o[5] > span[4]] + [span]
            if len(live) > len(peak):
                peak = list(live)
        worst = max(worst, len(peak))
        if len(peak) > chaos_app.KEYED_LIMIT:
            v.append(f"key {key}: {len(peak)} keyed runs running at once (limit {chaos_app.KEYED_LIMIT}): "
                     + "; ".join(f"run {s[1]} attempt {s[2]} ({s[3]}, worker {str(s[6])[:8]}, claimed "
                                 f"{s[7]:%H:%M:%S.%f}) ran {s[4]:%H:%M:%S.%f}-{s[5]:%H:%M:%S.%f}" for s in peak))
    report.info["keyed runs at once, most on a key"] = f"{worst} (limit {chaos_app.KEYED_LIMIT})"

    ticks = await query(dsn, """
        SELECT t.tick_at, t.run_id, r.id, r.status, r.idempotency_key
        FROM pgqueue.cron_ticks t LEFT JOIN pgqueue.runs r ON r.id = t.run_id
        WHERE t.schedule = %s ORDER BY t.tick_at""", (chaos_app.CRON_NAME,))
    tick_runs = await query(dsn, "SELECT idempotency_key, count(*) FROM pgqueue.runs WHERE task = 'tick'"
                                 " GROUP BY idempotency_key")
    v += [f"cron tick {k} made {c} runs" for k, c in tick_runs if c != 1]
    if len(tick_runs) != len(ticks):
        v.append(f"{len(tick_runs)} cron runs for {len(ticks)} ticks")
    for tick_at, run_ref, run_id, status, _ in ticks:
        if run_id is None:
            v.append(f"cron tick {tick_at} has no run (run_id {run_ref})")
        elif status != "succeeded":
            v.append(f"cron tick {tick_at}: run {run_id} ended {status}")
    gaps = [(a[0], b[0]) for a, b in itertools.pairwise(ticks) if (b[0] - a[0]).total_seconds() != 1]
    v += [f"cron ticks skipped between {a} and {b}" for a, b in gaps]
    report.info["cron ticks"] = len(ticks)

    events = await query(dsn, "SELECT key, array_agg(id ORDER BY id) FROM pgqueue.events WHERE name = %s"
                              " GROUP BY key", (chaos_app.EVENT_NAME,))
    sent = dict(events)
    v += [f"event key {k}: {len(e)} events sent, expected {EVENTS_PER_KEY}" for k, e in sent.items()
          if len(e) != EVENTS_PER_KEY]
    taken = dict(await query(dsn, "SELECT run_id, array_agg(event_id ORDER BY seq) FROM pgqueue.steps"
                                  " WHERE run_id = ANY(%s) AND event_id IS NOT NULL GROUP BY run_id",
                             (list(work.waiters),)))
    for run_id, key in work.waiters.items():
        got = taken.get(run_id, [])
        if len(got) != len(set(got)):
            v.append(f"waiting run {run_id} took an event twice: {got}")
        if got != sent.get(key, []):
            v.append(f"waiting run {run_id} on key {key} took events {got}, sent in order {sent.get(key)}")
    report.info["events taken"] = f"{sum(len(t) for t in taken.values())} by {len(work.waiters)} waiting runs"

    report.runs.update({f"{t}/{s}": c for t, s, c in await query(
        dsn, "SELECT task, status, count(*) FROM pgqueue.runs GROUP BY task, status")})
    report.attempts.update(dict(await query(dsn, "SELECT outcome, count(*) FROM pgqueue.attempts GROUP BY outcome")))


async def enqueue_waves(dsn: str, work: Workload, seconds: float, report: Report) -> None:
    """Enqueue the planned runs in WAVES waves spread over SECONDS, so that the work goes on
    while the faults are injected."""
    size = -(-len(work.planned) // WAVES)
    for wave in range(WAVES if work.planned else 0):
        await asyncio.to_thread(enqueue, dsn, work, work.planned[wave * size:(wave + 1) * size], wave)
        report.info["waves enqueued during the faults"] = wave + 1
        await asyncio.sleep(seconds / WAVES)


# -- the whole ----------------------------------------------------------------------------------------


async def drain(dsn: str, pool: WorkerPool, timeout: float) -> None:
    """Wait until every run has finished, restarting workers that exited."""
    deadline = time.monotonic() + timeout
    while True:
        left = await query(dsn, "SELECT count(*) FROM pgqueue.runs WHERE status <> ALL(%s)", (list(FINAL),))
        if left[0][0] == 0:
            return
        if time.monotonic() > deadline:
            return  # the check reports what never finished
        pool.ensure_all()
        await asyncio.sleep(0.5)


async def chaos(server: EmbeddedServer, dsn: str, config: Config, logs: Path) -> Report:
    report = Report()
    rng = random.Random(config.seed)
    started = time.monotonic()
    async with await connect(dsn) as conn:
        await conn.execute(chaos_app.DDL)
    # the waiting runs first (events sent before a run exists are not its mail), the rest in
    # waves during the faults
    work, waiters = plan_workload(config, rng)
    await asyncio.to_thread(enqueue, dsn, work, waiters, -1)
    if config.upfront:
        await asyncio.to_thread(enqueue, dsn, work, work.planned, 0)
        work.planned = []
    params = conninfo_to_dict(dsn)
    proxy = PartitionProxy(str(params["host"]), int(params["port"]))
    await proxy.start()
    pool = WorkerPool([make_conninfo(dsn, port=proxy.port)] + [dsn] * (config.workers - 1), logs)
    try:
        pool.ensure_all()
        injector = Injector(server, dsn, pool, proxy, config.faults, rng, report)
        faults_started = time.monotonic()
        tasks = [asyncio.create_task(c) for c in (injector.kill_workers(), injector.terminate_backends(),
                                                  injector.restart_postgres(), injector.partition())]
        sender = asyncio.create_task(injector.send_events(work.keys, config.fault_seconds))
        await enqueue_waves(dsn, work, config.fault_seconds * WAVES_SHARE, report)
        await asyncio.sleep(max(0.0, config.fault_seconds - (time.monotonic() - faults_started)))
        await sender  # all rounds are sent by now unless a send is still retrying
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await injector.settle()
        report.info["runs unfinished when the faults stopped"] = (await query(
            dsn, "SELECT count(*) FROM pgqueue.runs WHERE status <> ALL(%s)", (list(FINAL),)))[0][0]
        # no new cron tick from here on, so that the drain can end
        await query(dsn, "UPDATE pgqueue.cron_schedules SET enabled = false WHERE name = %s", (chaos_app.CRON_NAME,))
        await drain(dsn, pool, config.drain_timeout)
        await asyncio.to_thread(pool.stop_all)  # the proxy runs on this loop: never block it
        if pool.hung:
            report.violations.append(f"{pool.hung} worker(s) still running 20 s after SIGTERM (grace period 2 s): "
                                     "their stacks are in their logs")
        await check(dsn, work, report)
        rescued = await query(dsn, "SELECT count(*) FROM pgqueue.attempts a"
                                   " JOIN pgqueue.workers w ON w.id = a.worker_id"
                                   " WHERE a.outcome = 'crashed' AND w.pid = ANY(%s)", (sorted(pool.pids[0]),))
        report.info["attempts of the proxied worker rescued from it"] = rescued[0][0]
        rejected = pool.log_text(0).count("rejected")
        report.info["late writes of the proxied worker rejected (its logs, for information)"] = rejected
        report.info["worker logs"] = str(logs)
    finally:
        await asyncio.to_thread(pool.stop_all)
        await proxy.close()
    report.seconds = time.monotonic() - started
    return report


@contextlib.contextmanager
def throwaway_server(folder: Path, keep: bool = False) -> Iterator[tuple[EmbeddedServer, str]]:
    server = EmbeddedServer(folder, find_pg_bin())
    try:
        admin = server.ensure_running()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE chaos")
        dsn = make_conninfo(admin, dbname="chaos")
        migrate(dsn)
        yield server, dsn
    finally:
        if keep:
            server.stop()  # the data folder stays, to look into after a violation
        else:
            server.destroy()


def run(config: Config, folder: Path, keep: bool = False) -> Report:
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with throwaway_server(folder / "postgres", keep) as (server, dsn):
        return asyncio.run(chaos(server, dsn, config, logs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--fault-seconds", type=float, default=120.0)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--quick-faults", action="store_true", help="shorter periods between faults (as in CI)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--upfront", action="store_true", help="enqueue every run before the workers start")
    parser.add_argument("--keep", action="store_true", help="keep the worker logs and the stopped server's data folder")
    args = parser.parse_args()
    config = Config(runs=args.runs, fault_seconds=args.fault_seconds, drain_timeout=args.drain_timeout,
                    faults=QUICK_FAULTS if args.quick_faults else Faults(), seed=args.seed,
                    upfront=args.upfront)
    folder = Path(tempfile.mkdtemp(prefix="pgqueue-chaos-"))
    try:
        print(f"command: {' '.join([sys.executable, *sys.argv])}", flush=True)
        report = run(config, folder, args.keep)
        print(report.text())
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
