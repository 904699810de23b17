"""The quick-start example: declare tasks, enqueue them every way, run them, read the results.

Run it with `bash scripts/demo.sh` (which starts a local database), or with PGQUEUE_DSN set.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from pgqueue import PgQueue, Retry
from pgqueue.worker import Worker, WorkerSettings

app = PgQueue()


class Article(BaseModel):
    article_id: int
    text: str


@app.task(queue="llm", retry=Retry(max_attempts=5, initial_delay=2, max_delay=120), timeout=300)
async def summarize(article: Article) -> str:
    """Stands in for an LLM call: the first sentence of the article."""
    return article.text.split(".")[0] + "."


@app.task
def word_count(text: str) -> int:
    return len(text.split())


ARTICLES = [
    Article(article_id=1, text="Postgres is enough. Queues, leases and schedules live in tables."),
    Article(article_id=2, text="Durable work survives deploys. Steps are checkpointed."),
]


def main() -> None:
    app.register_tasks()  # lets plain-SQL enqueues find each task's queue
    one = summarize.enqueue(ARTICLES[0])
    again = summarize.options(idempotency_key="article-1").enqueue(ARTICLES[0])
    same = summarize.options(idempotency_key="article-1").enqueue(ARTICLES[0])
    many = word_count.enqueue_many([{"text": a.text} for a in ARTICLES])
    later = word_count.options(delay=3600, priority=-1).enqueue("tomorrow's text")
    print(f"enqueued run {one.id} (summarize), run {again.id} with an idempotency key "
          f"(repeat returned the same run: {same.id == again.id}), {len(many)} word_count runs in bulk, "
          f"and run {later.id} scheduled an hour from now")
    # In production `pgqueue worker examples.quickstart:app --queues default,llm` runs these;
    # here a worker runs in-process until no due run is left.
    asyncio.run(Worker(app, WorkerSettings(queues=["default", "llm"], burst=True)).serve())
    print(f"summary of article 1: {one.result(timeout=10)!r}")
    print(f"word counts: {[h.result(timeout=10) for h in many]}")
    for handle in [one, *many, later]:
        info = handle.info()
        print(f"  run {info.id:>5}  {info.task:<11} queue={info.queue:<8} status={info.status:<9} "
              f"attempts={info.attempt}  run_at={info.run_at:%H:%M:%S}")
    app.close()


if __name__ == "__main__":
    main()
