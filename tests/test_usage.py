"""Usage accounting: ctx.report_usage in runs and steps, reconciliation of rate-limit buckets with
the usage reported, usage in SQL, the CLI and the metrics; runs needing more than a bucket's burst
refused at enqueue (Python and SQL) and failed at claim; bad usage refused clearly."""

from __future__ import annotations

import json
import math
from typing import Any

import psycopg
import pytest
from test_cli import pgqueue

from pgqueue import Concurrency, InvalidInput, PgQueue, PgQueueError, RateLimit, current_run
from pgqueue.metrics import Metrics, gauges_op
from pgqueue.testing import drain

pytestmark = pytest.mark.timeout(120)

CAPACITY = 10_000.0
PER = 1e9  # the refill (1e-5 units a second) is negligible during a test


def _available(dsn: str, limit: str, key: str = "") -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT least(capacity, tokens + refill_per_s * extract(epoch FROM now() - refilled_at))"
                           " FROM pgqueue.rate_limits WHERE name = %s AND key = %s", (limit, key)).fetchone()
    assert row is not None
    return float(row[0])


def _llm_app(dsn: str, limit: str, *, usage: str | None = "tokens") -> tuple[PgQueue, Any]:
    """A task charged an estimate (`estimate` input field) that reports what its calls used."""
    app = PgQueue(dsn)
    app.rate_limit(limit, limit=CAPACITY, per=PER, usage=usage)

    async def call_llm(tokens: int) -> int:
        await current_run().report_usage(tokens=tokens, cost=tokens / 1000, input_tokens=tokens // 2)
        return tokens

    @app.task(name=f"summarize_{limit}", rate_limits=RateLimit(limit, units="estimate"),
              concurrency=Concurrency("tenant", max_running=5))
    async def summarize(tenant: str, estimate: int, calls: list[int], after: int = 0, sleep: bool = False) -> int:
        ctx = current_run()
        used = 0
        for n in calls:
            used += await ctx.step("call", call_llm, n)
        if sleep:
            await ctx.sleep(0)  # a second attempt: its claim charges the estimate again
        if after:
            await ctx.report_usage(tokens=after)  # outside any step
            used += after
        return used

    return app, summarize


def test_buckets_end_charged_with_the_usage_reported_not_the_estimate(dsn: str) -> None:
    app, summarize = _llm_app(dsn, "llm_tokens")
    try:
        under = summarize.enqueue(tenant="acme", estimate=300, calls=[100, 20], after=30)  # 150 used
        over = summarize.enqueue(tenant="acme", estimate=100, calls=[400])                  # 400 used
        silent = summarize.enqueue(tenant="zeta", estimate=50, calls=[])                    # reports nothing
        resumed = summarize.enqueue(tenant="zeta", estimate=300, calls=[100], after=20, sleep=True)
        drain(app).raise_failures()
        assert [app.get_run(h.id).result(timeout=5) for h in (under, over, silent, resumed)] == [150, 400, 0, 120]
        # charged: 150 + 400 + the estimate of the silent run (50) + 100 (attempt 1) + 20 (attempt 2,
        # whose claim took 300 more, given back at its first report)
        assert math.isclose(_available(dsn, "llm_tokens"), CAPACITY - (150 + 400 + 50 + 120), abs_tol=0.01)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT attempt, step_key, task, concurrency_key, unit, amount FROM pgqueue.usage"
                                " WHERE run_id = %s ORDER BY reported_at, unit", (resumed.id,)).fetchall()
            totals = dict(conn.execute("SELECT unit, amount FROM pgqueue.usage_totals WHERE task = %s",
                                       (summarize.name,)).fetchall())
        task = summarize.name
        assert rows == [(1, "call#0", task, "zeta", "cost", 0.1), (1, "call#0", task, "zeta", "input_tokens", 50.0),
                        (1, "call#0", task, "zeta", "tokens", 100.0), (2, None, task, "zeta", "tokens", 20.0)]
        assert totals == pytest.approx({"tokens": 670.0, "cost": 0.62, "input_tokens": 310.0})
    finally:
        app.close()


def test_a_limit_without_a_usage_unit_keeps_the_estimate(dsn: str) -> None:
    app, summarize = _llm_app(dsn, "llm_requests", usage=None)
    try:
        summarize.enqueue(tenant="acme", estimate=300, calls=[100])
        drain(app).raise_failures()
        assert math.isclose(_available(dsn, "llm_requests"), CAPACITY - 300, abs_tol=0.01)
        app.set_rate_limit_usage("llm_requests", "tokens")  # from now on, reconciled
        summarize.enqueue(tenant="acme", estimate=300, calls=[100])
        drain(app).raise_failures()
        assert math.isclose(_available(dsn, "llm_requests"), CAPACITY - 400, abs_tol=0.01)
        with pytest.raises(PgQueueError, match="no rate limit named"):
            app.set_rate_limit_usage("no_such_limit", "tokens")
    finally:
        app.close()


def test_usage_per_task_key_and_run_in_python_sql_cli_and_metrics(dsn: str, cli_env: dict[str, str]) -> None:
    app, summarize = _llm_app(dsn, "llm_views")
    try:
        first = summarize.enqueue(tenant="acme", estimate=10, calls=[100, 200])
        summarize.enqueue(tenant="zeta", estimate=10, calls=[50])
        drain(app).raise_failures()
        by_key = {(u.group, u.unit): (u.amount, u.runs, u.reports)
                  for u in app.usage(task=summarize.name, by="key")}
        assert by_key[("acme", "tokens")] == (300.0, 1, 2) and by_key[("zeta", "tokens")] == (50.0, 1, 1)
        assert [(u.unit, u.amount) for u in app.usage(task=summarize.name) if u.unit == "tokens"] == [("tokens", 350.0)]

        listed = pgqueue("usage", "--task", summarize.name, "--by", "key", "--since", "1h", env=cli_env)
        assert listed.returncode == 0, listed.stderr
        assert "acme" in listed.stdout and "300" in listed.stdout and "tokens" in listed.stdout
        as_json = json.loads(pgqueue("usage", "--task", summarize.name, "--json", env=cli_env).stdout)
        tokens = next(r for r in as_json if r["unit"] == "tokens")
        assert (tokens["task"], tokens["amount"], tokens["runs"]) == (summarize.name, 350.0, 2)
        shown = pgqueue("runs", "show", str(first.id), env=cli_env)
        assert shown.returncode == 0, shown.stderr
        assert "usage by" in shown.stdout.lower() and "call#1" in shown.stdout and "200" in shown.stdout
        assert json.loads(pgqueue("runs", "show", str(first.id), "--json", env=cli_env).stdout)["usage"][:3] == [
            {"step_key": "call#0", "unit": "cost", "amount": 0.1, "reports": 1},
            {"step_key": "call#0", "unit": "input_tokens", "amount": 50.0, "reports": 1},
            {"step_key": "call#0", "unit": "tokens", "amount": 100.0, "reports": 1}]
        bad = pgqueue("usage", "--since", "yesterday", env=cli_env)
        assert bad.returncode != 0 and "ISO date-time" in bad.stderr

        text = Metrics().render(app.db.execute(gauges_op()))
        assert "# TYPE pgqueue_usage_total counter" in text
        assert f'pgqueue_usage_total{{task="{summarize.name}",unit="tokens"}} 350' in text
    finally:
        app.close()


def test_a_run_needing_more_than_the_burst_is_refused_at_enqueue(dsn: str, conn: psycopg.Connection[Any]) -> None:
    app, summarize = _llm_app(dsn, "llm_burst")
    try:
        drain(app)  # registers the task and its limit, as a worker's start does
        with pytest.raises(InvalidInput, match=r'needs 10001 units of rate limit "llm_burst", more than its burst '
                                               r"of 10000: it could never start"):
            summarize.enqueue(tenant="acme", estimate=10_001, calls=[])
        with pytest.raises(InvalidInput, match="more than its burst"):
            summarize.enqueue_many([{"tenant": "a", "estimate": 1, "calls": []},
                                    {"tenant": "b", "estimate": 20_000, "calls": []}])
        for sql in ("SELECT pgqueue.enqueue(%s, %s)",
                    "SELECT * FROM pgqueue.enqueue_many(%s, ARRAY[%s::jsonb])"):
            with pytest.raises(psycopg.Error, match="more than its burst") as refused:
                conn.execute(sql, (summarize.name, json.dumps({"tenant": "x", "estimate": 10_001, "calls": []})))
            assert refused.value.diag.sqlstate == "PQ002"
        with psycopg.connect(dsn) as check:
            row = check.execute("SELECT count(*) FROM pgqueue.runs WHERE task = %s", (summarize.name,)).fetchone()
        assert row == (0,)  # nothing stored
        at_burst = summarize.enqueue(tenant="acme", estimate=10_000, calls=[])  # the burst itself is fine
        app.cancel(at_burst.id)  # (no later drain of another test runs it)
    finally:
        app.close()


def test_a_queued_run_over_a_lowered_burst_fails_at_claim_instead_of_waiting_for_ever(dsn: str) -> None:
    app, summarize = _llm_app(dsn, "llm_lowered")
    try:
        drain(app)
        big = summarize.enqueue(tenant="acme", estimate=5_000, calls=[])
        small = summarize.enqueue(tenant="acme", estimate=100, calls=[])
        app.set_rate_limit("llm_lowered", limit=1_000, per=PER)  # the burst drops to 1,000 after the enqueue
        drain(app)
        info = app.get_run(big.id).info()
        assert info.status == "failed" and info.error is not None
        assert info.error["type"] == "RateLimitOverBurst"
        assert 'needs 5000 units of rate limit "llm_lowered", more than its burst of 1000' in info.error["message"]
        assert app.get_run(small.id).result(timeout=5) == 0
        with psycopg.connect(dsn) as conn:
            ready = conn.execute("SELECT count(*) FROM pgqueue.ready WHERE run_id = %s", (big.id,)).fetchone()
        assert ready == (0,)
    finally:
        app.close()


@pytest.mark.parametrize(("usage", "message"), [
    ({"tokens": -1}, "must be a finite number >= 0"),
    ({"tokens": float("nan")}, "must be a finite number >= 0"),
    ({"tokens": float("inf")}, "must be a finite number >= 0"),
    ({"tokens": True}, "must be a finite number >= 0"),
    ({"tokens": "12"}, "must be a finite number >= 0"),
    ({}, "at least one unit"),
    ({f"u{i}": 1 for i in range(33)}, "at most 32"),
    ({"bad unit": 1}, "usage unit name 'bad unit' is not valid"),
    ({"x" * 201: 1}, "usage unit name of 201 characters is not valid"),
])
def test_bad_usage_is_refused_clearly_and_records_nothing(dsn: str, usage: dict[str, Any], message: str) -> None:
    app = PgQueue(dsn)
    seen: list[str] = []

    @app.task(name="bad_usage")
    def bad_usage() -> None:
        try:
            current_run().report_usage_sync(**usage)
        except InvalidInput as exc:
            seen.append(str(exc))

    try:
        handle = bad_usage.enqueue()
        drain(app).raise_failures()
    finally:
        app.close()
    assert len(seen) == 1 and message in seen[0]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgqueue.usage WHERE run_id = %s", (handle.id,)).fetchone() == (0,)


@pytest.mark.parametrize(("units", "message"), [
    ('{"tokens": -5}', 'usage "tokens" must be a number >= 0'),
    ('{"tokens": "5"}', 'usage "tokens" must be a number >= 0'),
    ('[1]', "usage must name at least one unit"),
    ('{}', "usage must name at least one unit"),
    ('{"bad unit": 1}', "usage unit name"),
])
def test_bad_usage_is_refused_by_sql(conn: psycopg.Connection[Any], units: str, message: str) -> None:
    run_id = conn.execute("SELECT pgqueue.enqueue('sql_usage', '{}', queue => 'nowhere')").fetchone()
    assert run_id is not None
    with pytest.raises(psycopg.Error, match=message) as refused:
        conn.execute("SELECT pgqueue.report_usage(%s, 1, %s::jsonb)", (run_id[0], units))
    assert refused.value.diag.sqlstate == "PQ002"
    with pytest.raises(psycopg.Error, match="no run with id"):
        conn.execute("SELECT pgqueue.report_usage(-1, 1, '{\"tokens\": 1}')")
    conn.execute("SELECT pgqueue.report_usage(%s, 1, '{\"tokens\": 7}', 'by-hand')", (run_id[0],))
    assert conn.execute("SELECT step_key, unit, amount FROM pgqueue.usage WHERE run_id = %s",
                        (run_id[0],)).fetchall() == [("by-hand", "tokens", 7.0)]


def test_usage_in_the_dashboard_run_page_overview_and_usage_page(dsn: str, conn: psycopg.Connection[Any]) -> None:
    import http.client
    import threading

    from pgqueue.dashboard import create_server

    run_id = conn.execute("SELECT pgqueue.enqueue('dash_usage', '{}', queue => 'nowhere', "
                          "concurrency_key => 'tenant-9')").fetchone()[0]
    conn.execute("SELECT pgqueue.report_usage(%s, 1, '{\"tokens\": 4321, \"cost\": 0.25}', 'ask#0')", (run_id,))
    conn.execute("SELECT pgqueue.report_usage(%s, 1, '{\"tokens\": 79}')", (run_id,))
    server = create_server(dsn, "127.0.0.1", 0, None, None)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(path: str) -> tuple[int, str]:
        http_conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
        http_conn.request("GET", path)
        response = http_conn.getresponse()
        body = response.read().decode()
        http_conn.close()
        return response.status, body

    try:
        status, page = get(f"/runs/{run_id}")
        assert status == 200 and 'id="usage"' in page
        assert "ask#0" in page and "4321" in page and "the run" in page and "79" in page
        status, page = get("/")
        assert status == 200 and "dash_usage" in page and "4400" in page  # 4321 + 79 in the last 24 h
        status, page = get("/usage?task=dash_usage&by=key&since=1h")
        assert status == 200 and "tenant-9" in page and "4400" in page
        status, page = get("/usage?by=run")
        assert status == 200 and f'href="/runs/{run_id}"' in page
        status, page = get("/usage?by=tenant")
        assert status == 400 and "by: &#39;tenant&#39; is not one of task, key, run" in page
        status, page = get("/usage?since=yesterday")
        assert status == 400 and "neither an ISO time" in page
    finally:
        server.shutdown()
        server.dash.app.close()


def test_usage_is_pruned_with_its_run_but_the_totals_stay(conn: psycopg.Connection[Any]) -> None:
    run_id = conn.execute("SELECT pgqueue.enqueue('pruned_usage', '{}', queue => 'nowhere')").fetchone()[0]
    conn.execute("SELECT pgqueue.report_usage(%s, 1, '{\"tokens\": 11}')", (run_id,))
    conn.execute("DELETE FROM pgqueue.ready WHERE run_id = %s", (run_id,))
    conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now() - interval '400 days'"
                 " WHERE id = %s", (run_id,))
    assert conn.execute("SELECT runs FROM pgqueue.prune(1000)").fetchone()[0] >= 1
    assert conn.execute("SELECT count(*) FROM pgqueue.usage WHERE run_id = %s", (run_id,)).fetchone() == (0,)
    assert conn.execute("SELECT amount FROM pgqueue.usage_totals WHERE task = 'pruned_usage'").fetchone() == (11.0,)


def test_two_reports_racing_give_the_estimate_back_once(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """Driven step by step: the first report holds the run's usage lock until it commits; the
    second, started meanwhile, waits, then sees the first and gives nothing back again."""
    import threading

    conn.execute("SELECT pgqueue.set_rate_limit('race_tokens', 1000, 1e9)")
    conn.execute("SELECT pgqueue.set_rate_limit_usage('race_tokens', 'tokens')")
    run_id = conn.execute("SELECT pgqueue.enqueue('race_usage', '{}', queue => 'nowhere', "
                          "rate_cost => '[{\"limit\": \"race_tokens\", \"units\": 300}]')").fetchone()[0]
    conn.execute("UPDATE pgqueue.rate_limits SET tokens = 700, refilled_at = now() WHERE name = 'race_tokens'")
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        first.execute("SELECT pgqueue.report_usage(%s, 1, '{\"tokens\": 100}')", (run_id,))  # not committed
        done = threading.Event()

        def report() -> None:
            second.execute("SELECT pgqueue.report_usage(%s, 1, '{\"tokens\": 50}')", (run_id,))
            done.set()

        racing = threading.Thread(target=report)
        racing.start()
        blocked = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid = %s"
        for _ in range(400):  # until the second report waits for a lock the first holds
            if conn.execute(blocked, (second.info.backend_pid,)).fetchone() == (1,):
                break
            done.wait(0.05)
        assert not done.is_set()
        first.commit()
        racing.join(20)
    assert done.is_set()
    assert math.isclose(_available(dsn, "race_tokens"), 1000 - 150, abs_tol=0.01)
