"""Screenshots of the dashboard for the README, from a demo dataset on a throwaway PostgreSQL.

    .venv/bin/python scripts/screenshots.py            # writes docs/screenshots/*.png (1280x800)

Starts an embedded PostgreSQL in a temporary folder, fills it (an hour of finished runs, failed
runs, a waiting approval, a workflow, a fan-out, cron schedules, limits, a paused queue), runs a
worker, serves the dashboard and photographs each page with headless Chromium.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import dashboard_app  # noqa: E402
from browser import chromium  # noqa: E402
from pgqueue.cron import Schedule  # noqa: E402
from pgqueue.dashboard import create_server  # noqa: E402
from pgqueue.embedded import EmbeddedServer, find_pg_bin  # noqa: E402
from pgqueue.migrations import migrate  # noqa: E402
from pgqueue.worker import Worker, WorkerSettings  # noqa: E402

OUT = ROOT / "docs" / "screenshots"

HISTORY = """
INSERT INTO pgqueue.runs (task, queue, status, created_at, run_at, started_at, finished_at, attempt, error)
SELECT task, queue, status, finished - latency, finished - latency, finished - latency / 2, finished, 1,
       CASE WHEN status = 'failed' THEN '{"type": "ProviderDown", "message": "provider unavailable"}'::jsonb END
  FROM (SELECT (ARRAY['summarize', 'embed_batch', 'flaky'])[1 + i % 3] AS task,
               (ARRAY['default', 'llm'])[1 + i % 2] AS queue,
               CASE WHEN random() < 0.04 THEN 'failed' ELSE 'succeeded' END AS status,
               now() - make_interval(secs => 3600 * power(random(), 1.4)) AS finished,
               make_interval(secs => 0.2 + 3 * random() * random()) AS latency
          FROM generate_series(1, 4000) AS i) AS h
"""

LIMITS = """
INSERT INTO pgqueue.concurrency_limits (name, key, max_running) VALUES ('summarize', '*', 5), ('summarize', 'acme', 20);
INSERT INTO pgqueue.rate_limits (name, key, capacity, refill_per_s, tokens, held_until)
VALUES ('openai', '', 3000, 50, 3000, NULL), ('openai', 'gpt', 3000, 50, 1240, NULL),
       ('openai', 'embeddings', 1000, 16.6, 12, now() + interval '20 seconds');
"""


def fill(dsn: str) -> dict[str, int]:
    app = dashboard_app.app
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(HISTORY)
        conn.execute(LIMITS)
    app.register_tasks()
    failed = [dashboard_app.flaky.enqueue(n).id for n in range(3)]
    waiting = dashboard_app.publish.enqueue(42).id
    summaries = [dashboard_app.summarize.options(tags=["nightly"], metadata={"tenant": "acme"}).enqueue(n).id
                 for n in range(4)]
    workflow = dashboard_app.ingest.enqueue(7).id
    fan_out = dashboard_app.embed_corpus.enqueue(120).id
    for i in range(6):
        dashboard_app.summarize.options(queue="llm").enqueue(100 + i)
    dashboard_app.summarize.options(delay=1800).enqueue(999)
    app.pause_queue("llm")
    app.cron_add(Schedule("nightly-embeddings", "0 2 * * *", "embed_corpus", {"size": 1000}, "Europe/Paris"))
    app.cron_add(Schedule("poll-inbox", "*/10 * * * *", "summarize", {"doc_id": 1}))
    app.cron_add(Schedule("weekly-report", "0 8 * * MON", "flaky", {"n": 1}))
    app.cron_pause("weekly-report")
    return {"failed": failed[0], "waiting": waiting, "steps": summaries[0], "workflow": workflow, "fan-out": fan_out}


def run_worker(stop: threading.Event) -> None:
    async def main() -> None:
        worker = Worker(dashboard_app.app, WorkerSettings(queues=["default"], concurrency=8, poll_interval=0.2,
                                                          name="worker-a"))
        task = asyncio.create_task(worker.serve())
        while not stop.is_set():
            await asyncio.sleep(0.1)
        worker.request_stop()
        await task
    asyncio.run(main())


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pgqueue-shots-") as folder:
        embedded = EmbeddedServer(Path(folder) / "pg", find_pg_bin())
        dsn = embedded.ensure_running()
        try:
            migrate(dsn)
            dashboard_app.app.db.use_dsn(dsn)
            dashboard_app.BEHAVIOUR["step_seconds"] = 0.15
            ids = fill(dsn)
            stop = threading.Event()
            worker = threading.Thread(target=run_worker, args=(stop,))
            worker.start()
            server = create_server(dsn, "127.0.0.1", 0, None, dashboard_app.app)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            base = f"http://127.0.0.1:{server.server_port}"
            time.sleep(6)  # the worker runs the demo: failures, the wait, the workflow, the fan-out
            with chromium() as browser:
                pages = [("overview", "/"), ("runs", "/runs"), *((f"run-{k}", f"/runs/{v}") for k, v in ids.items()),
                         ("workers", "/workers"), ("cron", "/cron"), ("limits", "/limits")]
                for name, path in pages:
                    browser.get(base + path)
                    time.sleep(0.3)
                    browser.save_screenshot(str(OUT / f"{name}.png"))
                    print(f"docs/screenshots/{name}.png  {path}")
            server.shutdown()
            stop.set()
            worker.join(30)
            dashboard_app.app.close()
        finally:
            embedded.destroy()


if __name__ == "__main__":
    main()
