"""Rough edges a new user hits in the first hour: warnings, refusals and messages that say what to do."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import bind, running_worker


@pytest.fixture
def sample(dsn: str) -> Any:
    import sample_app

    bind(sample_app.app, dsn)
    yield sample_app
    bind(sample_app.app, None)


async def test_a_worker_names_the_tasks_whose_queue_it_does_not_serve(
        sample: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pgqueue.worker"):
        async with running_worker(sample.app, queues=["default"]):
            pass
    [warning] = [r.getMessage() for r in caplog.records if "never runs these tasks" in r.getMessage()]
    assert "summarize (queue llm)" in warning  # sample_app declares summarize on queue "llm"
    assert "add (" not in warning              # add is on "default", which this worker serves
    caplog.clear()
    with caplog.at_level("WARNING", logger="pgqueue.worker"):
        async with running_worker(sample.app, queues=["default", "llm"]):
            pass
    assert not [r for r in caplog.records if "never runs these tasks" in r.getMessage()]
