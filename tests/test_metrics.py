"""Prometheus metrics: counters of the worker, gauges from the database, loopback or token."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest

from conftest import running_worker
from pgqueue import ConfigurationError
from pgqueue.metrics import Metrics, check_binding, serve_metrics
from pgqueue.worker import Worker, WorkerSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_worker_serves_metrics(worker_tasks: Any) -> None:
    port = free_port()
    handles = [await worker_tasks.record.enqueue_async(i) for i in range(5)]
    failing = await worker_tasks.refuses.enqueue_async("x")
    waiting = await worker_tasks.record.options(queue="default", delay=600).enqueue_async(99)
    async with running_worker(worker_tasks.app, metrics_port=port):
        for handle in handles:
            await handle.result(timeout=20)
        with pytest.raises(Exception, match="cannot handle"):
            await failing.result(timeout=20)
        status, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
        missing, _ = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/nothing")
    assert status == 200 and missing == 404
    assert 'pgqueue_runs_started_total{queue="default",task="record"} 5' in body
    assert 'pgqueue_runs_finished_total{outcome="succeeded",queue="default",task="record"} 5' in body
    assert 'pgqueue_runs_finished_total{outcome="failed",queue="default",task="refuses"} 1' in body
    assert 'pgqueue_queue_runs{queue="default",state="scheduled"} 1' in body
    assert "# TYPE pgqueue_claim_seconds histogram" in body
    # six outcomes, recorded in at least one round trip and at most one each
    writes = re.search(r"^pgqueue_outcome_writes_total (\S+)$", body, re.M)
    assert writes is not None and 1 <= float(writes.group(1)) <= 6, body
    assert 'pgqueue_run_seconds_count{queue="default",task="record"} 5' in body
    assert "pgqueue_workers_alive 1" in body
    worker_tasks.app.cancel(waiting.id)


async def test_metrics_need_a_token_off_loopback(worker_tasks: Any) -> None:
    with pytest.raises(ConfigurationError, match="without a token"):
        check_binding("0.0.0.0", None)
    with pytest.raises(ConfigurationError, match="without a token"):
        await Worker(worker_tasks.app, WorkerSettings(metrics_port=free_port(), metrics_host="0.0.0.0")).serve()
    port = free_port()
    async with running_worker(worker_tasks.app, metrics_port=port, metrics_token="s3cret"):
        denied, _ = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
        wrong, _ = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics", "guess")
        allowed, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics", "s3cret")
    assert (denied, wrong, allowed) == (401, 401, 200) and "pgqueue_workers_alive" in body


def test_histogram_and_label_escaping() -> None:
    metrics = Metrics()
    metrics.observe("pgqueue_run_seconds", 0.02, task='a"b')
    metrics.inc("pgqueue_claims_total")
    text = metrics.render({})
    assert 'pgqueue_run_seconds_bucket{task="a\\"b",le="0.01"} 0' in text
    assert 'pgqueue_run_seconds_bucket{task="a\\"b",le="0.05"} 1' in text
    assert 'pgqueue_run_seconds_count{task="a\\"b"} 1' in text and "pgqueue_claims_total 1" in text


def _raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


async def test_without_a_token_only_loopback_hosts_and_no_traceback_for_huge_headers(
        caplog: pytest.LogCaptureFixture) -> None:
    async def render() -> str:
        return "pgqueue_workers_alive 1\n"

    server = await serve_metrics("127.0.0.1", 0, None, render)
    port = server.sockets[0].getsockname()[1]
    try:
        def ask(host: str, extra: bytes = b"") -> bytes:
            return _raw_request(port, f"GET /metrics HTTP/1.1\r\nHost: {host}\r\n".encode() + extra + b"\r\n")

        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2"):
            assert (await asyncio.to_thread(ask, host)).startswith(b"HTTP/1.1 200"), host
        for host in ("evil.example", f"evil.example:{port}", "", "[oops"):  # DNS rebinding, or no name at all
            assert (await asyncio.to_thread(ask, host)).startswith(b"HTTP/1.1 403"), host
        with caplog.at_level(logging.DEBUG, logger="pgqueue.metrics"):
            answer = await asyncio.to_thread(ask, "127.0.0.1", b"X-Big: " + b"a" * 70_000 + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    finally:
        server.close()
        await server.wait_closed()
