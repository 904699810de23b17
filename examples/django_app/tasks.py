"""The project's tasks. A worker imports this module after `django.setup()` (see worker.py)."""

from __future__ import annotations

from django.db import close_old_connections

from pgqueue import PgQueue

queue = PgQueue()  # its DSN is set from Django's settings when the app is ready (apps.py)


@queue.task(queue="receipts")
def send_receipt(order_id: int) -> str:
    from .models import Order

    # a worker thread is not a request: drop Django connections that are stale or too old, as
    # Django does around each request
    close_old_connections()
    try:
        updated = Order.objects.filter(id=order_id).update(receipt_sent=True)
    finally:
        close_old_connections()
    return f"receipt for order {order_id}" if updated else f"order {order_id} is gone"
