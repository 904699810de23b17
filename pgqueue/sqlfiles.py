"""Loads the SQL files of `sql/`: numbered migrations, function definitions and the registry of named queries."""

from __future__ import annotations

import hashlib
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
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return tuple(found)


def latest_version() -> int:
    return len(migrations())


@dataclass(frozen=True)
class FunctionFile:
    name: str
    sql: str


#: the file of trigger functions, which migrate creates before each migration (see migrations.py)
TRIGGER_FUNCTIONS = "triggers.sql"


@cache
def functions() -> tuple[FunctionFile, ...]:
    """The files of `sql/functions`, in name order: the current definition of every function."""
    return tuple(FunctionFile(path.name, path.read_text(encoding="utf-8"))
                 for path in sorted((sql_dir() / "functions").glob("*.sql")))


def trigger_functions() -> FunctionFile:
    return next(f for f in functions() if f.name == TRIGGER_FUNCTIONS)


def functions_sha256() -> str:
    """sha256 of the function files concatenated in name order: what migrate records in the database."""
    return hashlib.sha256("".join(f.sql for f in functions()).encode()).hexdigest()


@cache
def queries() -> dict[str, str]:
    """Every named query, as `group.name`: the blocks of `sql/queries/<group>.sql` that start
    with a `-- name: <name>` line. One registry for the whole package."""
    found: dict[str, str] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        parts = _NAME_LINE.split(path.read_text())
        # parts = [preamble, name1, body1, name2, body2, ...]
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            found[f"{path.stem}.{name}"] = _compact(body.strip().rstrip(";"))
    return found


def _compact(sql: str) -> str:
    """The query without its comment lines and indentation: fewer bytes sent per call, and short
    enough for the driver to cache its parsing (psycopg caches queries up to 4 KiB). No string
    literal of sql/queries spans lines (a test checks it), so no literal changes."""
    lines = (line.strip() for line in sql.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


def query(name: str) -> str:
    """The SQL of the named query `group.name` (e.g. `worker.claim`)."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries (a `-- name:` line in <group>.sql)") from None


def roles_sql() -> str:
    """`sql/roles.sql`: the producer, worker and reader roles and their grants."""
    return (sql_dir() / "roles.sql").read_text()
