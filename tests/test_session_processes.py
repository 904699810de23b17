"""Keyed sessions across a worker SIGKILL mid-turn: real `pgqueue worker` processes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import bind
from processes import FAST, Workers, sql, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def session_app(dsn: str) -> Iterator[Any]:
    import session_app

    bind(session_app.app, dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(session_app.EFFECTS_DDL)
        conn.execute("TRUNCATE session_effects")
    yield session_app
    bind(session_app.app, None)


@pytest.fixture
def workers(dsn: str, session_app: Any, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(dsn, tmp_path, app="session_app:app")
    yield group
    group.stop_all()


def test_a_worker_killed_mid_turn_loses_no_state_and_applies_nothing_twice(
        session_app: Any, workers: Workers, dsn: str) -> None:
    app = session_app.app
    app.register_tasks()  # so that the turns can be enqueued before any worker started
    turns = [session_app.chat_turn.enqueue(user_id="ada", text=text, hold=text == "slow")
             for text in ("hello", "slow", "after")]
    others = [session_app.chat_turn.enqueue(user_id=f"user{i}", text="hi") for i in range(5)]
    victim = workers.start("--concurrency", "4", *FAST)
    # the held turn has saved its state after its step: kill its worker there
    wait_until(lambda: "reply to slow" in app.get_session_state("chat", "ada").get("history", []),
               what="the held turn's step and state")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    held = app.get_session_state("chat", "ada")
    assert held == {"history": ["hello", "reply to hello", "slow", "reply to slow"], "turns": 2}
    workers.start("--concurrency", "4", *FAST)
    assert [t.result(timeout=120) for t in turns] == [1, 2, 3]
    assert [t.result(timeout=60) for t in others] == [1] * 5

    # the retried turn replayed from the state its invocation started with: nothing twice
    assert app.get_session_state("chat", "ada") == {
        "history": ["hello", "reply to hello", "slow", "reply to slow", "after", "reply to after"], "turns": 3}
    # the step's effect (checkpointed before the kill) happened once per turn
    effects = sql(dsn, "SELECT text, count(*) FROM session_effects WHERE key = 'ada' AND text NOT LIKE 'start %' "
                       "GROUP BY 1 ORDER BY 1")
    assert sorted(effects) == [("after", 1), ("hello", 1), ("slow", 1)]
    # the turns' code ran one at a time, in arrival order; the killed attempt never ended, and
    # the next turn started only after its retry had ended
    spans = sql(dsn, "SELECT text, attempt, started, ended FROM session_effects "
                     "WHERE key = 'ada' AND text LIKE 'start %' ORDER BY started")
    assert [(t, a) for t, a, _, _ in spans] == [("start hello", 1), ("start slow", 1), ("start slow", 2),
                                                ("start after", 1)]
    assert spans[1][3] is None
    assert spans[0][3] <= spans[1][2] and spans[2][3] <= spans[3][2]
