"""`pgqueue worker MODULE:ATTR`: run the tasks of an app."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import click

from pgqueue.errors import ConfigurationError
from pgqueue.placement import parse_labels
from pgqueue.worker import Worker, WorkerSettings

from .common import dsn_option, friendly_errors
from .loading import load_app


def _queues(value: str) -> list[str]:
    queues = [q.strip() for q in value.split(",") if q.strip()]
    if not queues:
        raise click.BadParameter("give at least one queue name, e.g. --queues default,llm")
    return queues


def _labels(given: tuple[str, ...]) -> dict[str, str]:
    items = list(given) or [x.strip() for x in os.environ.get("PGQUEUE_WORKER_LABELS", "").split(",") if x.strip()]
    try:
        return parse_labels(items)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--label") from None


@click.command("worker")
@click.argument("app_path", metavar="MODULE:ATTR")
@dsn_option
@click.option("--queues", "-q", default="default", envvar="PGQUEUE_QUEUES", show_envvar=True, show_default=True,
              help="Comma-separated queues to serve.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=10, envvar="PGQUEUE_CONCURRENCY",
              show_envvar=True, show_default=True, help="Runs executed at once.")
@click.option("--batch-size", type=click.IntRange(min=0), default=0, envvar="PGQUEUE_BATCH_SIZE",
              show_envvar=True, help="Most runs claimed per round trip (0: all free slots).")
@click.option("--prefetch", type=click.IntRange(min=0), default=None, envvar="PGQUEUE_PREFETCH", show_envvar=True,
              help="Most claimed runs kept in hand ahead of free slots, fewer when runs are slow "
                   "(default: the concurrency, at least 50 and at most 100; 0: off).")
@click.option("--name", default=None, envvar="PGQUEUE_WORKER_NAME", show_envvar=True,
              help="Worker name (default host-pid).")
@click.option("--lease", type=click.FloatRange(min=0.5), default=30.0, envvar="PGQUEUE_LEASE", show_envvar=True,
              show_default=True, help="Seconds a run stays leased without a heartbeat.")
@click.option("--heartbeat", type=click.FloatRange(min=0.1), default=5.0, envvar="PGQUEUE_HEARTBEAT",
              show_envvar=True, show_default=True, help="Seconds between heartbeats.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=1.0, envvar="PGQUEUE_POLL_INTERVAL",
              show_envvar=True, show_default=True, help="Seconds between claims when idle without notification.")
@click.option("--grace-period", type=click.FloatRange(min=0), default=30.0, envvar="PGQUEUE_GRACE_PERIOD",
              show_envvar=True, show_default=True, help="Seconds running runs get to finish on shutdown.")
@click.option("--max-recoveries", type=click.IntRange(min=0), default=3, envvar="PGQUEUE_MAX_RECOVERIES",
              show_envvar=True, show_default=True, help="Crash recoveries before a run is marked dead.")
@click.option("--max-interruptions", type=click.IntRange(min=0), default=10, envvar="PGQUEUE_MAX_INTERRUPTIONS",
              show_envvar=True, show_default=True,
              help="Attempts cut off by database failures before a run fails (not counted as failures).")
@click.option("--burst", is_flag=True, help="Exit when no due run is left.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, envvar="PGQUEUE_METRICS_PORT",
              show_envvar=True, help="Serve Prometheus metrics on this port (off by default).")
@click.option("--metrics-host", default="127.0.0.1", envvar="PGQUEUE_METRICS_HOST", show_envvar=True,
              show_default=True, help="Address of the metrics endpoint; other than loopback needs a token.")
@click.option("--metrics-token", default=None, envvar="PGQUEUE_METRICS_TOKEN", show_envvar=True,
              help="Bearer token the metrics endpoint requires.")
@click.option("--prune-interval", type=click.FloatRange(min=0), default=60.0, envvar="PGQUEUE_PRUNE_INTERVAL",
              show_envvar=True, show_default=True,
              help="Seconds between pruning passes (finished runs past their retention); 0: off.")
@click.option("--label", "labels", multiple=True, metavar="NAME=VALUE",
              help="A label of this worker, e.g. --label gpu=a100 (repeatable; PGQUEUE_WORKER_LABELS: "
                   "comma-separated). Tasks with required_labels= run only on workers that have them.")
@click.option("--version", "version", default=None, envvar="PGQUEUE_WORKER_VERSION", show_envvar=True,
              help="The code version this worker runs; runs of tasks with pin_version=True stay on the "
                   "version that started them.")
@click.option("--log-level", default="INFO", envvar="PGQUEUE_LOG_LEVEL", show_envvar=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@friendly_errors
def worker_cmd(app_path: str, dsn: str | None, queues: str, concurrency: int, batch_size: int,
               prefetch: int | None, name: str | None,
               lease: float, heartbeat: float, poll_interval: float, grace_period: float, max_recoveries: int,
               max_interruptions: int, burst: bool, metrics_port: int | None, metrics_host: str,
               metrics_token: str | None, prune_interval: float, labels: tuple[str, ...], version: str | None,
               log_level: str) -> None:
    """Run the tasks of the PgQueue app at MODULE:ATTR (like `uvicorn module:app`).

    SIGTERM or SIGINT stops claiming, lets running runs finish within the grace period, hands
    the rest back to the queue and exits 0; a second signal exits at once.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_path)
    if dsn:
        app.db.use_dsn(dsn)
    settings = WorkerSettings(queues=_queues(queues), concurrency=concurrency, batch_size=batch_size,
                              prefetch=prefetch,
                              lease=lease, heartbeat=heartbeat, poll_interval=poll_interval,
                              grace_period=grace_period, max_recoveries=max_recoveries,
                              max_interruptions=max_interruptions, burst=burst,
                              metrics_port=metrics_port, metrics_host=metrics_host, metrics_token=metrics_token,
                              prune_interval=prune_interval, labels=_labels(labels), version=version)
    if name:
        settings.name = name
    asyncio.run(_serve(Worker(app, settings)))


async def _serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    signals = [0]
    exiting: list[asyncio.Task[None]] = []  # a reference, so the forced exit is not collected
    log = logging.getLogger("pgqueue.worker")

    def on_signal(signum: int) -> None:
        signals[0] += 1
        if signals[0] == 1:
            log.info("%s received: finishing running runs (up to %gs); press Ctrl-C again (or send the "
                     "signal again) to exit at once", signal.Signals(signum).name, worker.settings.grace_period)
            worker.request_stop()
        elif signals[0] == 2:
            log.warning("second signal: exiting now, handing running runs back to the queue "
                        "(a third signal exits without waiting)")
            exiting.append(loop.create_task(_forced_exit(worker)))
        else:
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except NotImplementedError:  # Windows' event loops have no add_signal_handler
            signal.signal(signum, lambda number, _frame: loop.call_soon_threadsafe(on_signal, number))
    try:
        await worker.serve()
    finally:
        # the app's pools too (task code's), before asyncio.run cancels what is left: a
        # psycopg_pool maintenance task cancelled while it reconnects (after a server restart)
        # swallows the cancellation and waits for more work, and the process never exits
        await worker.app.aclose()


async def _forced_exit(worker: Worker) -> None:
    await worker.abandon()
    logging.shutdown()
    os._exit(1)
