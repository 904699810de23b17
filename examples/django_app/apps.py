from __future__ import annotations

from django.apps import AppConfig

from pgqueue.integrations.django import dsn_from_settings


class ShopConfig(AppConfig):
    name = "django_app"
    label = "shop"

    def ready(self) -> None:
        from .tasks import queue

        # pgqueue's DSN from Django's settings; the pools open on first use
        queue.db.use_dsn(dsn_from_settings())
