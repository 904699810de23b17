"""The dashboard mounted in a FastAPI application, in a real browser (Debian's Chromium): its login
page under the mount, and the Limits page's pause form, whose JavaScript must keep the mount's path."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI

import browser
from asgi_server import serving
from pgqueue import PgQueue
from pgqueue.dashboard import create_asgi_app

if browser.missing():
    if os.environ.get("PGQUEUE_SKIP_BROWSER") == "1":
        pytest.skip(f"PGQUEUE_SKIP_BROWSER=1: {browser.missing()}", allow_module_level=True)
    pytest.fail(f"the dashboard's browser tests need Chromium: {browser.missing()} "
                "(or set PGQUEUE_SKIP_BROWSER=1 to skip them explicitly)", pytrace=False)

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def chrome() -> Iterator[WebDriver]:
    with browser.chromium() as driver:
        yield driver


def until(driver: WebDriver, condition: Any, timeout: float = 20) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


async def test_login_and_the_pause_form_under_a_mount(dsn: str, chrome: WebDriver) -> None:
    queue = PgQueue(dsn)
    outer = FastAPI()
    dashboard = create_asgi_app(queue, token="tok")
    outer.mount("/ops", dashboard)
    try:
        async with serving(outer) as url:
            def steps() -> tuple[str, str]:
                chrome.get(url + "/ops/limits")
                until(chrome, lambda d: d.current_url.startswith(url + "/ops/login?next="))
                chrome.find_element(By.NAME, "token").send_keys("tok")
                chrome.find_element(By.CSS_SELECTOR, "form.login button").click()
                until(chrome, lambda d: d.current_url == url + "/ops/limits")
                chrome.find_element(By.CSS_SELECTOR, "form[data-queue-form] input[name=queue]").send_keys("emails")
                chrome.find_element(By.CSS_SELECTOR, "form[data-queue-form] button").click()
                until(chrome, ec.alert_is_present()).accept()
                notice = until(chrome, ec.presence_of_element_located((By.CSS_SELECTOR, ".notice")))
                return chrome.current_url, str(notice.text)

            current, notice = await asyncio.to_thread(steps)
    finally:
        dashboard.close()
        queue.close()
    assert current.startswith(url + "/ops/limits?done=") and "paused" in notice, (current, notice)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute("SELECT paused FROM pgqueue.queues WHERE name = 'emails'")).fetchone()
    assert row == (True,)
