"""Durable tasks for the tests; side effects are counted in the `effects` table."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel

from pgqueue import PgQueue, Retry, current_run

app = PgQueue()

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS effects (run_id bigint, what text, pid int, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS stored (run_id bigint PRIMARY KEY, summary text);
"""

# knobs the tests turn
BEHAVIOUR: dict[str, Any] = {"store_fails": False, "renamed_step": False}


def effect(what: str) -> None:
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO effects (run_id, what, pid) VALUES (%s, %s, %s)",
                     (current_run().run_id, what, os.getpid()))


def count_effect_calls(what: str) -> int:
    """How many times `what` ran for the current run (to simulate a provider failing twice)."""
    with psycopg.connect(app.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM effects WHERE run_id = %s AND what = %s",
                           (current_run().run_id, what)).fetchone()
    return int(row[0]) if row else 0


class RateLimited(Exception):
    pass


class Chunks(BaseModel):
    parts: list[str]


class Document(BaseModel):
    text: str
    llm_failures: int = 0
    llm_seconds: float = 0.0


def parse(text: str) -> str:
    effect("parse")
    return text.strip()


def chunk(text: str) -> Chunks:
    effect("chunk")
    return Chunks(parts=text.split(". "))


async def llm(chunks: Chunks, failures: int, seconds: float) -> str:
    calls = count_effect_calls("llm")
    effect("llm")
    if seconds:
        await asyncio.sleep(seconds)
    if calls < failures:
        raise RateLimited("429 Too Many Requests")
    return " / ".join(p[:10] for p in chunks.parts)


async def store(conn: psycopg.AsyncConnection[Any], summary: str) -> int:
    if BEHAVIOUR["store_fails"]:
        raise RuntimeError("the store is down")
    await conn.execute("INSERT INTO stored (run_id, summary) VALUES (%s, %s)", (current_run().run_id, summary))
    effect("store")
    return len(summary)


@app.task(retry=Retry(max_attempts=1))
async def pipeline(doc: Document) -> int:
    ctx = current_run()
    text = await ctx.step("parse", parse, doc.text)
    chunks = await ctx.step("chunk", chunk, text)
    summary = await ctx.step("llm", llm, chunks, doc.llm_failures, doc.llm_seconds,
                             retry=Retry(max_attempts=5, initial_delay=0.1, jitter=0, never_retry=(ValueError,)))
    return await ctx.step_in_transaction("store", store, summary)


@app.task
def sync_pipeline(n: int) -> int:
    ctx = current_run()
    doubled = ctx.step_sync("double", lambda x: (effect("double"), x * 2)[1], n)
    ctx.sleep_sync(0.3)
    return ctx.step_sync("add", lambda x: (effect("add"), x + 1)[1], doubled)


@app.task
async def approval(doc_id: int, timeout: float = 60) -> dict[str, Any]:
    ctx = current_run()
    await ctx.step("draft", lambda: effect("draft"))
    decision = await ctx.wait_for_event("approval", key=f"doc-{doc_id}", timeout=timeout,
                                        default={"approved": False, "reason": "timed out"})
    await ctx.step("publish", lambda: effect("publish"))
    return dict(decision)


@app.task
async def sleeper(seconds: float) -> float:
    ctx = current_run()
    started = await ctx.step("before", lambda: (effect("before"), time.time())[1])
    await ctx.sleep(seconds)
    await ctx.step("after", lambda: effect("after"))
    return started


@app.task
async def alarm(when: str) -> None:
    """Sleeps until `when` (an ISO timestamp)."""
    await current_run().sleep_until(datetime.fromisoformat(when))
    await current_run().step("rang", lambda: effect("rang"))


@app.task
async def mailbox(key: str, waits: int) -> list[Any]:
    """Waits `waits` times on one (name, key): each wait takes the next event of this run."""
    ctx = current_run()
    taken = []
    for i in range(waits):
        taken.append(await ctx.wait_for_event("note", key=key))
        await ctx.step("took", lambda i=i: effect(f"took {i}"))
    return taken


@app.task(retry=Retry(max_attempts=1))
async def evolving() -> str:
    ctx = current_run()
    await ctx.step("first", lambda: "one")
    if BEHAVIOUR["renamed_step"]:
        await ctx.step("second_v2", lambda: "two")
    else:
        await ctx.step("second", lambda: "two")
        raise RuntimeError("fail after two steps")
    return "done"


@app.task
async def loops(n: int) -> list[int]:
    ctx = current_run()
    return [await ctx.step("square", lambda i=i: i * i) for i in range(n)]


@app.task(retry=Retry(max_attempts=1))
async def big_output() -> None:
    await current_run().step("huge", lambda: "x" * 2_000_000)


@app.task(on_event="document.uploaded")
async def on_upload(doc_id: int, name: str = "") -> int:
    effect(f"uploaded {doc_id}")
    return doc_id


@app.task
async def embed_chunk(i: int) -> int:
    if i < 0:
        raise ValueError("negative chunk")
    return i * 2


@app.task
async def fan_out(n: int, chunk: int = 1000, child_seconds: float = 0.0) -> int:
    ctx = current_run()
    ids: list[int] = []
    for start in range(0, n, chunk):
        ids += await ctx.spawn(embed_chunk, [{"i": i} for i in range(start, min(n, start + chunk))])
    if child_seconds:
        ids += await ctx.spawn(nap, [{"seconds": child_seconds}])
    results = await ctx.gather(ids)
    await ctx.step("total", lambda: effect("total"))
    return sum(r for r in results if isinstance(r, int))


@app.task
async def chatty(n: int) -> int:
    """Logs a line (kept with its attempt) and returns."""
    logging.getLogger("chatty").warning("chatty says %d", n)
    return n


@app.task
async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


# -- a DAG workflow: fetch -> (embed, summarize) -> store ------------------------------------


class DocRef(BaseModel):
    doc_id: int
    fail_at: str = ""


@app.task
async def ingest_failed(workflow_run: int, errors: dict[str, Any]) -> None:
    effect(f"on_failure of {workflow_run}: {sorted(errors)}")


ingest = app.workflow("ingest", on_failure=ingest_failed)


@ingest.node()
async def fetch(ref: DocRef) -> dict[str, Any]:
    effect("fetch")
    return {"doc_id": ref.doc_id, "text": f"text of {ref.doc_id}", "fail_at": ref.fail_at}


@ingest.node(parents=[fetch], retry=Retry(max_attempts=1))
async def embed(fetch: dict[str, Any]) -> list[float]:
    await asyncio.sleep(0.5)
    if fetch["fail_at"] == "embed":
        raise ValueError("embedding model unavailable")
    return [float(len(fetch["text"])), 1.0]


@ingest.node(parents=[fetch])
async def summarize(fetch: dict[str, Any]) -> str:
    await asyncio.sleep(0.5 if fetch["fail_at"] != "embed" else 5)
    return fetch["text"].upper()


@ingest.node(parents=[embed, summarize], name="store")
async def store_node(embed: list[float], summarize: str) -> dict[str, Any]:
    effect("store")
    return {"vector": embed, "summary": summarize}
