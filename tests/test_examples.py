"""The examples users copy run end to end."""

from __future__ import annotations

import sys
from typing import Any

import psycopg
import pytest

from conftest import ROOT, bind, running_worker

sys.path.insert(0, str(ROOT / "examples"))

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def nightly(dsn: str) -> Any:
    import nightly_embeddings

    bind(nightly_embeddings.app, dsn)
    nightly_embeddings.create_schema(dsn)
    yield nightly_embeddings
    bind(nightly_embeddings.app, None)


def embeddings(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT doc_id) FROM document_embeddings").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_nightly_embeddings_end_to_end_and_idempotent(nightly: Any, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO documents (body) SELECT 'doc ' || i || ' on agents and queues'"
                     " FROM generate_series(1, 250) AS i")
    first = await nightly.nightly_embeddings.enqueue_async(100)
    async with running_worker(nightly.app, concurrency=8, poll_interval=0.05):
        assert await first.result(timeout=60) == 250
        assert embeddings(dsn) == (250, 250)
        # a retried batch (the same documents again) stores nothing twice
        with psycopg.connect(dsn) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM documents ORDER BY id LIMIT 100")]
        again = await nightly.embed_batch.enqueue_async(ids)
        assert await again.result(timeout=30) == 0
        # the next night only embeds what was added since
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO documents (body) VALUES ('a new document'), ('another one')")
        second = await nightly.nightly_embeddings.enqueue_async(100)
        assert await second.result(timeout=60) == 2
    assert embeddings(dsn) == (252, 252)
    vector = nightly.fallback_embedding("postgres queues")
    assert len(vector) == 384 and abs(sum(v * v for v in vector) - 1) < 1e-9
    assert nightly.fallback_embedding("postgres queues") == vector  # deterministic
    assert "nightly-embeddings" in nightly.app.schedules
