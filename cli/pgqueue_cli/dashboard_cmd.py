"""`pgqueue dashboard`: serve the web dashboard (extra `pgqueue[dashboard]`)."""

from __future__ import annotations

import click

from pgqueue.dashboard import create_server

from .common import dsn_option, friendly_errors
from .loading import load_app


@click.command("dashboard")
@dsn_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8088, show_default=True)
@click.option("--token", envvar="PGQUEUE_DASHBOARD_TOKEN", default=None, show_envvar=True,
              help="Require this token on every request (Authorization: Bearer, or the login form).")
@click.option("--secure-cookie", is_flag=True, envvar="PGQUEUE_DASHBOARD_SECURE_COOKIE", show_envvar=True,
              help="Mark the login cookie Secure: for a dashboard served behind TLS (a reverse proxy).")
@click.option("--app", "app_path", default=None,
              help="MODULE:ATTR of your PgQueue app (optional): workflow graphs then show nodes not started yet.")
@friendly_errors
def dashboard_cmd(dsn: str | None, host: str, port: int, token: str | None, secure_cookie: bool,
                  app_path: str | None) -> None:
    """Serve the web dashboard: runs, workers, cron, limits, actions, /metrics."""
    app = load_app(app_path) if app_path else None
    server = create_server(dsn, host, port, token, app, secure_cookie=secure_cookie)
    click.echo(f"pgqueue dashboard on http://{host}:{server.server_port}/" + (" (token required)" if token else ""))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
