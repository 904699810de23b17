"""A pgqueue worker for the Django project: Django is set up before the tasks are imported.

    DJANGO_SETTINGS_MODULE=django_app.settings python -m django_app.worker [--burst]
"""

from __future__ import annotations

import asyncio
import sys

import django


def main(burst: bool = False) -> None:
    django.setup()
    from pgqueue.worker import Worker, WorkerSettings

    from .tasks import queue

    async def serve() -> None:
        try:
            await Worker(queue, WorkerSettings(queues=["receipts"], burst=burst)).serve()
        finally:
            await queue.aclose()

    asyncio.run(serve())


if __name__ == "__main__":
    main(burst="--burst" in sys.argv)
