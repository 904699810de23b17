"""The web dashboard (`pgqueue dashboard`), an optional extra: `pip install 'pgqueue[dashboard]'`.

Nothing here imports the extra's packages until the dashboard is started, so the core library and
the CLI work without them.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..app import PgQueue
    from .asgi import Authorize, DashboardASGI
    from .server import DashboardServer

log = logging.getLogger("pgqueue.dashboard")


def require_extra() -> None:
    if importlib.util.find_spec("jinja2") is None:
        raise ConfigurationError("the dashboard needs its extra: pip install 'pgqueue[dashboard]'")


def create_server(dsn: str | None = None, host: str = "127.0.0.1", port: int = 8088, token: str | None = None,
                  app: Any = None, *, secure_cookie: bool = False, timeout: float | None = None) -> DashboardServer:
    """A dashboard server bound to (host, port), not yet serving (call `serve_forever()`).

    `app`: your PgQueue, optional: with it, workflow graphs come from the code and show nodes that
    have not started yet. A non-loopback host without a token is refused. `secure_cookie`: mark
    the login cookie Secure (serve it behind TLS). `timeout`: seconds a client may take to send a
    request (default server.REQUEST_TIMEOUT)."""
    require_extra()
    from ..app import PgQueue
    from .auth import Auth, check_dashboard_binding
    from .pages import Dashboard
    from .server import REQUEST_TIMEOUT, make_server

    check_dashboard_binding(host, token)
    queue = PgQueue(dsn or (app.dsn if app is not None else None), pool_size=8)
    queue.db.pool()  # a wrong DSN or a missing schema ends here with a clear error, not on the first page
    dash = Dashboard(queue, Auth(token, secure_cookie), workflow_graphs(app))
    return make_server(dash, host, port, REQUEST_TIMEOUT if timeout is None else timeout)


def create_asgi_app(app: PgQueue, *, authorize: Authorize | None = None, token: str | None = None,
                    secret: str | None = None, secure_cookie: bool = False, threads: int = 4) -> DashboardASGI:
    """The dashboard as an ASGI application, e.g. `fastapi_app.mount("/pgqueue", create_asgi_app(queue, ...))`.

    It reads through `app`'s pools (open and close them in your application's lifespan). Who may
    use it, one of (a dashboard without either is refused: behind a reverse proxy, every request
    can look local):

    - `authorize`: your application's own check, called with each request's ASGI scope before
      anything else; False answers 403, and an exception it raises (FastAPI's `HTTPException`)
      is your framework's to answer. The dashboard then asks no token of its own.
    - `token`: the dashboard's own token, as `pgqueue dashboard --token` (bearer header, or its
      login page and cookie, limited to the mount's path; `secure_cookie` behind TLS).

    Actions (POST) always need the CSRF token embedded in the pages' forms. Forms rendered by one
    process are accepted by another only if both derive it from the same `secret` (any string
    kept private, the same in every process; the token is used when no secret is given).
    `threads`: how many requests are answered at once (each in a thread of its own pool)."""
    require_extra()
    from .asgi import DashboardASGI
    from .auth import Auth
    from .pages import Dashboard

    if authorize is None and not token:
        raise ConfigurationError(
            "the mounted dashboard needs authorize=<your check of a request> or token=<the dashboard's own "
            "token>; to let in everyone who reaches the application, say so: authorize=lambda scope: True")
    if authorize is not None and token:
        raise ConfigurationError("give authorize= (your application decides) or token= (the dashboard's login), "
                                 "not both")
    auth = Auth(token, secure_cookie, csrf_secret=secret or token, delegated=authorize is not None)
    return DashboardASGI(Dashboard(app, auth, workflow_graphs(app)), authorize, threads)


def workflow_graphs(app: Any) -> dict[str, dict[str, list[str]]]:
    """The DAGs declared in an app's code, by workflow name. A workflow's run is its orchestrator
    task, whose function closes over the Workflow (the app keeps no list of workflows)."""
    from ..workflow import Workflow

    graphs = {}
    for task in (app.tasks.values() if app is not None else ()):
        try:
            owner = inspect.getclosurevars(task.fn).nonlocals.get("workflow")
        except TypeError:  # not a plain Python function
            continue
        if isinstance(owner, Workflow):
            graphs[owner.name] = {node: list(parents) for node, parents in owner.parents.items()}
    return graphs
