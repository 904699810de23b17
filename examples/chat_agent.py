"""A chat agent that remembers each user's conversation, in a browser page.

- `chat` is a keyed session (`@app.session("chat", key="user_id")`): the turns of one user run
  one at a time, in the order they were sent, and the conversation lives in `ctx.state`
  (durable: a worker killed mid-turn loses nothing of it and repeats nothing).
- Each turn is an agent loop: the (fake, deterministic) LLM plans the next move as a step; a
  tool call is a step; a question to the user waits for the answer with `ctx.wait_for_event`
  (the run leaves the worker meanwhile); then it goes on. The LLM's tokens are streamed with
  `ctx.stream` from inside its steps.
- The page (`/chat`) is served alongside the dashboard, by the same server: it follows a turn
  through the dashboard's Server-Sent Events endpoint `/runs/<id>/stream`.

Run it with PGQUEUE_DSN set (a migrated database; `pgqueue migrate`):

    python examples/chat_agent.py --port 8090     # a worker and the page: http://127.0.0.1:8090/chat
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pgqueue import PgQueue, Retry, current_run
from pgqueue.dashboard import create_server
from pgqueue.dashboard.server import DashboardServer, Handler

app = PgQueue()

#: seconds the agent waits for the user's answer to one of its questions
ANSWER_TIMEOUT = 600
#: seconds between two streamed tokens (a real LLM's pace, more or less)
TOKEN_PAUSE = 0.02


# -- the fake LLM: a pure function of the conversation, so replays plan the same moves -------

def plan_next(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The next move: {"tool", "args"}, {"ask": question} or {"reply": text}."""
    last = messages[-1]
    if last["role"] == "tool":
        if last["name"] == "weather":
            return {"reply": f"In {last['args']['city']} it is {last['content']}."}
        return {"reply": f"Done: {last['content']}."}
    text = last["content"].strip()
    asked = len(messages) >= 2 and messages[-2]["role"] == "assistant" and messages[-2].get("ask")
    if asked:  # the user answered the agent's question about booking
        if text.lower().startswith("y"):
            return {"tool": "book_table", "args": {"name": _name(messages) or "guest", "time": "20:00"}}
        return {"reply": "All right, I will not book anything."}
    if match := re.search(r"my name is (\w+)", text, re.IGNORECASE):
        return {"reply": f"Nice to meet you, {match[1]}! I will remember that."}
    if re.search(r"what is my name", text, re.IGNORECASE):
        name = _name(messages[:-1])
        return {"reply": f"Your name is {name}." if name else "You have not told me your name yet."}
    if match := re.search(r"weather in (\w+)", text, re.IGNORECASE):
        return {"tool": "weather", "args": {"city": match[1]}}
    if re.search(r"\bbook\b", text, re.IGNORECASE):
        return {"ask": f"Shall I book a table for {_name(messages) or 'you'} tonight at 20:00? (yes/no)"}
    turns = sum(1 for m in messages if m["role"] == "user")
    return {"reply": f"You said: {text} (message {turns} of our conversation)."}


def _name(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message["role"] == "user" and (match := re.search(r"my name is (\w+)", message["content"], re.I)):
            return match[1]
    return None


async def think(messages: list[dict[str, Any]]) -> dict[str, Any]:
    await asyncio.sleep(TOKEN_PAUSE)  # the model's latency
    return plan_next(messages)


async def say(text: str, ask: bool = False) -> str:
    """The model's answer, streamed token by token to whoever follows the run; `ask`: it is a
    question, and the page should send the user's next message as its answer."""
    ctx = current_run()
    for token in re.findall(r"\S+\s*", text):
        ctx.stream({"type": "token", "text": token})
        await asyncio.sleep(TOKEN_PAUSE)
    if ask:
        ctx.stream({"type": "ask"})
    return text


async def use_tool(name: str, args: dict[str, Any]) -> str:
    """The tools: deterministic stand-ins for real APIs."""
    if name == "weather":
        result = f"{10 + len(args['city']) % 15} °C and sunny"
    else:
        result = f"table for {args['name']} at {args['time']}, confirmation B{len(args['name']) * 7:03d}"
    current_run().stream({"type": "tool", "name": name, "result": result})
    return result


# -- the session ----------------------------------------------------------------------------

@app.session("chat", key="user_id", retry=Retry(max_attempts=5, initial_delay=0.5))
async def chat(user_id: str, message: str) -> str:
    """One turn of `user_id`'s conversation: plan, call tools, ask and wait, until it replies."""
    ctx = current_run()
    messages: list[dict[str, Any]] = ctx.state.setdefault("messages", [])
    messages.append({"role": "user", "content": message})
    while True:
        move = await ctx.step("plan", think, messages)
        if "tool" in move:
            result = await ctx.step(f"tool:{move['tool']}", use_tool, move["tool"], move["args"])
            messages.append({"role": "tool", "name": move["tool"], "args": move["args"], "content": result})
        elif "ask" in move:
            await ctx.step("say", say, move["ask"], True)
            messages.append({"role": "assistant", "content": move["ask"], "ask": True})
            answer = await ctx.wait_for_event("chat.answer", user_id, timeout=ANSWER_TIMEOUT,
                                              default={"text": "no"})
            messages.append({"role": "user", "content": str(answer.get("text", ""))})
        else:
            reply = await ctx.step("say", say, move["reply"])
            messages.append({"role": "assistant", "content": reply})
            return reply


# -- the page, served by the dashboard's own server ---------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>pgqueue chat agent</title>
<style>
 body { font: 15px system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; }
 #messages div { margin: .4rem 0; padding: .4rem .6rem; border-radius: .4rem; white-space: pre-wrap; }
 .user { background: #dbeafe; text-align: right; } .agent { background: #f3f4f6; }
 .tool { background: #fef3c7; font-family: monospace; font-size: 13px; }
 form { display: flex; gap: .5rem; } #text { flex: 1; padding: .4rem; }
</style></head>
<body>
<h1>Chat agent</h1>
<p>User <input id="user" value="ada" size="10"> <small id="status">ready</small></p>
<div id="messages"></div>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something"><button id="send">Send</button></form>
<script>
const messages = document.getElementById("messages"), statusLine = document.getElementById("status");
let asking = false, last = null;
function bubble(kind, text) {
  const div = document.createElement("div");
  div.className = kind; div.textContent = text; messages.appendChild(div); last = div; return div;
}
function follow(run) {
  statusLine.textContent = "run " + run + " thinking";
  const source = new EventSource("runs/" + run + "/stream");
  source.addEventListener("chunk", (event) => {
    const chunk = JSON.parse(event.data).data;
    if (chunk.type === "token") {
      (last && last.className === "agent" ? last : bubble("agent", "")).textContent += chunk.text;
    } else if (chunk.type === "tool") {
      bubble("tool", chunk.name + ": " + chunk.result);
    } else if (chunk.type === "ask") {
      asking = true; statusLine.textContent = "run " + run + " waiting for your answer";
    }
  });
  source.addEventListener("end", (event) => {
    source.close();
    statusLine.textContent = "run " + run + " " + JSON.parse(event.data).status;
  });
}
document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("text"), text = input.value.trim();
  if (!text) return;
  input.value = ""; bubble("user", text);
  const path = asking ? "chat/answer" : "chat/send";
  const wasAnswer = asking; asking = false;
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({user: document.getElementById("user").value, text: text})});
  const body = await response.json();
  if (!response.ok) { bubble("tool", "error: " + body.error); return; }
  if (!wasAnswer) follow(body.run);
});
</script></body></html>
"""


class ChatHandler(Handler):
    """The dashboard's handler, plus the chat page and its two actions (JSON)."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/chat":
            self._reply(200, PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/chat/memory":
            user = parse_qs(url.query).get("user", [""])[0]
            self._json(200, app.get_session_state("chat", user))
        else:
            super().do_GET()

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/chat/send", "/chat/answer"):
            super().do_POST()
            return
        try:
            body = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 65536)))
            user, text = str(body["user"]), str(body["text"])
        except (ValueError, KeyError, TypeError):
            self._json(400, {"error": 'send {"user": ..., "text": ...}'})
            return
        if path == "/chat/send":
            self._json(200, {"run": chat.enqueue(user_id=user, message=text).id})
        else:
            self._json(200, {"event": app.send_event("chat.answer", user, {"text": text})})

    def _json(self, status: int, value: Any) -> None:
        self._reply(status, json.dumps(value).encode(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def chat_server(host: str = "127.0.0.1", port: int = 8090) -> DashboardServer:
    """The dashboard on (host, port), with the chat page at /chat (no token: loopback only)."""
    server = create_server(app.dsn, host, port, app=app)
    server.RequestHandlerClass = ChatHandler
    return server


def main() -> None:
    from pgqueue.worker import Worker, WorkerSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8090)
    port = parser.parse_args().port
    app.register_tasks()
    server = chat_server(port=port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"chat page: http://127.0.0.1:{port}/chat (dashboard: http://127.0.0.1:{port}/)")
    asyncio.run(Worker(app, WorkerSettings(concurrency=20)).serve())


if __name__ == "__main__":
    main()
