"""A small app used by the tests (importable as `sample_app:app`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from pgqueue import PgQueue, Retry

app = PgQueue()


class Document(BaseModel):
    doc_id: int
    title: str = Field(default="", max_length=200)


@app.task(queue="llm", priority=5, retry=Retry(max_attempts=5))
async def summarize(doc: Document) -> str:
    return f"summary of {doc.doc_id}"


@app.task(name="add")
def add(a: int, b: int = 1) -> int:
    return a + b
