"""pgqueue's metrics in an application's prometheus_client registry, single- and multiprocess.

    pip install 'pgqueue[prometheus]'

One process (the application serves its registry; a worker may run in it):

    PGQUEUE_DSN=... python examples/prometheus_app.py serve 9100    # GET :9100/metrics

Multiprocess mode (gunicorn, uvicorn --workers N, or several worker processes on one host): every
process counts into PROMETHEUS_MULTIPROC_DIR, and the scrape sums them:

    export PROMETHEUS_MULTIPROC_DIR=/tmp/metrics PGQUEUE_DSN=...
    python examples/prometheus_app.py worker &    # as many as you like (burst: stop when idle)
    python examples/prometheus_app.py serve 9100

Without prometheus_client installed, `pgqueue worker --metrics-port` and the dashboard's /metrics
serve the same metrics on their own. See docs/integrations.md.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from pgqueue import PgQueue
from pgqueue.integrations.prometheus import PgQueueCollector, PrometheusMetrics
from pgqueue.worker import Worker, WorkerSettings

queue = PgQueue()

#: one of the application's own metrics, served beside pgqueue's
thumbnails = Counter("app_thumbnails_requested", "Thumbnails the application asked for.")


@queue.task
def make_thumbnail(image_id: int) -> str:
    return f"thumbnail of image {image_id}"


def request_thumbnail(image_id: int) -> int:
    thumbnails.inc()
    return make_thumbnail.enqueue(image_id).id


def application_registry(registry: CollectorRegistry = REGISTRY) -> CollectorRegistry:
    """One process: the database's gauges join the application's registry (once per registry)."""
    registry.register(PgQueueCollector(queue))
    return registry


def scrape_registry(path: str | None = None) -> CollectorRegistry:
    """Multiprocess mode: a registry built for each scrape, from every process's files (the
    application's and the workers' counters) plus the database's gauges, read once."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    registry.register(PgQueueCollector(queue))
    return registry


def run_worker(burst: bool = True, registry: CollectorRegistry = REGISTRY) -> None:
    """A worker whose counts go to prometheus_client (to the multiprocess files when
    PROMETHEUS_MULTIPROC_DIR is set)."""
    worker = Worker(queue, WorkerSettings(burst=burst))
    worker.metrics = PrometheusMetrics(registry)
    asyncio.run(worker.serve())


def serve(port: int) -> None:
    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    # MultiProcessCollector reads the processes' files at each scrape: one registry serves them all
    registry = scrape_registry() if multiprocess else application_registry()
    start_http_server(port, addr="127.0.0.1", registry=registry)
    print(f"metrics on http://127.0.0.1:{port}/metrics ({'multiprocess' if multiprocess else 'one process'})")
    threading.Event().wait()


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "worker":
        run_worker(burst=True)
    elif command == "serve":
        serve(int(sys.argv[2]) if len(sys.argv) > 2 else 9100)
    else:
        sys.exit(f"usage: {sys.argv[0]} serve [PORT] | worker")
