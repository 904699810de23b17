"""`pgqueue runs send / update / state`, driven as a subprocess like a user would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_cli import assert_one_line_error, pgqueue

from conftest import bind, running_worker, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def messages(dsn: str) -> Iterator[Any]:
    import message_app

    message_app.prepare(dsn)
    yield message_app
    bind(message_app.app, None)


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
