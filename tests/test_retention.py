"""Retention: policies (defaults, per status, per task, runtime changes kept), pruning whole run
trees in batches (exactly the eligible ones, never an unfinished run or a tree still at work),
concurrent pruners, the worker's pruner, idempotency keys after pruning, and what users see."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import running_worker, wait_for
from pgqueue import InvalidInput, PgQueue, RunNotFound, TaskDefinitionError
from pgqueue.cron import Schedule
from pgqueue.metrics import gauges_op
from pgqueue.retention import last_prune_op, parse_age, prune_exclusive_op, task_retention

Conn = psycopg.Connection[tuple[Any, ...]]
COUNTED = ("attempts", "steps", "event_waits", "cron_ticks")


def prune_until_done(conn: Conn, batch: int = 100) -> dict[str, int]:
    """Call pgqueue.prune until it removes nothing; the sums of its counts."""
    total: dict[str, int] = {}
    while True:
        cur = conn.execute("SELECT * FROM pgqueue.prune(%s)", (batch,))
        names = [c.name for c in cur.description or []]
        row = dict(zip(names, cur.fetchone() or (), strict=True))
        for name, value in row.items():
            total[name] = total.get(name, 0) + int(value)
        if row["runs"] == 0 and row["events"] == 0:
            return total


def backdate(conn: Conn, days: int = 40, ids: list[int] | None = None) -> None:
    """Make finished runs look `days` older (all of them, or `ids`)."""
    conn.execute("UPDATE pgqueue.runs SET finished_at = finished_at - make_interval(days => %s) "
                 "WHERE finished_at IS NOT NULL AND (%s::bigint[] IS NULL OR id = ANY(%s))", (days, ids, ids))


def tree_of(conn: Conn, root: int) -> set[int]:
    return {r[0] for r in conn.execute("SELECT id FROM pgqueue.runs WHERE id = %s OR root_id = %s", (root, root))}


def rows_of(conn: Conn, ids: set[int]) -> dict[str, int]:
    """Rows of each table hanging off these runs (runs included)."""
    counts = {"runs": conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s)", (list(ids),))}
    for table in COUNTED:
        counts[table] = conn.execute(sql.SQL("SELECT count(*) FROM pgqueue.{} WHERE run_id = ANY(%s)").format(
            sql.Identifier(table)), (list(ids),))
    return {name: int(cur.fetchone()[0]) for name, cur in counts.items()}  # type: ignore[index]


@pytest.fixture
def reset_policies(conn: Conn) -> Iterator[None]:
    """Each test starts from the default policies and empty statistics."""
    yield
    conn.execute("DELETE FROM pgqueue.retention_policies WHERE task <> '*'")
    conn.execute("UPDATE pgqueue.retention_policies SET keep = CASE status WHEN 'succeeded' THEN interval '7 days' "
                 "WHEN 'events' THEN interval '7 days' ELSE interval '30 days' END, source = 'code'")


# -- the whole picture through real workers --------------------------------------------------


async def test_prune_removes_exactly_the_eligible_trees(durable_tasks: Any, conn: Conn, dsn: str,
                                                       reset_policies: None) -> None:
    app: PgQueue = durable_tasks.app
    async with running_worker(app, concurrency=20, prune_interval=0):
        # finished trees: a fan-out of 1,000 children, a DAG workflow, runs with logs, a
        # durable run with steps that waited for an event, a run started by a cron tick
        fan = await durable_tasks.fan_out.enqueue_async(1000, 1000)
        dag = await durable_tasks.ingest.enqueue_async(durable_tasks.DocRef(doc_id=7))
        chatty = [h.id for h in await durable_tasks.chatty.enqueue_many_async([{"n": i} for i in range(5)])]
        answered = await durable_tasks.approval.enqueue_async(1)
        app.cron_add(Schedule("every_second", "* * * * * *", "chatty", {"n": 99}))
        await wait_for(lambda: _has_tick(conn), 30, "a cron tick")
        app.cron_delete("every_second")
        await wait_for(lambda: _status(conn, answered.id, "waiting"), 30, "the approval to wait")
        await app.send_event_async("approval", "doc-1", {"approved": True})
        for handle in (fan, dag, answered):
            await handle.result(timeout=120)
        ticked = [r[0] for r in conn.execute("SELECT run_id FROM pgqueue.cron_ticks WHERE run_id IS NOT NULL")]
        await wait_for(lambda: _all_final(conn, ticked), 30, "the cron runs to finish")
        # unfinished trees: sleeping, waiting for an event, a fan-out whose parent still waits for
        # a running child (its finished children stay: the parent still needs their results)
        sleeping = await durable_tasks.sleeper.enqueue_async(3600)
        waiting = await durable_tasks.approval.enqueue_async(2)
        busy = await durable_tasks.fan_out.enqueue_async(20, 20, 60.0)
        await wait_for(lambda: _status(conn, sleeping.id, "sleeping"), 30, "the sleeper to sleep")
        await wait_for(lambda: _status(conn, waiting.id, "waiting"), 30, "the approval to wait")
        await wait_for(lambda: _children_done(conn, busy.id, 20), 60, "the busy fan-out's quick children")
        # a stray wait of a finished run (none is left by the code; pruning must not leave one)
        conn.execute("INSERT INTO pgqueue.event_waits (run_id, step_key, seq, event_name) VALUES (%s, 'x#1', 1, 'x')",
                     (chatty[0],))

        backdate(conn)
        recent = (await durable_tasks.chatty.enqueue_async(100))
        await recent.result(timeout=30)  # finished now: not yet due

        finished_trees = [fan.id, dag.id, answered.id, *chatty, *ticked]
        doomed = set().union(*(tree_of(conn, root) for root in finished_trees))
        kept = set().union(*(tree_of(conn, root) for root in (sleeping.id, waiting.id, busy.id, recent.id)))
        assert len(tree_of(conn, fan.id)) == 1001 and len(tree_of(conn, dag.id)) == 5
        before_doomed, before_kept = rows_of(conn, doomed), rows_of(conn, kept)
        assert before_doomed["cron_ticks"] >= 1 and before_doomed["steps"] > 0
        assert conn.execute("SELECT count(*) FROM pgqueue.attempts WHERE run_id = ANY(%s) AND logs LIKE %s",
                            (chatty, "%chatty says%")).fetchone() == (5,)

        assert conn.execute("SELECT trees, runs FROM pgqueue.prune(100, true)").fetchone() == (
            len(finished_trees), len(doomed))
        total = prune_until_done(conn, 100)

        assert total["runs"] == len(doomed) and total["trees"] == len(finished_trees)
        assert rows_of(conn, doomed) == dict.fromkeys(before_doomed, 0)
        for table in COUNTED:
            assert total[table] == before_doomed[table], table
        assert rows_of(conn, kept) == before_kept  # untouched, children of the busy fan-out included
        statuses = {r[0]: r[1] for r in conn.execute("SELECT id, status FROM pgqueue.runs WHERE id = ANY(%s)",
                                                     ([sleeping.id, waiting.id, busy.id],))}
        assert statuses == {sleeping.id: "sleeping", waiting.id: "waiting", busy.id: "waiting"}
        app.cancel(busy.id)
        app.cancel(sleeping.id)
        app.cancel(waiting.id)


async def _has_tick(conn: Conn) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pgqueue.cron_ticks WHERE run_id IS NOT NULL)").fetchone() == (
        True,)


async def _status(conn: Conn, run_id: int, status: str) -> bool:
    return conn.execute("SELECT status FROM pgqueue.runs WHERE id = %s", (run_id,)).fetchone() == (status,)


async def _all_final(conn: Conn, ids: list[int]) -> bool:
    row = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND finished_at IS NULL", (ids,))
    return row.fetchone() == (0,)


async def _children_done(conn: Conn, parent: int, n: int) -> bool:
    row = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE parent_id = %s AND status = 'succeeded'", (parent,))
    return row.fetchone() == (n,)


# -- policies ----------------------------------------------------------------------------------


def _finished_run(conn: Conn, task: str, status: str, age: str, key: str | None = None) -> int:
    """A run of `task` that finished as `status` `age` ago (made with the SQL API)."""
    run_id = conn.execute("SELECT pgqueue.enqueue(%s, '{}', idempotency_key => %s)", (task, key)).fetchone()[0]  # type: ignore[index]
    conn.execute("DELETE FROM pgqueue.ready WHERE run_id = %s", (run_id,))
    conn.execute("UPDATE pgqueue.runs SET status = %s, finished_at = now() - %s::interval WHERE id = %s",
                 (status, age, run_id))
    return int(run_id)


def _exists(conn: Conn, run_id: int) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pgqueue.runs WHERE id = %s)", (run_id,)).fetchone() == (True,)


def test_policy_per_status_and_per_task(app: PgQueue, conn: Conn, reset_policies: None) -> None:
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('short_lived'), ('other') ON CONFLICT DO NOTHING")
    runs = {
        ("succeeded", "8 days"): _finished_run(conn, "other", "succeeded", "8 days"),
        ("succeeded", "6 days"): _finished_run(conn, "other", "succeeded", "6 days"),
        ("failed", "8 days"): _finished_run(conn, "other", "failed", "8 days"),
        ("failed", "31 days"): _finished_run(conn, "other", "failed", "31 days"),
        ("cancelled", "31 days"): _finished_run(conn, "other", "cancelled", "31 days"),
        ("dead", "29 days"): _finished_run(conn, "other", "dead", "29 days"),
        ("short", "2 hours"): _finished_run(conn, "short_lived", "succeeded", "2 hours"),
        ("short failed", "2 hours"): _finished_run(conn, "short_lived", "failed", "2 hours"),
    }
    assert app.set_retention(3600, status="succeeded", task="short_lived") == 1
    prune_until_done(conn)
    gone = {k for k, run_id in runs.items() if not _exists(conn, run_id)}
    assert gone == {("succeeded", "8 days"), ("failed", "31 days"), ("cancelled", "31 days"), ("short", "2 hours")}

    app.set_retention(timedelta(days=28), status="dead")
    prune_until_done(conn)
    assert not _exists(conn, runs[("dead", "29 days")])
    assert _exists(conn, runs[("succeeded", "6 days")]) and _exists(conn, runs[("short failed", "2 hours")])


def test_bad_input_changes_nothing(app: PgQueue, conn: Conn, reset_policies: None) -> None:
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('known') ON CONFLICT DO NOTHING")
    before = conn.execute("SELECT * FROM pgqueue.retention_policies ORDER BY 1, 2").fetchall()
    with pytest.raises(InvalidInput, match="positive age"):
        app.set_retention(0)
    with pytest.raises(InvalidInput, match="positive age"):
        app.set_retention(-5, status="failed")
    with pytest.raises(InvalidInput, match='unknown retention status "finished"'):
        app.set_retention(60, status="finished")
    with pytest.raises(RunNotFound, match='no task named "nope"'):
        app.set_retention(60, task="nope")
    with pytest.raises(InvalidInput, match="events are kept for one age"):
        app.set_retention(60, status="events", task="known")
    with pytest.raises(InvalidInput, match="cannot be removed"):
        app.unset_retention("*")
    with pytest.raises(InvalidInput, match="batch size"):
        app.prune(batch_size=0)
    assert conn.execute("SELECT * FROM pgqueue.retention_policies ORDER BY 1, 2").fetchall() == before
    for spec, message in ((0, "positive age"), (timedelta(seconds=-1), "positive age"), ("7d", "seconds or"),
                          ({"finished": 60}, "unknown status finished"), ({"failed": float("nan")}, "positive")):
        with pytest.raises(TaskDefinitionError, match=message):
            app.task(name="bad_retention", retention=spec)(lambda: None)
    for text in ("0", "-1d", "7 days", "x", ""):
        with pytest.raises(InvalidInput, match="not a positive age"):
            parse_age(text)
    assert parse_age("7d") == 7 * 86400 and parse_age("90") == 90 and parse_age("1.5h") == 5400


def test_code_policy_is_written_and_runtime_changes_are_kept(dsn: str, conn: Conn, reset_policies: None) -> None:
    code = PgQueue(dsn)

    @code.task(retention={"succeeded": timedelta(hours=1), "failed": 86400})
    def keeps_little() -> None: ...

    @code.task(retention=120)
    def keeps_less() -> None: ...

    def policies() -> set[tuple[Any, ...]]:
        return set(conn.execute("SELECT task, status, extract(epoch FROM keep)::int, source "
                                "FROM pgqueue.retention_policies WHERE task LIKE 'keeps_%'").fetchall())

    code.register_tasks()
    assert policies() == {("keeps_little", "succeeded", 3600, "code"), ("keeps_little", "failed", 86400, "code"),
                          *{("keeps_less", s, 120, "code") for s in ("succeeded", "failed", "cancelled", "dead")}}
    code.set_retention(600, status="succeeded", task="keeps_little")
    code.register_tasks()  # a worker starting again
    assert ("keeps_little", "succeeded", 600, "runtime") in policies()
    # the code changes: its own rows follow, the runtime row stays
    code.tasks["keeps_little"].settings = code.tasks["keeps_little"].settings.__class__(
        name="keeps_little", retention={"succeeded": 60, "dead": 60})
    code.register_tasks()
    assert {p for p in policies() if p[0] == "keeps_little"} == {
        ("keeps_little", "succeeded", 600, "runtime"), ("keeps_little", "dead", 60, "code")}
    assert code.unset_retention("keeps_little") == 2
    code.close()
    assert task_retention("t", None) == {} and task_retention("t", 5) == dict.fromkeys(
        ("succeeded", "failed", "cancelled", "dead"), 5.0)


# -- idempotency, events, what users see ----------------------------------------------------------


def test_a_pruned_runs_idempotency_key_can_be_used_again(app: PgQueue, conn: Conn, reset_policies: None) -> None:
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('keyed') ON CONFLICT DO NOTHING")
    first = _finished_run(conn, "keyed", "succeeded", "1 day", key="invoice-42")
    again = app.enqueue("keyed", {}, idempotency_key="invoice-42")
    assert (again.id, again.created) == (first, False)  # kept: the key still answers with the run
    backdate(conn, 7, [first])
    prune_until_done(conn)
    fresh = app.enqueue("keyed", {}, idempotency_key="invoice-42")
    assert fresh.created and fresh.id != first


def test_a_pruned_runs_stream_and_progress_go_with_it(conn: Conn, reset_policies: None) -> None:
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('streamer') ON CONFLICT DO NOTHING")
    old = _finished_run(conn, "streamer", "succeeded", "8 days")
    recent = _finished_run(conn, "streamer", "succeeded", "1 day")
    for run_id in (old, recent):  # what the worker's stream writer leaves behind
        conn.execute("INSERT INTO pgqueue.streams (run_id, chunks, attempt, progress_done, progress_at)"
                     " VALUES (%s, 3, 1, 3, now())", (run_id,))
        conn.execute("INSERT INTO pgqueue.stream_chunks (run_id, \"offset\", attempt, data)"
                     " SELECT %s, o, 1, to_jsonb(o) FROM generate_series(0, 2) AS o", (run_id,))

    def left(table: str) -> dict[int, int]:
        return dict(conn.execute(sql.SQL("SELECT run_id, count(*) FROM pgqueue.{} WHERE run_id = ANY(%s)"
                                         " GROUP BY run_id").format(sql.Identifier(table)), ([old, recent],)))

    prune_until_done(conn)
    assert not _exists(conn, old) and _exists(conn, recent)
    assert left("stream_chunks") == {recent: 3} and left("streams") == {recent: 1}


def test_old_events_no_run_waits_for_expire(app: PgQueue, conn: Conn, reset_policies: None) -> None:
    conn.execute("DELETE FROM pgqueue.events")
    for i in range(5):
        app.send_event("stale", f"k{i}", {"i": i})
    app.send_event("awaited", "k", {})
    app.send_event("fresh", "k", {})
    conn.execute("INSERT INTO pgqueue.event_waits (run_id, step_key, seq, event_name, event_key) "
                 "VALUES (-1, 'w#1', 1, 'awaited', 'k')")
    conn.execute("UPDATE pgqueue.events SET created_at = created_at - interval '8 days' WHERE name <> 'fresh'")
    assert conn.execute("SELECT events FROM pgqueue.prune(2, true)").fetchone() == (5,)
    assert prune_until_done(conn, 2)["events"] == 5
    assert {r[0] for r in conn.execute("SELECT name FROM pgqueue.events")} == {"awaited", "fresh"}
    conn.execute("DELETE FROM pgqueue.event_waits WHERE run_id = -1")


def test_cli_retention_prune_status_and_a_pruned_run(cli_env: dict[str, str], conn: Conn,
                                                     reset_policies: None) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], env=cli_env, capture_output=True,
                              text=True, timeout=60)

    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('report') ON CONFLICT DO NOTHING")
    old = _finished_run(conn, "report", "failed", "3 days")
    shown = cli("retention", "show")
    assert shown.returncode == 0 and re.search(r"\*\s+succeeded\s+7d\s+code", shown.stdout), shown.stdout
    bad = cli("retention", "set", "0s")
    assert bad.returncode == 1 and "not a positive age" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("retention", "set", "1d", "--task", "nope")
    assert bad.returncode == 1 and 'no task named "nope"' in bad.stderr
    ok = cli("retention", "set", "2d", "--status", "failed", "--task", "report")
    assert ok.returncode == 0 and "set 1 policy" in ok.stdout, ok.stderr
    dry = cli("prune", "--dry-run")
    assert dry.returncode == 0 and "would prune 1 run(s) in 1 tree(s)" in dry.stdout
    assert _exists(conn, old)
    done = cli("prune", "--batch-size", "10")
    assert done.returncode == 0 and "pruned 1 run(s) in 1 tree(s)" in done.stdout, done.stderr
    gone = cli("runs", "show", str(old))
    assert gone.returncode == 1 and f"no run with id {old}: pruned by retention" in gone.stderr
    never = cli("runs", "show", "999999999")
    assert never.returncode == 1 and ": pruned by retention" not in never.stderr
    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert "retention: succeeded 7d, failed 30d, cancelled 30d, dead 30d, events 7d" in status.stdout
    assert "task report: failed 2d" in status.stdout and "removed 1 run(s) in 1 tree(s)" in status.stdout


# -- concurrency -------------------------------------------------------------------------------


def _make_trees(conn: Conn, roots: int, children: int, task: str = "tree") -> list[int]:
    """`roots` finished trees of `children` children each (and a grandchild under the first),
    finished 40 days ago, made with the SQL API."""
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES (%s) ON CONFLICT DO NOTHING", (task,))
    ids = [r[0] for r in conn.execute("SELECT pgqueue.enqueue(%s, '{}') FROM generate_series(1, %s)", (task, roots))]
    for root in ids:
        kids = [r[0] for r in conn.execute("SELECT id FROM pgqueue.enqueue_many(%s, "
                                           "(SELECT array_agg('{}'::jsonb) FROM generate_series(1, %s)), "
                                           "parent_id => %s)", (task, children, root))]
        conn.execute("SELECT pgqueue.enqueue_many(%s, ARRAY['{}'::jsonb], parent_id => %s)", (task, kids[0]))
    conn.execute("DELETE FROM pgqueue.ready r USING pgqueue.runs x WHERE x.id = r.run_id AND x.task = %s", (task,))
    conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now() - interval '40 days' "
                 "WHERE task = %s", (task,))
    conn.execute("INSERT INTO pgqueue.attempts (run_id, attempt, started_at, outcome) "
                 "SELECT id, 1, now(), 'succeeded' FROM pgqueue.runs WHERE task = %s", (task,))
    return ids


def test_pruners_never_wait_for_each_other_nor_for_claims(dsn: str, conn: Conn, reset_policies: None) -> None:
    """Driven step by step: a pruner holding its batch open does not make a second pruner, a
    claim or a completion wait (each would fail on lock_timeout), and no tree is taken twice."""
    roots = _make_trees(conn, 10, 2, "stepwise")
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('live') ON CONFLICT DO NOTHING")
    live = conn.execute("SELECT pgqueue.enqueue('live', '{}', queue => 'stepwise')").fetchone()[0]  # type: ignore[index]
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        first.execute("SET lock_timeout = '1s'")
        second.execute("SET lock_timeout = '200ms'")
        a = first.execute("SELECT trees, runs FROM pgqueue.prune(16)").fetchone()
        assert a == (4, 16)  # 4 roots, 2 children and a grandchild each, in one open transaction
        b = second.execute("SELECT trees, runs FROM pgqueue.prune(16)").fetchone()
        assert b == (4, 16)  # other trees, without waiting
        worker = uuid.uuid4()
        claimed = second.execute("SELECT id FROM pgqueue.claim(%s, '{stepwise}', 5, 30)", (worker,)).fetchall()
        assert claimed == [(live,)]
        second.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now() WHERE id = %s", (live,))
        first.commit()
    assert sum(1 for r in roots if _exists(conn, r)) == 2
    assert prune_until_done(conn)["trees"] == 2
    assert not any(_exists(conn, r) for r in roots)


def test_three_pruners_with_claims_cancels_and_completions(durable_tasks: Any, dsn: str, conn: Conn,
                                                           reset_policies: None) -> None:
    roots = _make_trees(conn, 150, 3, "churned")
    doomed = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE task = 'churned'").fetchone()[0]  # type: ignore[index]
    before_stats = conn.execute("SELECT sum(total_runs) FROM pgqueue.prune_stats").fetchone()[0]  # type: ignore[index]
    pruned: list[dict[str, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def pruner() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("SET deadlock_timeout = '100ms'")
                pruned.append(prune_until_done(c, 20))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def canceller() -> None:
        # enqueue fan-outs and cancel some of them while the pruners run: cancel locks whole trees
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                while not stop.is_set():
                    run_id = c.execute("SELECT pgqueue.enqueue('fan_out', '{\"n\": 3, \"chunk\": 3}')").fetchone()[0]  # type: ignore[index]
                    # as the client does: a cancel that meets a claim or completion of the same tree
                    # head-on can be chosen as a deadlock victim, and is safe to repeat
                    durable_tasks.app.cancel(run_id)
                    stop.wait(0.02)
        except BaseException as exc:  # reported below
            errors.append(exc)

    async def churn() -> None:
        # a worker claiming and completing runs (and children waking parents) meanwhile
        async with running_worker(durable_tasks.app, concurrency=10, prune_interval=0):
            handles = await durable_tasks.fan_out.enqueue_many_async([{"n": 20, "chunk": 10}] * 5)
            threads = [threading.Thread(target=pruner) for _ in range(3)] + [threading.Thread(target=canceller)]
            for t in threads:
                t.start()
            for h in handles:
                await h.result(timeout=120)
            for t in threads[:3]:
                await asyncio.to_thread(t.join, 120)
            stop.set()
            await asyncio.to_thread(threads[3].join, 30)

    asyncio.run(churn())
    assert not errors, errors
    assert len(pruned) == 3
    assert sum(p["runs"] for p in pruned) == doomed  # each tree removed once, by one pruner
    assert sum(p["trees"] for p in pruned) == len(roots)
    assert sum(p["attempts"] for p in pruned) == doomed
    assert conn.execute("SELECT count(*) FROM pgqueue.runs WHERE task = 'churned'").fetchone() == (0,)
    after_stats = conn.execute("SELECT sum(total_runs) FROM pgqueue.prune_stats").fetchone()[0]  # type: ignore[index]
    assert after_stats - before_stats == doomed


async def test_worker_pruner_prunes_alone_and_reports(durable_tasks: Any, dsn: str, conn: Conn,
                                                      reset_policies: None) -> None:
    app: PgQueue = durable_tasks.app
    db = app.db
    # another pruner holds the lock: this one skips its pass and records nothing
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext('pgqueue.prune'))")
        called = conn.execute("SELECT max(last_called_at) FROM pgqueue.prune_stats").fetchone()
        assert await db.execute_async(prune_exclusive_op(10)) is None
        assert conn.execute("SELECT max(last_called_at) FROM pgqueue.prune_stats").fetchone() == called
        holder.rollback()
    assert await db.execute_async(prune_exclusive_op(10)) is not None

    app.set_retention(1, status="succeeded")
    async with running_worker(app, concurrency=5, prune_interval=0.3, prune_batch_size=3):
        handles = await durable_tasks.chatty.enqueue_many_async([{"n": i} for i in range(8)])
        ids = [h.id for h in handles]
        for h in handles:
            await h.result(timeout=30)

        async def all_gone() -> bool:
            return conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s)", (ids,)).fetchone() == (0,)

        await wait_for(all_gone, 30, "the worker's pruner to remove the runs")
    last = await db.execute_async(last_prune_op())
    assert last.last_pruned_at is not None and last.total_runs >= 8
    gauges = await db.execute_async(gauges_op())
    assert gauges["pgqueue_pruned_runs_total"][()] == float(last.total_runs)


def test_a_tree_larger_than_a_batch_goes_over_several_calls_root_last(conn: Conn, reset_policies: None) -> None:
    [root] = _make_trees(conn, 1, 24, "big_tree")  # 24 children and a grandchild
    calls = []
    while True:
        trees, runs = conn.execute("SELECT trees, runs FROM pgqueue.prune(10)").fetchone()  # type: ignore[misc]
        if runs == 0:
            break
        calls.append((trees, runs, _exists(conn, root)))
    assert calls == [(0, 10, True), (0, 10, True), (1, 6, False)]


def test_prune_all_commits_batch_after_batch(conn: Conn, reset_policies: None) -> None:
    roots = _make_trees(conn, 7, 2, "called")  # 28 runs
    conn.execute("CALL pgqueue.prune_all(5)")
    assert not any(_exists(conn, r) for r in roots)
    assert conn.execute("SELECT count(*) FROM pgqueue.attempts a WHERE NOT EXISTS "
                        "(SELECT 1 FROM pgqueue.runs r WHERE r.id = a.run_id)").fetchone() == (0,)
    with pytest.raises(psycopg.errors.InvalidTransactionTermination), conn.transaction():
        conn.execute("CALL pgqueue.prune_all(5)")  # inside a transaction block it cannot commit
