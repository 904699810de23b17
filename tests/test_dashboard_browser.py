"""The dashboard end to end in headless Chromium, with a real worker: filter the runs list, open a
failed run, read its traceback, retry it and watch it succeed; approve a waiting run; pause and
resume a queue. Browser steps are blocking, so they run in a thread while the worker runs here."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import browser
import dashboard_app
from conftest import bind, running_worker, wait_for
from pgqueue.dashboard import create_server
from pgqueue.dashboard.server import DashboardServer

if browser.missing():
    if os.environ.get("PGQUEUE_SKIP_BROWSER") == "1":
        pytest.skip(f"PGQUEUE_SKIP_BROWSER=1: {browser.missing()}", allow_module_level=True)
    pytest.fail(f"the dashboard's browser tests need Chromium: {browser.missing()} "
                "(or set PGQUEUE_SKIP_BROWSER=1 to skip them explicitly)", pytrace=False)

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait


@pytest.fixture(scope="module")
def tasks(dsn: str) -> Iterator[Any]:
    bind(dashboard_app.app, dsn)
    dashboard_app.app.register_tasks()
    dashboard_app.BEHAVIOUR["flaky_fixed"] = False
    yield dashboard_app
    bind(dashboard_app.app, None)


@pytest.fixture(scope="module")
def site(dsn: str, tasks: Any) -> Iterator[str]:
    server: DashboardServer = create_server(dsn, "127.0.0.1", 0, None, tasks.app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.dash.app.close()


@pytest.fixture(scope="module")
def chrome() -> Iterator[WebDriver]:
    with browser.chromium() as driver:
        yield driver


def until(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 20) -> Any:
    # the live block is swapped in every 2 s: an element found just before a swap goes stale
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def click(driver: WebDriver, by: str, selector: str) -> None:
    def clicked(d: WebDriver) -> bool:
        d.find_element(by, selector).click()
        return True
    until(driver, clicked)


def text_of(driver: WebDriver, by: str, selector: str) -> str:
    return str(until(driver, lambda d: d.find_element(by, selector).text))


def confirm(driver: WebDriver) -> None:
    alert = until(driver, ec.alert_is_present())
    alert.accept()


def status_badge(driver: WebDriver) -> str:
    return text_of(driver, By.CSS_SELECTOR, "h1 .status")


async def test_filter_open_failed_run_retry_and_watch_it_succeed(tasks: Any, site: str, chrome: WebDriver) -> None:
    ok = await tasks.summarize.enqueue_async(1)
    failed = await tasks.flaky.enqueue_async(7)
    async with running_worker(tasks.app):
        await ok.result(timeout=20)
        await wait_for(lambda: _is(tasks, failed.id, "failed"), what="the flaky run to fail")

        def find_and_open() -> str:
            chrome.get(site + "/runs")
            assert chrome.find_elements(By.CSS_SELECTOR, f'tr[data-run="{ok.id}"]')
            chrome.find_element(By.NAME, "task").send_keys("flaky")
            Select(chrome.find_element(By.NAME, "status")).select_by_visible_text("failed")
            chrome.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
            until(chrome, lambda d: "status=failed" in d.current_url)
            shown = until(chrome, lambda d: [r.get_attribute("data-run")
                                             for r in d.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")])
            assert shown == [str(failed.id)]
            click(chrome, By.LINK_TEXT, str(failed.id))
            until(chrome, lambda d: d.current_url.endswith(f"/runs/{failed.id}"))
            assert status_badge(chrome) == "failed"
            return text_of(chrome, By.CSS_SELECTOR, "pre.traceback")

        traceback = await asyncio.to_thread(find_and_open)
        assert "Traceback (most recent call last)" in traceback and "ProviderDown: provider unavailable" in traceback

        tasks.BEHAVIOUR["flaky_fixed"] = True

        def retry_and_watch() -> str:
            click(chrome, By.XPATH, "//button[text()='Retry']")
            confirm(chrome)
            until(chrome, ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "queued again"))
            # no reload from here on: the live block is swapped in every 2 s
            chrome.execute_script("window.__same_page = true")
            until(chrome, lambda d: status_badge(d) == "succeeded", timeout=30)
            assert chrome.execute_script("return window.__same_page") is True
            return text_of(chrome, By.ID, "result")

        assert await asyncio.to_thread(retry_and_watch) == "14"


async def test_approve_a_waiting_run_from_its_page(tasks: Any, site: str, chrome: WebDriver) -> None:
    run = await tasks.publish.enqueue_async(5)
    async with running_worker(tasks.app):
        await wait_for(lambda: _is(tasks, run.id, "waiting"), what="the run to wait for its approval")

        def approve() -> None:
            chrome.get(f"{site}/runs/{run.id}")
            assert status_badge(chrome) == "waiting"
            form = text_of(chrome, By.CSS_SELECTOR, "form.event")
            assert "approval" in form and "doc-5" in form
            click(chrome, By.CSS_SELECTOR, "form.event button[name=approve]")
            confirm(chrome)
            until(chrome, lambda d: status_badge(d) == "succeeded", timeout=30)

        await asyncio.to_thread(approve)
        assert await run.result(timeout=5) == {"draft": "draft of document 5", "approved": True}


async def test_pause_and_resume_a_queue(tasks: Any, site: str, chrome: WebDriver) -> None:
    await tasks.summarize.enqueue_async(3)

    def click_in_queue_row(label: str) -> None:
        click(chrome, By.XPATH, f"//tr[@data-queue='default']//button[text()='{label}']")
        confirm(chrome)
        until(chrome, ec.presence_of_element_located((By.CSS_SELECTOR, ".notice")))

    def pause() -> str:
        chrome.get(site + "/")
        click_in_queue_row("Pause")
        return text_of(chrome, By.CSS_SELECTOR, 'tr[data-queue="default"]')

    assert "paused" in await asyncio.to_thread(pause)
    assert await _paused(tasks, "default")

    def resume() -> str:
        click_in_queue_row("Resume")
        return text_of(chrome, By.CSS_SELECTOR, 'tr[data-queue="default"]')

    assert "active" in await asyncio.to_thread(resume)
    assert not await _paused(tasks, "default")


async def _is(tasks: Any, run_id: int, status: str) -> bool:
    return (await tasks.app.get_async_run(run_id).info()).status == status


async def _paused(tasks: Any, queue: str) -> bool:
    import psycopg

    async with await psycopg.AsyncConnection.connect(tasks.app.dsn) as conn:
        row = await (await conn.execute("SELECT paused FROM pgqueue.queues WHERE name = %s", (queue,))).fetchone()
    return bool(row and row[0])
