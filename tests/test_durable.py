"""Durable execution: checkpointed steps, per-step retries, sleep, events, replay, determinism."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from conftest import running_worker, wait_for
from pgqueue import InputTooLarge, RunFailed

pytestmark = pytest.mark.timeout(120)


def effects(dsn: str, run_id: int) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT what, count(*) FROM effects WHERE run_id = %s GROUP BY what",
                                 (run_id,)).fetchall())


def status_of(dsn: str, ids: list[int]) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM pgqueue.runs WHERE id = ANY(%s) GROUP BY status",
                                 (ids,)).fetchall())


async def async_status(dsn: str, ids: list[int]) -> dict[str, int]:
    return await asyncio.to_thread(status_of, dsn, ids)


async def test_step_failing_twice_with_429_retries_only_that_step(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.pipeline.enqueue_async(
        durable_tasks.Document(text="Postgres is enough. Steps are durable. Nothing twice", llm_failures=2))
    async with running_worker(durable_tasks.app, poll_interval=0.05):
        assert await handle.result(timeout=30) > 0
    assert effects(dsn, handle.id) == {"parse": 1, "chunk": 1, "llm": 3, "store": 1}
    with psycopg.connect(dsn) as conn:
        steps = conn.execute("SELECT step_key, status, attempts FROM pgqueue.steps WHERE run_id = %s ORDER BY seq",
                             (handle.id,)).fetchall()
        run = conn.execute("SELECT failures, attempt FROM pgqueue.runs WHERE id = %s", (handle.id,)).fetchone()
    assert steps == [("parse#0", "succeeded", 1), ("chunk#0", "succeeded", 1), ("llm#0", "succeeded", 3),
                     ("store#0", "succeeded", 1)]
    assert run == (0, 3)  # three attempts, none counted as a failure of the task (max_attempts=1)


async def test_sync_steps_and_sync_sleep(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.sync_pipeline.enqueue_async(20)
    async with running_worker(durable_tasks.app, poll_interval=0.05):
        assert await handle.result(timeout=30) == 41
    assert effects(dsn, handle.id) == {"double": 1, "add": 1}


async def test_steps_in_a_loop_get_distinct_keys(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.loops.enqueue_async(4)
    async with running_worker(durable_tasks.app):
        assert await handle.result(timeout=30) == [0, 1, 4, 9]
    with psycopg.connect(dsn) as conn:
        keys = [r[0] for r in conn.execute("SELECT step_key FROM pgqueue.steps WHERE run_id = %s ORDER BY seq",
                                           (handle.id,))]
    assert keys == ["square#0", "square#1", "square#2", "square#3"]


async def test_durable_sleep_holds_no_slot_and_survives_a_worker_restart(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.sleeper.enqueue_async(1.5)
    async with running_worker(durable_tasks.app, concurrency=1):
        await wait_for(lambda: _is(dsn, handle.id, "sleeping"), what="the run to sleep")
        other = await durable_tasks.loops.enqueue_async(2)  # the only slot is free while it sleeps
        assert await other.result(timeout=10) == [0, 1]
    # the worker is gone; a new one continues the run after the wake time
    async with running_worker(durable_tasks.app, poll_interval=0.05):
        await handle.result(timeout=30)
    assert effects(dsn, handle.id) == {"before": 1, "after": 1}
    with psycopg.connect(dsn) as conn:
        outcomes = [r[0] for r in conn.execute(
            "SELECT outcome FROM pgqueue.attempts WHERE run_id = %s ORDER BY attempt", (handle.id,))]
        slept = conn.execute("SELECT finished_at - started_at FROM pgqueue.runs WHERE id = %s",
                             (handle.id,)).fetchone()
    assert outcomes == ["suspended", "succeeded"]
    assert slept is not None and slept[0].total_seconds() >= 1.5


async def _is(dsn: str, run_id: int, status: str) -> bool:
    return await async_status(dsn, [run_id]) == {status: 1}


async def test_hundred_runs_wait_for_approval_without_holding_slots(durable_tasks: Any, dsn: str) -> None:
    waiting = [h.id for h in await durable_tasks.approval.enqueue_many_async(
        [{"doc_id": i} for i in range(99)] + [{"doc_id": 99, "timeout": 1.0}])]
    async with running_worker(durable_tasks.app, concurrency=1, poll_interval=0.05):
        await wait_for(lambda: _count_waiting(dsn, waiting[:99], 99), timeout=60, what="99 runs waiting")
        others = await durable_tasks.loops.enqueue_many_async([{"n": 3}] * 10)
        assert [await h.result(timeout=20) for h in others] == [[0, 1, 4]] * 10
        for i in range(50):  # approvals from Python ...
            assert await durable_tasks.app.send_event_async("approval", f"doc-{i}", {"approved": True, "by": "py"}) == 1
        with psycopg.connect(dsn, autocommit=True) as conn:  # ... and from SQL
            for i in range(50, 99):
                conn.execute("SELECT pgqueue.send_event('approval', %s, '{\"approved\": true, \"by\": \"sql\"}')",
                             (f"doc-{i}",))
        results = [await durable_tasks.app.get_async_run(i).result(timeout=30) for i in waiting]
    assert results[:50] == [{"approved": True, "by": "py"}] * 50
    assert results[50:99] == [{"approved": True, "by": "sql"}] * 49
    assert results[99] == {"approved": False, "reason": "timed out"}  # the wait expired
    assert all(effects(dsn, i) == {"draft": 1, "publish": 1} for i in waiting)


async def _count_waiting(dsn: str, ids: list[int], n: int) -> bool:
    return (await async_status(dsn, ids)).get("waiting") == n


async def test_event_sent_before_the_wait_is_not_lost(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.approval.enqueue_async(500)
    await durable_tasks.app.send_event_async("approval", "doc-500", {"approved": True, "early": True})
    async with running_worker(durable_tasks.app):
        assert await handle.result(timeout=20) == {"approved": True, "early": True}
    with psycopg.connect(dsn) as conn:
        outcomes = [r[0] for r in conn.execute("SELECT outcome FROM pgqueue.attempts WHERE run_id = %s",
                                               (handle.id,))]
    assert outcomes == ["succeeded"]  # it never had to suspend


async def test_event_starts_subscribed_tasks(durable_tasks: Any, dsn: str) -> None:
    async with running_worker(durable_tasks.app):
        await asyncio.to_thread(durable_tasks.app.send_event, "document.uploaded", "", {"doc_id": 77})
        await wait_for(lambda: _effect_exists(dsn, "uploaded 77"), what="the subscribed task to run")


async def _effect_exists(dsn: str, what: str) -> bool:
    def check() -> bool:
        with psycopg.connect(dsn) as conn:
            return conn.execute("SELECT count(*) FROM effects WHERE what = %s", (what,)).fetchone() == (1,)
    return await asyncio.to_thread(check)


async def test_replay_from_the_failed_step_and_from_the_start(durable_tasks: Any, dsn: str) -> None:
    durable_tasks.BEHAVIOUR["store_fails"] = True
    handle = await durable_tasks.pipeline.enqueue_async(durable_tasks.Document(text="a. b"))
    async with running_worker(durable_tasks.app, poll_interval=0.05):
        with pytest.raises(RunFailed, match="the store is down"):
            await handle.result(timeout=20)
        assert effects(dsn, handle.id) == {"parse": 1, "chunk": 1, "llm": 1}
        durable_tasks.BEHAVIOUR["store_fails"] = False
        durable_tasks.app.replay(handle.id)
        await handle.result(timeout=20)
        assert effects(dsn, handle.id) == {"parse": 1, "chunk": 1, "llm": 1, "store": 1}
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM stored WHERE run_id = %s", (handle.id,))
            conn.execute("UPDATE pgqueue.runs SET status = 'failed' WHERE id = %s", (handle.id,))
        durable_tasks.app.replay(handle.id, from_start=True)
        await handle.result(timeout=20)
    assert effects(dsn, handle.id) == {"parse": 2, "chunk": 2, "llm": 2, "store": 2}


async def test_changed_code_under_a_running_run_is_detected(durable_tasks: Any) -> None:
    handle = await durable_tasks.evolving.enqueue_async()
    async with running_worker(durable_tasks.app):
        with pytest.raises(RunFailed, match="fail after two steps"):
            await handle.result(timeout=20)
        durable_tasks.BEHAVIOUR["renamed_step"] = True
        durable_tasks.app.retry(handle.id)
        with pytest.raises(RunFailed, match=r"step 1 was recorded as 'second#0' but the code now calls 'second_v2#0'"):
            await handle.result(timeout=20)


async def test_step_output_over_the_limit_fails_clearly(durable_tasks: Any) -> None:
    handle = await durable_tasks.big_output.enqueue_async()
    async with running_worker(durable_tasks.app):
        with pytest.raises(RunFailed, match=r"output of step .huge#0. is .* over the limit"):
            await handle.result(timeout=20)


def test_event_payload_over_the_limit_is_refused(durable_tasks: Any) -> None:
    with pytest.raises(InputTooLarge, match="payload of event \"big\""):
        durable_tasks.app.send_event("big", "", {"blob": "x" * 2_000_000})


async def test_fan_out_and_gather(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.fan_out.enqueue_async(300, 100)
    async with running_worker(durable_tasks.app, concurrency=20, poll_interval=0.05):
        assert await handle.result(timeout=60) == 2 * sum(range(300))
    info = await handle.info()
    assert (info.children_total, info.children_pending) == (300, 0)
    assert effects(dsn, handle.id) == {"total": 1}
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT parent_id) FROM pgqueue.runs WHERE parent_id = %s",
                            (handle.id,)).fetchone() == (300, 1)


async def test_a_failed_child_fails_the_gather(durable_tasks: Any) -> None:
    @durable_tasks.app.task(name="bad_fan_out")
    async def bad_fan_out() -> list[int]:
        ctx = durable_tasks.current_run()
        return await ctx.gather(await ctx.spawn(durable_tasks.embed_chunk, [{"i": 1}, {"i": -1}]))

    handle = await bad_fan_out.enqueue_async()
    async with running_worker(durable_tasks.app, poll_interval=0.05):
        with pytest.raises(RunFailed, match=r"ChildRunFailed: 1 of 2 child runs did not succeed .*negative chunk"):
            await handle.result(timeout=60)
    del durable_tasks.app.tasks["bad_fan_out"]


async def test_cancel_a_running_workflow_cancels_its_children(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.fan_out.enqueue_async(50, 50, 30.0)
    async with running_worker(durable_tasks.app, concurrency=4, poll_interval=0.05):
        await wait_for(lambda: _is(dsn, handle.id, "waiting"), what="the parent to wait for its children")
        assert await asyncio.to_thread(durable_tasks.app.cancel, handle.id) == "cancelled"
        with pytest.raises(RunFailed, match="cancelled"):
            await handle.result(timeout=10)

        def children() -> dict[str, int]:
            with psycopg.connect(dsn) as conn:
                return dict(conn.execute("SELECT status, count(*) FROM pgqueue.runs WHERE parent_id = %s"
                                         " GROUP BY status", (handle.id,)).fetchall())
        await wait_for(lambda: asyncio.to_thread(lambda: set(children()) <= {"succeeded", "cancelled"}),
                       what="every child to be finished or cancelled")
        assert children().get("cancelled", 0) >= 1  # the 30 s nap never finished


async def test_dag_runs_parallel_branches_and_feeds_outputs(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.ingest.enqueue_async(durable_tasks.DocRef(doc_id=7))
    async with running_worker(durable_tasks.app, concurrency=4, poll_interval=0.05):
        assert await handle.result(timeout=30) == {"vector": [9.0, 1.0], "summary": "TEXT OF 7"}
    with psycopg.connect(dsn) as conn:
        nodes = dict((node, (start, end)) for node, start, end in conn.execute(
            "SELECT workflow_node, started_at, finished_at FROM pgqueue.runs WHERE parent_id = %s", (handle.id,)))
    assert set(nodes) == {"fetch", "embed", "summarize", "store"}
    (embed_start, embed_end), (sum_start, sum_end) = nodes["embed"], nodes["summarize"]
    assert embed_start < sum_end and sum_start < embed_end  # the two branches overlapped
    assert nodes["store"][0] >= max(embed_end, sum_end) and nodes["fetch"][1] <= min(embed_start, sum_start)


async def test_dag_failure_stops_the_rest_and_runs_on_failure(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.ingest.enqueue_async(durable_tasks.DocRef(doc_id=8, fail_at="embed"))
    async with running_worker(durable_tasks.app, concurrency=4, poll_interval=0.05):
        with pytest.raises(RunFailed, match=r"WorkflowFailed: workflow 'ingest' failed at embed .*embedding model"):
            await handle.result(timeout=30)
        await wait_for(lambda: _effect_exists(dsn, f"on_failure of {handle.id}: ['embed']"),
                       what="the on-failure task")
    with psycopg.connect(dsn) as conn:
        nodes = dict(conn.execute("SELECT workflow_node, status FROM pgqueue.runs WHERE parent_id = %s",
                                  (handle.id,)).fetchall())
    assert nodes["fetch"] == "succeeded" and nodes["embed"] == "failed"
    assert nodes["summarize"] == "cancelled" and "store" not in nodes  # dependants never started


def test_dag_declaration_errors(durable_tasks: Any) -> None:
    from pgqueue import TaskDefinitionError
    from pgqueue.workflow import validate_dag

    with pytest.raises(TaskDefinitionError, match=r"the workflow has a cycle: a -> c -> b -> a"):
        validate_dag({"a": ["c"], "b": ["a"], "c": ["b"]})
    with pytest.raises(TaskDefinitionError, match="unknown parent 'ghost'"):
        validate_dag({"a": ["ghost"]})
    wf = durable_tasks.app.workflow("broken")
    with pytest.raises(TaskDefinitionError, match="unknown parent 'later'"):
        @wf.node(parents=["later"])
        async def early(later: int) -> int:
            return later
    with pytest.raises(TaskDefinitionError, match="must take one parameter per parent"):
        @wf.node()
        async def root(x: int) -> int:
            return x

        @wf.node(parents=[root])
        async def child(wrong_name: int) -> int:
            return wrong_name
    assert validate_dag({"a": [], "b": ["a"], "c": ["a", "b"]}) == ["a", "b", "c"]
