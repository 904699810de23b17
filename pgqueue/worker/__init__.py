"""The worker: `Worker(app, WorkerSettings(...)).serve()` claims and executes runs until stopped.

One file per service (claimer, executor, completer, step writer, heartbeat, listener, and the
maintenance services rescuer, expirer and cron firer), on the supervised loop of `service`.
"""

from .settings import WorkerSettings
from .worker import Worker

__all__ = ["Worker", "WorkerSettings"]
