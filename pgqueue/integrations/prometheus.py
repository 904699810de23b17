"""pgqueue's metrics in `prometheus_client`'s registry (`pip install 'pgqueue[prometheus]'`).

Without this module, a worker serves its metrics on its own endpoint (`--metrics-port`) and the
dashboard on `/metrics`: nothing here is needed for them. With it, an application that already
exposes `prometheus_client` metrics shows pgqueue's beside its own:

- `PgQueueCollector(queue)`: the gauges read from the database at each scrape (runs per queue
  and state, oldest wait, live workers, concurrency and rate-limit state, pruning totals) — the
  same `gauges_op` as the worker's endpoint. Register it once per registry that is scraped.
- `PrometheusMetrics()`: a worker's counters and histograms (runs started and finished, claim
  and run durations, heartbeats) kept in `prometheus_client`'s own Counter and Histogram, for a
  worker started from Python in the application's processes: `worker.metrics = PrometheusMetrics()`.

Multiprocess mode (gunicorn or uvicorn with several workers, `PROMETHEUS_MULTIPROC_DIR` set before
`prometheus_client` is imported): the Counter and Histogram of `PrometheusMetrics` write to the
shared directory like any other, and the scrape handler builds its registry from
`MultiProcessCollector` plus one `PgQueueCollector` (the database's gauges are the same seen from
any process, so they are read once per scrape, not summed).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..database import Database
from ..errors import DatabaseUnavailable
from ..metrics import BUCKETS, DATABASE_COUNTERS, HELP, Labels, Metrics, gauges_op

if TYPE_CHECKING:
    from ..app import PgQueue

log = logging.getLogger("pgqueue.metrics")

#: the gauges `gauges_op` reads from the database, with their label names
DATABASE_GAUGES: dict[str, tuple[str, ...]] = {
    "pgqueue_queue_runs": ("queue", "state"),
    "pgqueue_queue_oldest_wait_seconds": ("queue",),
    "pgqueue_workers_alive": (),
    "pgqueue_concurrency_waiting_runs": ("task",),
    "pgqueue_rate_limit_available_units": ("limit",),
    "pgqueue_rate_limit_held_keys": ("limit",),
    "pgqueue_rate_limit_deferred_runs": ("limit",),
    "pgqueue_pruned_runs_total": (),
    "pgqueue_pruned_events_total": (),
    "pgqueue_usage_total": ("task", "unit"),  # a counter (DATABASE_COUNTERS)
}


class PgQueueCollector(Collector):
    """The database's gauges, read at each scrape (one short read-only round trip per scrape).

    A database that cannot be reached leaves them out of that scrape (logged), so that the
    application's own metrics are still served."""

    def __init__(self, source: PgQueue | Database) -> None:
        self.db = source if isinstance(source, Database) else source.db

    def describe(self) -> Iterable[Metric]:
        # the names, so that registering checks for clashes without a database round trip
        return [_family(name, labels) for name, labels in DATABASE_GAUGES.items()]

    def collect(self) -> Iterator[Metric]:
        try:
            gauges = self.db.execute(gauges_op())
        except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
            log.warning("pgqueue's database gauges left out of this scrape: %s", exc)
            return
        for name, labels in DATABASE_GAUGES.items():
            family = _family(name, labels)
            for series, value in sorted(gauges.get(name, {}).items()):
                family.add_metric([_value(series, label) for label in labels], value)
            yield family


def _family(name: str, labels: tuple[str, ...]) -> GaugeMetricFamily | CounterMetricFamily:
    if name in DATABASE_COUNTERS:
        return CounterMetricFamily(name, HELP[name], labels=labels)
    return GaugeMetricFamily(name, HELP[name], labels=labels)


def _value(series: Labels, label: str) -> str:
    return dict(series).get(label, "")


#: the Counters and Histograms created in each registry: several workers of one process count in
#: the same ones (a registry refuses a second metric of the same name)
_CREATED: weakref.WeakKeyDictionary[CollectorRegistry, tuple[dict[str, Counter], dict[str, Histogram]]] = (
    weakref.WeakKeyDictionary())


class PrometheusMetrics(Metrics):
    """A worker's metrics, also counted in `prometheus_client` Counters and Histograms of
    `registry` (created on first use, with the same names, labels and buckets as the worker's own
    endpoint; shared by every worker of the process that counts in that registry). The worker's
    `--metrics-port` endpoint, if any, keeps serving its own counts too."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__()
        self.registry = registry
        self._counters, self._histograms = _CREATED.setdefault(registry, ({}, {}))

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        super().inc(name, value, **labels)
        counter = self._counters.get(name)
        if counter is None:
            # prometheus_client adds the _total suffix of a counter itself
            counter = self._counters[name] = Counter(name.removesuffix("_total"), HELP.get(name, name),
                                                     sorted(labels), registry=self.registry)
        _child(counter, labels).inc(value)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        super().observe(name, seconds, **labels)
        histogram = self._histograms.get(name)
        if histogram is None:
            histogram = self._histograms[name] = Histogram(name, HELP.get(name, name), sorted(labels),
                                                           registry=self.registry, buckets=BUCKETS)
        _child(histogram, labels).observe(seconds)


def _child(metric: Any, labels: dict[str, str]) -> Any:
    return metric.labels(**labels) if labels else metric
