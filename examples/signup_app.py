"""A small application, to show how pgqueue's testing kit tests one (see test_signup_app.py).

A signup creates the user (a durable step), sends a welcome email (a child run), waits up to
three days for the address to be confirmed (an event), then either closes the account or, a day
later (a durable sleep), asks how it is going. A cron schedule sends a digest every morning.
Emails land in OUTBOX: the testing kit runs tasks in the test's own process, so in-memory fakes
work as they would in any unit test.
"""

from __future__ import annotations

from pgqueue import PgQueue, current_run

app = PgQueue()

OUTBOX: list[tuple[str, str]] = []
USERS: dict[str, int] = {}


@app.task
async def send_email(to: str, subject: str) -> str:
    OUTBOX.append((to, subject))  # stands in for an email provider's API
    return f"sent {subject!r} to {to}"


def create_user(email: str) -> int:
    USERS[email] = len(USERS) + 1
    return USERS[email]


@app.task
async def signup(email: str) -> str:
    ctx = current_run()
    await ctx.step("create user", create_user, email)  # once per run, however often it resumes
    await ctx.gather(await ctx.spawn(send_email, [{"to": email, "subject": "welcome"}]))
    confirmed = await ctx.wait_for_event("confirmed", email, timeout=3 * 86400, default=False)
    if not confirmed:
        await ctx.gather(await ctx.spawn(send_email, [{"to": email, "subject": "account closed"}]))
        return "closed"
    await ctx.sleep(86400)
    await ctx.gather(await ctx.spawn(send_email, [{"to": email, "subject": "how is it going?"}]))
    return "active"


@app.task
def daily_digest() -> int:
    for email in USERS:
        send_email.enqueue(email, "your daily digest")
    return len(USERS)


app.schedule(daily_digest, "0 8 * * *", name="daily-digest")
