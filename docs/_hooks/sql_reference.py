"""MkDocs hook: fills the SQL API reference (docs/sql.md) from the function files in sql/functions.

Each function's entry is its signature as written (arguments, defaults, what it returns) and the
comment lines written just above its definition, so the page never drifts from the SQL that
`pgqueue migrate` applies.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MARKER = "<!-- sql-functions -->"
FUNCTIONS = Path(__file__).resolve().parents[2] / "sql" / "functions"

#: the functions an application, a trigger or psql calls; the others are the engine's own
PUBLIC = (
    "enqueue", "enqueue_many", "send_event", "cancel_run", "retry_run", "replay_run", "reschedule_run",
    "pause_queue", "resume_queue", "set_concurrency_limit", "delete_concurrency_limit", "set_rate_limit",
    "hold_rate_limit", "set_retention", "unset_retention", "prune", "prune_all", "claim", "read_stream",
    "stream_channel", "send_message", "message_reply", "run_state",
    "report_usage", "set_rate_limit_usage",
)

_DEFINITION = re.compile(r"^CREATE OR REPLACE (FUNCTION|PROCEDURE) pgqueue\.(\w+)\(", re.MULTILINE)


def _signature(text: str, start: int) -> str:
    """From the definition's first line to the LANGUAGE (or AS) that ends its header."""
    end = re.compile(r"^\s*(LANGUAGE|AS \$\$)|\)\s*(LANGUAGE|AS)\b", re.MULTILINE).search(text, start)
    header = text[start:end.start() if end else start + 400]
    if end and end.group(2):  # "...) LANGUAGE" on one line: keep the parenthesis
        header = text[start:end.start() + 1]
    return header.replace("CREATE OR REPLACE ", "").strip()


def _comment_above(text: str, start: int) -> str:
    lines = text[:start].rstrip("\n").split("\n")
    comment: list[str] = []
    while lines and lines[-1].startswith("--"):
        comment.insert(0, lines.pop()[2:].strip())
    return " ".join(comment)


def _comment_on(text: str, name: str) -> str:
    found = re.search(rf"COMMENT ON (?:FUNCTION|PROCEDURE) pgqueue\.{name}\b[^']*'((?:[^']|'')*)'", text)
    return found.group(1).replace("''", "'") if found else ""


def entries() -> list[tuple[str, str, str, str]]:
    """(name, file, signature, description) of every function, in file order."""
    found = []
    for path in sorted(FUNCTIONS.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        for match in _DEFINITION.finditer(text):
            name = match.group(2)
            about = " ".join(part for part in (_comment_on(text, name), _comment_above(text, match.start()))
                             if part)
            found.append((name, path.name, _signature(text, match.start()), about))
    return found


def render() -> str:
    out: list[str] = []
    all_entries = entries()
    missing = set(PUBLIC) - {name for name, *_ in all_entries}
    if missing:  # a renamed or dropped function: the page (and the docs it links from) must follow
        raise ValueError(f"docs/_hooks/sql_reference.py lists functions sql/functions does not define: {missing}")
    for title, public in (("Public functions", True), ("The engine's own functions", False)):
        out += [f"## {title}", ""]
        if not public:
            out += ["Called by the public functions above and by workers; listed so that a DBA can "
                    "read what the schema holds. Their signatures may change between versions.", ""]
        seen: set[str] = set()
        for name, file, signature, about in all_entries:
            if (name in PUBLIC) != public or (name, signature) in seen:
                continue
            seen.add((name, signature))
            out += [f"### `pgqueue.{name}`", "", f"Defined in `sql/functions/{file}`.", ""]
            if about:
                out += [about, ""]
            out += ["```sql", signature, "```", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
