"""Messages to running runs (send / receive), updates, queries (published state), cancel on event,
and the bad input each refuses, from Python, SQL, the command line and the dashboard; real
PostgreSQL, a worker in this event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from test_cli import assert_one_line_error, pgqueue

from conftest import bind, running_worker, wait_for
from pgqueue import (
    CancelOn,
    InputTooLarge,
    InvalidInput,
    InvalidRunState,
    RunNotFound,
    TaskDefinitionError,
    UpdateNotAnswered,
    UpdateTimedOut,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def messages(dsn: str) -> Iterator[Any]:
    import message_app

    message_app.prepare(dsn)
    yield message_app
    bind(message_app.app, None)


def rows(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


async def status_is(dsn: str, run_id: int, *statuses: str) -> bool:
    found = await asyncio.to_thread(rows, dsn, "SELECT status FROM pgqueue.runs WHERE id = %s", (run_id,))
    return bool(found) and found[0][0] in statuses


def receive_steps(dsn: str, run_id: int) -> list[Any]:
    """The message ids the run's receive steps took, in step order."""
    return [r[0] for r in rows(dsn, "SELECT (output ->> 'message_id')::bigint FROM pgqueue.steps "
                                    "WHERE run_id = %s AND name LIKE 'receive:%%' ORDER BY seq", (run_id,))]


# -- messages -----------------------------------------------------------------------------------

async def test_messages_sent_before_and_during_the_run_arrive_in_order_once(messages: Any, dsn: str) -> None:
    app = messages.app
    run = await messages.inbox.enqueue_async(5)
    sent = [await app.send_async(run.id, "note", {"n": 0})]  # before it starts: kept for it
    await app.send_async(run.id, "other", {"n": -1})  # another name: not taken by receive("note")
    async with running_worker(app, poll_interval=0.05):
        await wait_for(lambda: status_is(dsn, run.id, "waiting"), what="the run to wait for its 2nd message")
        # a suspended run: it holds no slot; each send wakes it
        for n in range(1, 5):
            sent.append(await app.send_async(run.id, "note", {"n": n}))
        assert await run.result(timeout=30) == [{"n": n} for n in range(5)]
    assert receive_steps(dsn, run.id) == sent  # each message taken once, in send order
    assert await run.state() == {"received": 5}


async def test_sync_task_receives_and_replies(messages: Any, dsn: str) -> None:
    app = messages.app
    run = messages.inbox_sync.enqueue(3)
    for n in range(3):
        app.send(run.id, "note", n)
    summer = messages.counter_sync.enqueue()
    async with running_worker(app, poll_interval=0.05):
        assert await asyncio.to_thread(run.result, 30) == [0, 1, 2]
        assert await app.update_async(summer.id, "add", 21, timeout=30) == 42
        assert await asyncio.to_thread(summer.result, 30) == 21


async def test_receive_times_out_with_none_and_a_later_message_stays(messages: Any, dsn: str) -> None:
    app = messages.app
    quick = await messages.receive_or_timeout.enqueue_async(0.3)
    look = await messages.receive_or_timeout.enqueue_async(0)  # timeout 0: only looks
    async with running_worker(app, poll_interval=0.05):
        assert await quick.result(timeout=30) == "timed out"
        assert await look.result(timeout=30) == "timed out"
    waits = await asyncio.to_thread(rows, dsn, "SELECT count(*) FROM pgqueue.message_waits WHERE run_id = %s",
                                    (quick.id,))
    assert waits == [(0,)]  # the timed-out wait is gone
    patient = await messages.receive_or_timeout.enqueue_async(60)
    async with running_worker(app, poll_interval=0.05):
        await wait_for(lambda: status_is(dsn, patient.id, "waiting"), what="the run to wait")
        await app.send_async(patient.id, "note", "hello")
        assert await patient.result(timeout=30) == "hello"


async def test_a_replay_returns_the_same_messages_and_takes_no_other(messages: Any, dsn: str) -> None:
    app = messages.app
    run = await messages.inbox.enqueue_async(3)
    async with running_worker(app, poll_interval=0.05):
        for n in range(2):
            await app.send_async(run.id, "note", {"n": n})
        await wait_for(lambda: status_is(dsn, run.id, "waiting"), what="the run to wait for the 3rd message")
        await wait_for(lambda: asyncio.to_thread(lambda: len(receive_steps(dsn, run.id)) == 2),
                       what="two receive steps")
        assert await asyncio.to_thread(app.cancel, run.id) == "cancelled"
    taken = await asyncio.to_thread(receive_steps, dsn, run.id)
    # a cancelled run receives nothing more
    with pytest.raises(InvalidRunState, match=f"run {run.id} is cancelled"):
        await app.send_async(run.id, "note", {"n": 99})
    await asyncio.to_thread(app.retry, run.id)  # resumes after its two receive steps
    await app.send_async(run.id, "note", {"n": 2})
    async with running_worker(app, poll_interval=0.05):
        assert await run.result(timeout=30) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert (await asyncio.to_thread(receive_steps, dsn, run.id))[:2] == taken
    # the code after each receive ran again on the retry; the receives took nothing new
    assert len(await asyncio.to_thread(receive_steps, dsn, run.id)) == 3


# -- updates ------------------------------------------------------------------------------------

async def test_updates_round_trip_and_sends_mix_in_order(messages: Any, dsn: str) -> None:
    app = messages.app
    run = await messages.counter.enqueue_async()
    async with running_worker(app, poll_interval=0.05):
        assert await app.update_async(run.id, "add", 5, timeout=30) == 5
        await app.send_async(run.id, "add", 10)  # a plain message: no reply expected
        assert await asyncio.to_thread(app.update, run.id, "add", 1, timeout=30) == 16
        assert await app.update_async(run.id, "add", 0, timeout=30) == "bye"
        assert await run.result(timeout=30) == 16
    replies = await asyncio.to_thread(rows, dsn, "SELECT wants_reply, reply FROM pgqueue.messages "
                                                 "WHERE run_id = %s ORDER BY id", (run.id,))
    assert replies == [(True, 5), (False, None), (True, 16), (True, "bye")]


async def test_an_update_times_out_clearly_and_a_run_ending_without_reply_is_reported(messages: Any,
                                                                                    dsn: str) -> None:
    app = messages.app
    sleeper = await messages.naps.enqueue_async(60)
    async with running_worker(app, poll_interval=0.05):
        await wait_for(lambda: status_is(dsn, sleeper.id, "sleeping"), what="the run to sleep")
        with pytest.raises(UpdateTimedOut, match=rf"run {sleeper.id} did not reply to update 'add' .* within 0.5s"):
            await app.update_async(sleeper.id, "add", 1, timeout=0.5)
        with pytest.raises(TimeoutError):  # UpdateTimedOut is a TimeoutError too
            await asyncio.to_thread(app.update, sleeper.id, "add", 1, timeout=0.2)
        mute = await messages.never_replies.enqueue_async()
        with pytest.raises(UpdateNotAnswered, match=f"run {mute.id} ended succeeded without replying"):
            await app.update_async(mute.id, "add", 1, timeout=30)
    await asyncio.to_thread(app.cancel, sleeper.id)


# -- queries ------------------------------------------------------------------------------------

async def test_queries_answer_while_the_run_sleeps_or_waits(messages: Any, dsn: str) -> None:
    app = messages.app
    sleeper = await messages.naps.enqueue_async(60)
    waiter = await messages.awaits_approval.enqueue_async()
    assert await sleeper.state() is None  # nothing published yet
    async with running_worker(app, poll_interval=0.05):
        await wait_for(lambda: status_is(dsn, sleeper.id, "sleeping"), what="the run to sleep")
        await wait_for(lambda: status_is(dsn, waiter.id, "waiting"), what="the run to wait")
        assert await sleeper.state() == {"phase": "napping", "for": 60}
        assert await asyncio.to_thread(app.get_state, waiter.id) == {"phase": "waiting for approval"}
        assert await app.get_state_async(waiter.id) == {"phase": "waiting for approval"}
        # reading the state woke neither run
        assert await status_is(dsn, sleeper.id, "sleeping") and await status_is(dsn, waiter.id, "waiting")
        sql_state = await asyncio.to_thread(rows, dsn, "SELECT pgqueue.run_state(%s)", (sleeper.id,))
        assert sql_state == [({"phase": "napping", "for": 60},)]
        await app.send_event_async("approval", str(waiter.id), {"ok": True})
        assert await waiter.result(timeout=30) == {"ok": True}
    await asyncio.to_thread(app.cancel, sleeper.id)
    assert await sleeper.state() == {"phase": "napping", "for": 60}  # kept after the run ended


async def test_a_state_over_the_limit_fails_the_run_clearly(messages: Any, dsn: str) -> None:
    app = messages.app
    run = messages.sets_huge_state.enqueue(70_000)
    async with running_worker(app, poll_interval=0.05):
        info = await asyncio.to_thread(run.wait, 30)
    assert info.status == "failed"
    assert info.error is not None and info.error["type"] == "InputTooLarge"
    assert f"the state of run {run.id} is" in info.error["message"] and "65536" in info.error["message"]
    assert run.state() is None


# -- cancel on event ------------------------------------------------------------------------------

async def test_cancel_on_event_cancels_the_matching_runs_and_their_children_only(messages: Any, dsn: str) -> None:
    app = messages.app
    doomed = await messages.fulfil.enqueue_async(7, child_count=2)
    spared = await messages.fulfil.enqueue_async(8, child_count=1)
    queued = await messages.fulfil.enqueue_async(7)  # not started yet: cancelled too
    billing = messages.bill.enqueue(7)  # running when the event comes: asked to stop
    other_billing = messages.bill.enqueue(8)
    async with running_worker(app, poll_interval=0.05, concurrency=4, queues=["default"]):
        await wait_for(lambda: status_is(dsn, doomed.id, "waiting"), what="the order's run to gather")
        await wait_for(lambda: status_is(dsn, spared.id, "waiting"), what="the other order's run to gather")
        await wait_for(lambda: status_is(dsn, billing.id, "running"), what="the billing run to start")
        await wait_for(lambda: status_is(dsn, other_billing.id, "running"), what="the other billing run")
        children = [r[0] for r in await asyncio.to_thread(rows, dsn, "SELECT id FROM pgqueue.runs WHERE parent_id = %s",
                                                           (doomed.id,))]
        spared_children = [r[0] for r in await asyncio.to_thread(
            rows, dsn, "SELECT id FROM pgqueue.runs WHERE parent_id = %s", (spared.id,))]
        assert len(children) == 2 and len(spared_children) == 1
        for child in children + spared_children:
            await wait_for(lambda child=child: status_is(dsn, child, "waiting"), what="children to wait")
        await app.send_event_async("order.cancelled", "", {"order_id": 7, "reason": "customer"})
        await wait_for(lambda: status_is(dsn, billing.id, "cancelled"), what="the running billing run to stop")
        statuses = dict(await asyncio.to_thread(
            rows, dsn, "SELECT id, status FROM pgqueue.runs WHERE id = ANY(%s)",
            ([doomed.id, spared.id, queued.id, billing.id, other_billing.id, *children, *spared_children],)))
        assert [statuses[i] for i in (doomed.id, queued.id, billing.id, *children)] == ["cancelled"] * 5
        assert statuses[spared.id] == "waiting" and statuses[other_billing.id] == "running"
        assert [statuses[i] for i in spared_children] == ["waiting"]
        error = (await asyncio.to_thread(rows, dsn, "SELECT error FROM pgqueue.runs WHERE id = %s", (doomed.id,)))
        assert error[0][0]["message"] == 'cancelled by event "order.cancelled" (order_id = 7)'
        # an event without the field cancels nothing; a string "8" is not the number 8
        await app.send_event_async("order.cancelled", "", {"reason": "no order id"})
        await app.send_event_async("order.cancelled", "", {"order_id": "8"})
        assert await status_is(dsn, spared.id, "waiting") and await status_is(dsn, other_billing.id, "running")
        # a rule without match cancels every unfinished run of the task
        await app.send_event_async("shutdown", "", {})
        await wait_for(lambda: status_is(dsn, other_billing.id, "cancelled"), what="the shutdown to stop billing")
        assert await status_is(dsn, spared.id, "waiting")
    await asyncio.to_thread(app.cancel, spared.id)


def test_cancel_on_rules_are_written_at_registration_and_checked(messages: Any, dsn: str) -> None:
    stored = rows(dsn, "SELECT event_name, task, match FROM pgqueue.cancel_subscriptions ORDER BY task, event_name")
    assert stored == [("order.cancelled", "bill", "order_id"), ("shutdown", "bill", None),
                      ("order.cancelled", "fulfil", "order_id")]
    with pytest.raises(TaskDefinitionError, match=r"cancel_on= takes pgqueue\.CancelOn"):
        @messages.app.task(name="bad_cancel", cancel_on="order.cancelled")  # type: ignore[arg-type]
        def bad() -> None: ...
    with pytest.raises(TaskDefinitionError, match=r"CancelOn\('order.cancelled', match='order_idd'\) names no "
                                                  r"field of its input \(its fields: order_id\)"):
        @messages.app.task(name="typo_cancel", cancel_on=CancelOn("order.cancelled", match="order_idd"))
        def typo(order_id: int) -> None: ...
    with pytest.raises(TaskDefinitionError, match="event name 'bad name' is not valid"):
        CancelOn("bad name")
    with pytest.raises(TaskDefinitionError, match="match= names a field"):
        CancelOn("order.cancelled", match="")


# -- bad input ------------------------------------------------------------------------------------

def test_bad_input_gets_clear_errors_and_stores_nothing(messages: Any, dsn: str) -> None:
    app = messages.app
    with pytest.raises(RunNotFound, match="no run with id 987654321"):
        app.send(987654321, "note", {})
    with pytest.raises(RunNotFound, match="no run with id 987654321"):
        app.get_state(987654321)
    with pytest.raises(RunNotFound, match="no run with id 987654321"):
        app.update(987654321, "add", 1, timeout=1)
    done = messages.receive_or_timeout.enqueue(0)
    rows(dsn, "UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now() WHERE id = %s", (done.id,))
    rows(dsn, "DELETE FROM pgqueue.ready WHERE run_id = %s", (done.id,))
    with pytest.raises(InvalidRunState, match=f"run {done.id} is succeeded: a finished run receives no more"):
        app.send(done.id, "note", {})
    run = messages.inbox.enqueue(1)
    with pytest.raises(InvalidInput, match="message name 'bad name!' is not valid"):
        app.send(run.id, "bad name!", {})
    with pytest.raises(InvalidInput, match="must be a JSON value"):
        app.send(run.id, "note", {"when": object()})
    with pytest.raises(InputTooLarge, match=r'the payload of message "note" is .* over the limit of 1048576 bytes'):
        app.send(run.id, "note", {"blob": "x" * 1_100_000})
    with pytest.raises(InvalidInput, match="timeout is a positive number"):
        app.update(run.id, "add", 1, timeout=0)
    assert rows(dsn, "SELECT count(*) FROM pgqueue.messages WHERE run_id IN (%s, %s)", (done.id, run.id)) == [(0,)]
    # the SQL API refuses the same way
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error, match="no run with id 0"):
        conn.execute("SELECT pgqueue.send_message(0, 'note')")
    with psycopg.connect(dsn, autocommit=True) as conn:
        message_id = conn.execute("SELECT pgqueue.send_message(%s, 'note', %s::jsonb)",
                                  (run.id, json.dumps({"n": 1}))).fetchone()
        assert message_id is not None
        assert conn.execute("SELECT * FROM pgqueue.message_reply(%s)", message_id).fetchone() == (
            False, None, "queued")


async def test_receive_refuses_bad_arguments_inside_the_run(messages: Any, dsn: str) -> None:
    app = messages.app

    @app.task(name="bad_receiver")
    async def bad_receiver(which: str) -> str:
        from pgqueue import current_run
        ctx = current_run()
        if which == "name":
            await ctx.receive("no spaces allowed")
        elif which == "timeout":
            await ctx.receive("note", timeout=-1)
        else:
            message = await ctx.receive("note")
            assert message is not None
            await message.reply("nobody asked")
        return "unreachable"

    try:
        runs = {which: await bad_receiver.enqueue_async(which) for which in ("name", "timeout", "reply")}
        await app.send_async(runs["reply"].id, "note", 1)
        async with running_worker(app, poll_interval=0.05):
            infos = {which: await run.wait(timeout=30) for which, run in runs.items()}
    finally:
        del app.tasks["bad_receiver"]
    assert {w: i.status for w, i in infos.items()} == {"name": "failed", "timeout": "failed", "reply": "failed"}
    assert "message name 'no spaces allowed' is not valid" in infos["name"].error["message"]  # type: ignore[index]
    assert "seconds >= 0, got -1" in infos["timeout"].error["message"]  # type: ignore[index]
    assert "was sent with send(), not update()" in infos["reply"].error["message"]  # type: ignore[index]


async def test_pruning_a_run_deletes_its_messages_wait_and_state(messages: Any, dsn: str) -> None:
    app = messages.app
    run = await messages.inbox.enqueue_async(2)
    await app.send_async(run.id, "note", {"n": 0})
    async with running_worker(app, poll_interval=0.05):
        await wait_for(lambda: status_is(dsn, run.id, "waiting"), what="the run to wait for its 2nd message")
    await app.send_async(run.id, "unread", {})
    assert await asyncio.to_thread(app.cancel, run.id) == "cancelled"
    counts = ("SELECT (SELECT count(*) FROM pgqueue.messages WHERE run_id = %(r)s), "
              "(SELECT count(*) FROM pgqueue.message_waits WHERE run_id = %(r)s), "
              "(SELECT count(*) FROM pgqueue.run_states WHERE run_id = %(r)s)")
    # cancelling ended its wait in a receive; the messages and state stay until pruned
    assert await asyncio.to_thread(rows, dsn, counts, {"r": run.id}) == [(2, 0, 1)]
    await asyncio.to_thread(app.set_retention, 1, task="inbox")
    try:
        await asyncio.to_thread(rows, dsn, "UPDATE pgqueue.runs SET finished_at = now() - interval '1 hour' "
                                           "WHERE id = %s", (run.id,))
        await asyncio.to_thread(app.prune)
    finally:
        await asyncio.to_thread(app.unset_retention, "inbox")
    assert await asyncio.to_thread(rows, dsn, counts, {"r": run.id}) == [(0, 0, 0)]


async def test_the_dashboards_run_page_shows_the_published_state(messages: Any, dsn: str) -> None:
    import html
    import http.client
    import threading

    from pgqueue.dashboard import create_server

    app = messages.app
    sleeper = await messages.naps.enqueue_async(60)
    quiet = await messages.naps.enqueue_async(60)
    server = create_server(dsn, "127.0.0.1", 0, None, app)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def page(run_id: int) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
        conn.request("GET", f"/runs/{run_id}")
        response = conn.getresponse()
        assert response.status == 200
        text = response.read().decode()
        conn.close()
        return text

    try:
        assert 'id="state"' not in await asyncio.to_thread(page, quiet.id)  # nothing published: no section
        async with running_worker(app, poll_interval=0.05):
            await wait_for(lambda: status_is(dsn, sleeper.id, "sleeping"), what="the run to sleep")
        shown = await asyncio.to_thread(page, sleeper.id)
        assert "<h2>State <small>attempt 1," in shown
        state = shown.split('<pre id="state">', 1)[1].split("</pre>", 1)[0]
        assert json.loads(html.unescape(state)) == {"phase": "napping", "for": 60}
        # a state is data, never markup
        await asyncio.to_thread(rows, dsn, "UPDATE pgqueue.run_states SET state = %s::jsonb WHERE run_id = %s",
                                (json.dumps({"note": "<script>alert(1)</script>"}), sleeper.id))
        shown = await asyncio.to_thread(page, sleeper.id)
        assert "<script>alert(1)</script>" not in shown and "&lt;script&gt;" in shown
    finally:
        server.shutdown()
        server.dash.app.close()
        for run in (sleeper, quiet):
            await asyncio.to_thread(app.cancel, run.id)


def test_the_testing_kit_drains_runs_that_receive(messages: Any, dsn: str) -> None:
    from pgqueue.testing import drain

    app = messages.app
    run = messages.inbox.enqueue(2)
    drain(app)
    assert run.status() == "waiting"  # suspended in its receive: nothing due
    for n in range(2):
        app.send(run.id, "note", {"n": n})
    drain(app)
    assert run.result(timeout=5) == [{"n": 0}, {"n": 1}]


# -- the command line ------------------------------------------------------------------------------

async def cli(*args: str, env: dict[str, str]) -> Any:
    return await asyncio.to_thread(pgqueue, *args, env=env)


async def test_send_update_and_state_from_the_command_line(messages: Any, cli_env: dict[str, str]) -> None:
    app = messages.app
    run = await messages.counter.enqueue_async()
    async with running_worker(app, poll_interval=0.05):
        async def ready() -> bool:
            return await app.get_state_async(run.id) == {"total": 0, "phase": "ready"}
        await wait_for(ready, what="the counter to publish its state")
        sent = await cli("runs", "send", str(run.id), "add", "--payload", "5", env=cli_env)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("message ") and f"('add') sent to run {run.id}" in sent.stdout
        updated = await cli("runs", "update", str(run.id), "add", "--payload", "2", "--timeout", "60", env=cli_env)
        assert updated.returncode == 0, updated.stderr
        assert json.loads(updated.stdout) == 7
        shown = await cli("runs", "state", str(run.id), env=cli_env)
        assert shown.returncode == 0 and f"run {run.id} (waiting), state of attempt" in shown.stdout
        assert json.loads(shown.stdout.split(":\n", 1)[1]) == {"total": 7, "phase": "counting"}
        as_json = json.loads((await cli("runs", "state", str(run.id), "--json", env=cli_env)).stdout)
        assert as_json["state"] == {"total": 7, "phase": "counting"} and as_json["status"] == "waiting"
        bye = await cli("runs", "update", str(run.id), "add", "--payload", "0", env=cli_env)
        assert json.loads(bye.stdout) == "bye"
        assert await run.result(timeout=30) == 7


async def test_bad_input_on_the_command_line_is_one_clear_line(messages: Any, cli_env: dict[str, str]) -> None:
    unknown = await cli("runs", "send", "987654321", "note", env=cli_env)
    assert_one_line_error(unknown, "no run with id 987654321")
    assert_one_line_error(await cli("runs", "state", "987654321", env=cli_env), "no run with id 987654321")
    run = await messages.naps.enqueue_async(60)
    none_yet = await cli("runs", "state", str(run.id), env=cli_env)
    assert none_yet.returncode == 0 and "has published no state" in none_yet.stdout
    bad_json = await cli("runs", "send", str(run.id), "note", "--payload", "{oops", env=cli_env)
    assert bad_json.returncode == 2 and "--payload is not valid JSON" in bad_json.stderr
    assert_one_line_error(await cli("runs", "send", str(run.id), "bad name", env=cli_env),
                          "message name 'bad name' is not valid")
    # nobody runs it: the update times out
    assert_one_line_error(await cli("runs", "update", str(run.id), "add", "--timeout", "0.3", env=cli_env),
                          f"run {run.id} did not reply to update 'add'", "within 0.3s")
    await asyncio.to_thread(messages.app.cancel, run.id)
    assert_one_line_error(await cli("runs", "send", str(run.id), "note", env=cli_env),
                          f"run {run.id} is cancelled: a finished run receives no more messages")
