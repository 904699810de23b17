"""Tasks for the dashboard's tests and screenshots: a run that fails until fixed, an approval wait,
a workflow, a fan-out with steps."""

from __future__ import annotations

import asyncio
from typing import Any

from pgqueue import PgQueue, Retry, current_run

app = PgQueue()

# knobs the tests turn
BEHAVIOUR: dict[str, Any] = {"flaky_fixed": False, "step_seconds": 0.0}


class ProviderDown(Exception):
    pass


@app.task(retry=Retry(max_attempts=1))
def flaky(n: int) -> int:
    current_run().logger.warning("calling the provider for %d", n)
    if not BEHAVIOUR["flaky_fixed"]:
        raise ProviderDown(f"provider unavailable for input {n}")
    return n * 2


def write_draft(doc_id: int) -> str:
    return f"draft of document {doc_id}"


@app.task
async def publish(doc_id: int) -> dict[str, Any]:
    ctx = current_run()
    draft = await ctx.step("draft", write_draft, doc_id)
    decision = await ctx.wait_for_event("approval", key=f"doc-{doc_id}", timeout=3600, default={"approved": False})
    return {"draft": draft, "approved": bool(decision.get("approved"))}


async def pause(what: str) -> str:
    await asyncio.sleep(BEHAVIOUR["step_seconds"])
    return what


@app.task
async def summarize(doc_id: int) -> str:
    ctx = current_run()
    ctx.logger.info("summarizing document %d", doc_id)
    text = await ctx.step("parse", pause, f"text {doc_id}")
    chunks = await ctx.step("chunk", pause, text)
    summary = await ctx.step("llm", pause, chunks)
    return await ctx.step("store", pause, summary)


@app.task
async def embed_batch(doc_ids: list[int]) -> int:
    return len(doc_ids)


@app.task
async def embed_corpus(size: int) -> int:
    ctx = current_run()
    batches = [{"doc_ids": list(range(i, min(i + 10, size)))} for i in range(0, size, 10)]
    children = await ctx.spawn(embed_batch, batches)
    return sum(await ctx.gather(children))


ingest = app.workflow("ingest")


@ingest.node()
async def fetch(doc_id: int) -> str:
    return await pause(f"document {doc_id}")


@ingest.node(parents=[fetch])
async def embed(fetch: str) -> int:
    return len(await pause(fetch))


@ingest.node(parents=[fetch])
async def outline(fetch: str) -> str:
    return await pause(fetch.upper())


@ingest.node(parents=[embed, outline])
async def store(embed: int, outline: str) -> str:
    return f"{outline}:{embed}"
