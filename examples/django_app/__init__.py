"""A minimal Django project using pgqueue: enqueue inside `transaction.atomic()` on Django's own
connection, or after the commit with `transaction.on_commit`; pgqueue's DSN from the settings.

    pip install 'pgqueue[django]'
    cd examples && DJANGO_SETTINGS_MODULE=django_app.settings DJANGO_DATABASE_DSN=postgresql://... \\
        python -m django migrate --run-syncdb
    # the worker needs Django set up before the tasks are imported: see worker.py
    DJANGO_SETTINGS_MODULE=django_app.settings DJANGO_DATABASE_DSN=... python -m django_app.worker

See docs/integrations.md.
"""
