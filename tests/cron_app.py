"""An app with schedules, for the cron tests."""

from __future__ import annotations

from pgqueue import PgQueue

app = PgQueue()


@app.task
async def heartbeat_job(label: str = "") -> str:
    return label


# every second (6 fields: seconds first), so that tests see many ticks in a few seconds
app.schedule(heartbeat_job, "* * * * * *", name="every-second", input={"label": "tick"})
