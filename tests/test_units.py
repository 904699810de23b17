"""Pure logic, no database: DSN resolution, retry delays, task declarations, input codec."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from pgqueue import Concurrency, ConfigurationError, InvalidInput, PgQueue, RateLimit, Retry, TaskDefinitionError
from pgqueue.codec import parse_json_object
from pgqueue.config import describe_dsn, require_dsn, resolve_dsn


class Doc(BaseModel):
    id: int
    tags: list[str] = []


def test_dsn_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGQUEUE_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert resolve_dsn() is None
    with pytest.raises(ConfigurationError, match="PGQUEUE_DSN"):
        require_dsn()
    monkeypatch.setenv("DATABASE_URL", "postgresql://b@h/db2")
    assert resolve_dsn() == "postgresql://b@h/db2"
    monkeypatch.setenv("PGQUEUE_DSN", "postgresql://a@h/db1")
    assert resolve_dsn() == "postgresql://a@h/db1"
    assert resolve_dsn("postgresql://c@h/db3") == "postgresql://c@h/db3"


def test_describe_dsn_hides_the_password() -> None:
    assert describe_dsn("postgresql://user:secret@db.example:6543/app") == "db.example:6543/app"


def test_retry_delays_grow_are_capped_and_jittered() -> None:
    policy = Retry(max_attempts=10, initial_delay=1, factor=2, max_delay=30, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 30]
    jittered = Retry(initial_delay=10, jitter=0.5)
    assert jittered.delay(1, rand=lambda: 0.0) == 5 and jittered.delay(1, rand=lambda: 1.0) == 15
    never = Retry(max_attempts=3, never_retry=(KeyError,))
    assert never.should_retry(1, ValueError()) and not never.should_retry(1, KeyError())
    assert not never.should_retry(3, ValueError())
    with pytest.raises(TaskDefinitionError):
        Retry(max_attempts=0)


def test_task_declaration_errors() -> None:
    app = PgQueue("postgresql://unused@localhost/x")
    with pytest.raises(TaskDefinitionError, match="not valid"):
        app.task(name="bad name!")(lambda: None)
    with pytest.raises(TaskDefinitionError, match=r"\*args"):
        @app.task
        def variadic(*items: int) -> None: ...
    with pytest.raises(TaskDefinitionError, match=r"concurrency= takes pgqueue.Concurrency"):
        app.task(concurrency=3)(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TaskDefinitionError, match=r"rate_limits= takes a list of pgqueue.RateLimit"):
        app.task(rate_limits=["openai"])(lambda: None)  # type: ignore[list-item]
    with pytest.raises(TaskDefinitionError, match="max_running must be an integer >= 1"):
        Concurrency(key="tenant", max_running=0)
    with pytest.raises(TaskDefinitionError, match="unknown concurrency strategy 'lifo'"):
        Concurrency(key="tenant", strategy="lifo")
    with pytest.raises(TaskDefinitionError, match="must be an input field name or a function"):
        Concurrency(key="")
    with pytest.raises(TaskDefinitionError, match="units must be a positive number"):
        RateLimit("openai", units=0)
    with pytest.raises(TaskDefinitionError, match="limit must be a positive number"):
        app.rate_limit("openai", limit=-1)
    with pytest.raises(TaskDefinitionError, match="timeout must be a positive"):
        @app.task(timeout=0)
        def instant() -> None: ...

    @app.task
    def same() -> None: ...

    def other() -> None: ...
    other.__name__ = "same"
    with pytest.raises(TaskDefinitionError, match="two tasks are named 'same'"):
        app.task(other)


def test_codec_round_trip_and_output_decoding() -> None:
    app = PgQueue("postgresql://unused@localhost/x")

    @app.task
    def index(doc: Doc) -> dict[str, int]:
        return {"n": doc.id}

    text = index.codec.encode_call((Doc(id=3, tags=["a"]),), {})
    args, kwargs = index.codec.decode({"id": 3, "tags": ["a"]})
    assert text == '{"id":3,"tags":["a"]}' and args == (Doc(id=3, tags=["a"]),) and kwargs == {}
    assert index.codec.decode_output({"n": "5"}) == {"n": 5}
    assert index(Doc(id=1)) == {"n": 1}  # a task is still callable directly


def test_parse_json_object_errors() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_json_object("{")
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        parse_json_object("3")
