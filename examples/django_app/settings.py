"""Settings of the example project: the database from DJANGO_DATABASE_DSN (any libpq DSN), and
pgqueue's DSN from the same database (see apps.py)."""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ.get("DJANGO_DATABASE_DSN", "dbname=shop"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
INSTALLED_APPS = ["django_app.apps.ShopConfig"]
ROOT_URLCONF = "django_app.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        # with psycopg 3 installed (pgqueue needs it), Django's backend uses it
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}
# pgqueue uses DATABASES["default"] (pgqueue.integrations.django.dsn_from_settings); to put its
# tables in another database, set PGQUEUE_DSN = "postgresql://..." here. Enqueueing inside
# `atomic()` needs them in the same database as the transaction.
