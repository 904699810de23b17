"""A run's live output in headless Chromium: the run page opened before the run starts shows its
tokens as the worker streams them, then the run's end."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import browser
from conftest import bind, running_worker
from pgqueue.dashboard import create_server
from pgqueue.dashboard.server import DashboardServer

if browser.missing():
    if os.environ.get("PGQUEUE_SKIP_BROWSER") == "1":
        pytest.skip(f"PGQUEUE_SKIP_BROWSER=1: {browser.missing()}", allow_module_level=True)
    pytest.fail(f"the dashboard's browser tests need Chromium: {browser.missing()} "
                "(or set PGQUEUE_SKIP_BROWSER=1 to skip them explicitly)", pytrace=False)

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def streams(dsn: str) -> Iterator[Any]:
    import stream_app

    bind(stream_app.app, dsn)
    yield stream_app
    bind(stream_app.app, None)


@pytest.fixture
def site(dsn: str, streams: Any) -> Iterator[str]:
    server: DashboardServer = create_server(dsn, "127.0.0.1", 0, None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.dash.app.close()


async def test_run_page_shows_tokens_as_they_are_streamed(streams: Any, site: str) -> None:
    handle = await streams.tokens.enqueue_async(n=20, pause=0.05)
    expected = "".join(f"t{i} " for i in range(20))

    def watch(opened: threading.Event) -> tuple[list[str], str, str]:
        with browser.chromium() as driver:
            driver.get(f"{site}/runs/{handle.id}")
            driver.find_element(By.ID, "stream-output")
            opened.set()
            seen: list[str] = []

            def ended(d: WebDriver) -> bool:
                seen.append(d.find_element(By.ID, "stream-output").text)
                return d.find_element(By.ID, "stream").get_attribute("data-ended") == "true"
            WebDriverWait(driver, 60, poll_frequency=0.05).until(ended)
            return seen, driver.find_element(By.ID, "stream-output").text, \
                driver.find_element(By.ID, "stream-state").text

    opened = threading.Event()
    watching = asyncio.create_task(asyncio.to_thread(watch, opened))
    await asyncio.to_thread(opened.wait, 60)
    async with running_worker(streams.app):
        assert await handle.result(timeout=60) == 20
        seen, output, state = await asyncio.wait_for(watching, 90)
    assert output == expected and state == "20 chunk(s), run succeeded"
    # the text grew while the run streamed: the page showed partial output before the end
    assert any(expected.startswith(text) and 0 < len(text) < len(expected) for text in seen), seen[:5]
