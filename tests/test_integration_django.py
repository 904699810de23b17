"""examples/django_app: enqueue inside `transaction.atomic()` on Django's own connection (psycopg 3
backend), `transaction.on_commit` as the alternative, pgqueue's DSN from Django's settings, and
the project's worker running the receipts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from conftest import ROOT
from pgqueue import ConfigurationError

sys.path.insert(0, str(ROOT / "examples"))

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def project(dsn: str) -> Iterator[Any]:
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_app.settings"
    os.environ["DJANGO_DATABASE_DSN"] = dsn
    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    from django_app import tasks

    yield tasks
    connections.close_all()
    tasks.queue.close()
    for name in ("DJANGO_SETTINGS_MODULE", "DJANGO_DATABASE_DSN"):
        os.environ.pop(name, None)


def count(dsn: str, query: str, *params: Any) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


def runs_of(dsn: str, order_id: int) -> int:
    return count(dsn, "SELECT count(*) FROM pgqueue.runs WHERE task = 'send_receipt'"
                      " AND (input->>'order_id')::int = %s", order_id)


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_pgqueue_takes_its_dsn_from_djangos_settings(project: Any, dsn: str) -> None:
    from django.test import override_settings

    from pgqueue.integrations.django import dsn_from_settings

    assert conninfo_to_dict(project.queue.dsn)["dbname"] == conninfo_to_dict(dsn)["dbname"]
    with override_settings(PGQUEUE_DSN="postgresql://elsewhere/queue"):
        assert dsn_from_settings() == "postgresql://elsewhere/queue"
    sqlite = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.db"}}
    with override_settings(DATABASES=sqlite), pytest.raises(ConfigurationError, match="PostgreSQL only"):
        dsn_from_settings()
    with pytest.raises(ConfigurationError, match="has no 'replica'"):
        dsn_from_settings("replica")


def test_enqueue_inside_atomic_commits_and_rolls_back_with_the_order(project: Any, dsn: str) -> None:
    from django.test import Client

    from django_app.models import Order

    client = Client()
    placed = client.post("/orders", {"item": "teapot"})
    assert placed.status_code == 201, placed.content
    order, run = placed.json()["order"], placed.json()["run"]
    assert Order.objects.filter(id=order).exists()
    assert count(dsn, "SELECT count(*) FROM pgqueue.runs WHERE id = %s AND queue = 'receipts' AND status = 'queued'",
                 run) == 1

    orders, runs = Order.objects.count(), count(dsn, "SELECT count(*) FROM pgqueue.runs")
    refused = client.post("/orders", {"item": "kettle", "fail_after_enqueue": "1"})
    assert refused.status_code == 409
    assert Order.objects.count() == orders
    assert count(dsn, "SELECT count(*) FROM pgqueue.runs") == runs


def test_a_rolled_back_savepoint_takes_its_run_with_it(project: Any, dsn: str) -> None:
    from django.db import transaction

    from django_app.models import Order
    from pgqueue.integrations.django import psycopg_connection

    with transaction.atomic():
        kept = Order.objects.create(item="kept")
        project.send_receipt.options(connection=psycopg_connection()).enqueue(kept.id)
        with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint
            dropped = Order.objects.create(item="dropped")
            project.send_receipt.options(connection=psycopg_connection()).enqueue_many([{"order_id": dropped.id}])
            raise RuntimeError("inner block fails")
    assert runs_of(dsn, kept.id) == 1 and runs_of(dsn, dropped.id) == 0
    with transaction.atomic():
        # a bulk enqueue as the block's first statement: part of the block (it used to commit alone)
        project.send_receipt.options(connection=psycopg_connection()).enqueue_many([{"order_id": 987654321}] * 2)
        transaction.set_rollback(True)
    assert runs_of(dsn, 987654321) == 0


def test_on_commit_enqueues_after_the_commit_only(project: Any, dsn: str) -> None:
    from django.test import Client

    client = Client()
    placed = client.post("/orders/on-commit", {"item": "cup"})
    assert placed.status_code == 201, placed.content
    assert runs_of(dsn, placed.json()["order"]) == 1
    runs = count(dsn, "SELECT count(*) FROM pgqueue.runs")
    assert client.post("/orders/on-commit", {"item": "saucer", "fail_after_enqueue": "1"}).status_code == 409
    assert count(dsn, "SELECT count(*) FROM pgqueue.runs") == runs


def test_the_projects_worker_sends_the_receipts(project: Any, dsn: str) -> None:
    from django_app.models import Order

    pending = list(Order.objects.filter(receipt_sent=False).values_list("id", flat=True))
    assert pending
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples"), "DJANGO_SETTINGS_MODULE": "django_app.settings",
           "DJANGO_DATABASE_DSN": dsn}
    done = subprocess.run([sys.executable, "-m", "django_app.worker", "--burst"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not Order.objects.filter(id__in=pending, receipt_sent=False).exists()
    assert count(dsn, "SELECT count(*) FROM pgqueue.runs WHERE task = 'send_receipt' AND status <> 'succeeded'") == 0
