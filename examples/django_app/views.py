from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from pgqueue.integrations.django import psycopg_connection

from .models import Order
from .tasks import send_receipt


class OrderRefused(Exception):
    pass


@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """The order and its receipt's run commit together, on Django's own connection."""
    try:
        with transaction.atomic():
            order = Order.objects.create(item=request.POST["item"])
            run = send_receipt.options(connection=psycopg_connection()).enqueue(order.id)
            if request.POST.get("fail_after_enqueue"):
                raise OrderRefused("refused after the enqueue: the order and its run are rolled back")
    except OrderRefused as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse({"order": order.id, "run": run.id}, status=201)


@require_POST
def place_order_on_commit(request: HttpRequest) -> JsonResponse:
    """The alternative: enqueue once Django has committed (through pgqueue's own pool). Nothing is
    enqueued if the block rolls back, but a crash between the commit and the enqueue loses the run."""
    try:
        with transaction.atomic():
            order = Order.objects.create(item=request.POST["item"])
            transaction.on_commit(lambda: send_receipt.enqueue(order.id))
            if request.POST.get("fail_after_enqueue"):
                raise OrderRefused("refused: the order is rolled back and nothing is enqueued")
    except OrderRefused as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse({"order": order.id}, status=201)
