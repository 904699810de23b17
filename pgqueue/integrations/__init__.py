"""Framework integrations, each an optional extra imported only by its own module.

- `pgqueue.integrations.sqlalchemy`: the psycopg connection under a SQLAlchemy session or
  connection, to enqueue in its transaction.
- `pgqueue.integrations.django`: the psycopg connection of Django's own database connection (to
  enqueue inside `transaction.atomic()`), the DSN from Django's settings.
- `pgqueue.integrations.prometheus`: pgqueue's metrics in `prometheus_client`'s registry,
  multiprocess mode included.

The dashboard as an ASGI application (FastAPI, Starlette) is `pgqueue.dashboard.create_asgi_app`.
See docs/integrations.md.
"""
