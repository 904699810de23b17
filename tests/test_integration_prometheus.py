"""examples/prometheus_app.py: pgqueue's metrics in an application's prometheus_client registry,
scraped over HTTP; multiprocess mode summing real worker processes; nothing needed without it."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server

from conftest import FAST, ROOT, bind
from pgqueue import PgQueue
from pgqueue.integrations.prometheus import DATABASE_GAUGES, PgQueueCollector, PrometheusMetrics
from pgqueue.metrics import gauges_op
from pgqueue.worker import Worker, WorkerSettings

sys.path.insert(0, str(ROOT / "examples"))

import prometheus_app

pytestmark = pytest.mark.timeout(180)
TASK = 'queue="default",task="make_thumbnail"'


@pytest.fixture
def queue(dsn: str) -> Iterator[PgQueue]:
    bind(prometheus_app.queue, dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:  # each test counts its own runs
        conn.execute("DELETE FROM pgqueue.runs")
    yield prometheus_app.queue
    bind(prometheus_app.queue, None)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


async def test_metrics_join_the_applications_registry(queue: PgQueue) -> None:
    registry = CollectorRegistry()
    requests = Counter("app_requests", "The application's own counter.", registry=registry)
    requests.inc(3)
    prometheus_app.application_registry(registry)
    done = [await prometheus_app.make_thumbnail.enqueue_async(i) for i in range(4)]
    later = await prometheus_app.make_thumbnail.options(delay=3600).enqueue_async(99)
    worker = Worker(queue, WorkerSettings(**{**FAST, "burst": True}))
    worker.metrics = PrometheusMetrics(registry)
    await asyncio.wait_for(worker.serve(), 60)
    for i, handle in enumerate(done):
        assert await handle.result(timeout=10) == f"thumbnail of image {i}"
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        body = await asyncio.to_thread(scrape, server.server_port)
    finally:
        server.shutdown()
        thread.join(10)
    assert "app_requests_total 3.0" in body
    assert f'pgqueue_runs_finished_total{{outcome="succeeded",{TASK}}} 4.0' in body
    assert f"pgqueue_runs_started_total{{{TASK}}} 4.0" in body
    assert f"pgqueue_run_seconds_count{{{TASK}}} 4.0" in body
    assert 'pgqueue_run_seconds_bucket{le="+Inf",' + TASK + "} 4.0" in body
    assert 'pgqueue_queue_runs{queue="default",state="scheduled"} 1.0' in body
    assert "# TYPE pgqueue_workers_alive gauge" in body
    # a second worker of the process counts in the same metrics (a registry refuses a second
    # metric of one name)
    again = PrometheusMetrics(registry)
    again.inc("pgqueue_runs_started_total", task="make_thumbnail", queue="default")
    assert f"pgqueue_runs_started_total{{{TASK}}} 5.0" in generate_latest(registry).decode()
    queue.cancel(later.id)


def test_an_unreachable_database_leaves_only_its_gauges_out(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    Counter("app_requests", "The application's own counter.", registry=registry).inc()
    unreachable = PgQueue("postgresql://pgqueue@127.0.0.1:9/none?connect_timeout=2")
    with caplog.at_level(logging.WARNING, "pgqueue.metrics"):
        registry.register(PgQueueCollector(unreachable))
        assert caplog.text == ""  # registering asked describe(), not the database
        body = generate_latest(registry).decode()
    assert "app_requests_total 1.0" in body and "pgqueue_queue_runs" not in body
    assert "gauges left out of this scrape" in caplog.text


def worker_process(dsn: str, directory: Path) -> None:
    env = {**os.environ, "PGQUEUE_DSN": dsn, "PROMETHEUS_MULTIPROC_DIR": str(directory),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "examples"), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "prometheus_app.py"), "worker"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


async def test_multiprocess_mode_sums_the_processes(queue: PgQueue, dsn: str, tmp_path: Path) -> None:
    # two worker processes one after the other (deterministic counts): 3 runs, then 5 runs
    for count in (3, 5):
        prometheus_app.make_thumbnail.enqueue_many([{"image_id": i} for i in range(count)])
        await asyncio.to_thread(worker_process, dsn, tmp_path)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert len([name for name in files if name.startswith("counter_")]) == 2, files
    body = generate_latest(prometheus_app.scrape_registry(str(tmp_path))).decode()
    assert f'pgqueue_runs_finished_total{{outcome="succeeded",{TASK}}} 8.0' in body
    assert f"pgqueue_run_seconds_count{{{TASK}}} 8.0" in body
    # the database's gauges once, not once per process
    assert body.count("# TYPE pgqueue_workers_alive gauge") == 1


def test_nothing_needs_prometheus_client_without_it(dsn: str) -> None:
    script = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import pgqueue, pgqueue.worker, pgqueue.metrics, pgqueue.dashboard.routes, pgqueue_cli.main\n"
        "from pgqueue.metrics import Metrics\n"
        "m = Metrics(); m.inc('pgqueue_runs_started_total', task='t', queue='q')\n"
        "assert 'pgqueue_runs_started_total{queue=\"q\",task=\"t\"} 1' in m.render({})\n"
        "try:\n    import pgqueue.integrations.prometheus\nexcept ImportError:\n    print('optional')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGQUEUE_DSN": dsn})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "optional"


def test_the_collector_knows_every_database_gauge(queue: PgQueue) -> None:
    """A gauge added to gauges_op without its labels in DATABASE_GAUGES would vanish from scrapes."""
    queue.set_rate_limit("provider", limit=10, per=60)
    prometheus_app.make_thumbnail.enqueue(1)
    gauges = queue.db.execute(gauges_op())
    assert {"pgqueue_queue_runs", "pgqueue_rate_limit_available_units", "pgqueue_workers_alive"} <= set(gauges)
    for name, series in gauges.items():
        assert name in DATABASE_GAUGES, name
        for labels in series:
            assert tuple(key for key, _ in labels) == tuple(sorted(DATABASE_GAUGES[name])), (name, labels)
