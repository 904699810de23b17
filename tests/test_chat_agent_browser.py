"""The chat agent example in headless Chromium: its page, served alongside the dashboard, follows
each turn through the dashboard's Server-Sent Events; the agent remembers the user across
turns, calls a tool, asks a question and waits for the answer, and never mixes two users."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import browser
from conftest import ROOT, bind, running_worker

sys.path.insert(0, str(ROOT / "examples"))

if browser.missing():
    if os.environ.get("PGQUEUE_SKIP_BROWSER") == "1":
        pytest.skip(f"PGQUEUE_SKIP_BROWSER=1: {browser.missing()}", allow_module_level=True)
    pytest.fail(f"the browser tests need Chromium: {browser.missing()} "
                "(or set PGQUEUE_SKIP_BROWSER=1 to skip them explicitly)", pytrace=False)

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def agent(dsn: str) -> Iterator[Any]:
    import chat_agent

    bind(chat_agent.app, dsn)
    chat_agent.app.register_tasks()
    yield chat_agent
    bind(chat_agent.app, None)


@pytest.fixture
def site(agent: Any) -> Iterator[str]:
    server = agent.chat_server(port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.dash.app.close()


def converse(site: str, user: str, lines: list[tuple[str, str]]) -> list[str]:
    """Type each line and wait until the page shows `expected` in its last bubble; the bubbles."""
    with browser.chromium() as driver:
        driver.get(f"{site}/chat")
        name = driver.find_element(By.ID, "user")
        name.clear()
        name.send_keys(user)
        for text, expected in lines:
            box = driver.find_element(By.ID, "text")
            box.send_keys(text)
            driver.find_element(By.ID, "send").click()

            def shown(d: WebDriver, expected: str = expected) -> bool:
                bubbles = d.find_elements(By.CSS_SELECTOR, "#messages div")
                return bool(bubbles) and expected in bubbles[-1].text
            WebDriverWait(driver, 60, poll_frequency=0.05).until(shown)
        WebDriverWait(driver, 30, poll_frequency=0.05).until(
            lambda d: d.find_element(By.ID, "status").text.endswith("succeeded"))
        return [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#messages div")]


async def test_the_chat_page_streams_each_turn_and_the_agent_remembers(agent: Any, site: str) -> None:
    ada = [("hello there", "You said: hello there (message 1 of our conversation)."),
           ("my name is Ada", "Nice to meet you, Ada! I will remember that."),
           ("what is the weather in Paris?", "In Paris it is 15 °C and sunny."),
           ("please book a table", "Shall I book a table for Ada tonight at 20:00? (yes/no)"),
           ("yes", "Done: table for Ada at 20:00, confirmation B021."),
           ("what is my name?", "Your name is Ada.")]
    bob = [("what is my name?", "You have not told me your name yet."),
           ("my name is Bob", "Nice to meet you, Bob! I will remember that."),
           ("what is my name?", "Your name is Bob.")]
    async with running_worker(agent.app, concurrency=8):
        # two users at once, each in a browser of their own
        ada_page, bob_page = await asyncio.gather(asyncio.to_thread(converse, site, "ada", ada),
                                                  asyncio.to_thread(converse, site, "bob", bob))
    assert ada_page == ["hello there", ada[0][1], "my name is Ada", ada[1][1],
                        "what is the weather in Paris?", "weather: 15 °C and sunny", ada[2][1],
                        "please book a table", ada[3][1], "yes",
                        "book_table: table for Ada at 20:00, confirmation B021", ada[4][1],
                        "what is my name?", ada[5][1]]
    assert bob_page == [line for pair in bob for line in pair]
    # the memory is the session's durable state, per user
    memory = agent.app.get_session_state("chat", "ada")["messages"]
    assert [m["content"] for m in memory if m["role"] == "user"] == [text for text, _ in ada]
    assert [m["content"] for m in agent.app.get_session_state("chat", "bob")["messages"]
            if m["role"] == "assistant"] == [reply for _, reply in bob]
