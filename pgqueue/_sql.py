"""Loads the SQL files: numbered migrations and named queries from `sql/`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


def sql_dir() -> Path:
    """The `sql/` folder: packaged inside the wheel, or at the repository root in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError(f"pgqueue's sql/ folder is missing (looked beside {here}); reinstall pgqueue")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    found = []
    for path in sorted((sql_dir() / "migrations").iterdir()):
        match = _MIGRATION_FILE.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    # Gaps are allowed: a number can be reserved for work on another branch (the dashboard's 0008
    # landed before 0006/0007). Applying is by version set, so a gap filled later is applied then.
    if not versions or versions[0] != 1 or len(set(versions)) != len(versions):
        raise RuntimeError(f"migrations must be numbered from 1 with unique numbers, found {versions}")
    return tuple(found)


def latest_version() -> int:
    return migrations()[-1].version


def shipped_versions() -> list[int]:
    return [m.version for m in migrations()]


@cache
def queries(group: str) -> dict[str, str]:
    """Named queries of `sql/queries/<group>.sql`, split at `-- name: <name>` lines."""
    text = (sql_dir() / "queries" / f"{group}.sql").read_text()
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(group: str, name: str) -> str:
    return queries(group)[name]
