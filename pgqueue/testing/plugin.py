"""The pytest plugin of pgqueue (registered as `pgqueue` by the package's `pytest11` entry point).

Fixtures:

- `pgqueue_server` (session): a PostgreSQL server for the tests — the one at PGQUEUE_TEST_DSN
  (or `--pgqueue-dsn`), else an embedded server started in pytest's temporary folder and removed
  at the end of the session.
- `pgqueue_dsn`: a migrated database of the test's own, with the test clock; dropped after it.
- `pgqueue_clock`: the `Clock` of that database (time travel).
- `pgqueue_app`: your application bound to that database, found through the ini option
  `pgqueue_app = "package.module:app"`; its pools are closed after the test and it is pointed
  back where it was. Override the fixture to build it another way.

Opt out with `-p no:pgqueue`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from ..app import PgQueue
from ..errors import ConfigurationError
from .binding import bound
from .clock import Clock
from .server import TestServer


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgqueue")
    group.addoption("--pgqueue-dsn", default=None,
                    help="PostgreSQL server for pgqueue's test databases (default: PGQUEUE_TEST_DSN, else an "
                         "embedded server)")
    parser.addini("pgqueue_app", "the application the pgqueue_app fixture binds, as 'module:attribute'")


@pytest.fixture(scope="session")
def pgqueue_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    server = TestServer.start(tmp_path_factory.mktemp("pgqueue-postgres"), request.config.getoption("pgqueue_dsn"))
    yield server
    server.destroy()


@pytest.fixture
def pgqueue_dsn(pgqueue_server: TestServer, request: pytest.FixtureRequest) -> Iterator[str]:
    dsn = pgqueue_server.create_database("pgqueue_" + request.node.name.replace("[", "_").replace("]", "")[:30])
    yield dsn
    pgqueue_server.drop_database(dsn)


@pytest.fixture
def pgqueue_clock(pgqueue_dsn: str) -> Clock:
    return Clock(pgqueue_dsn)


def load_app(spec: str) -> PgQueue:
    """The PgQueue named by 'module:attribute'."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"pgqueue_app = {spec!r}: use 'module:attribute', e.g. 'myproject.tasks:app'")
    found: Any = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(found, PgQueue):
        raise ConfigurationError(f"pgqueue_app = {spec!r}: {attribute} in {module_name} is not a PgQueue "
                                 f"({type(found).__name__})")
    return found


@pytest.fixture
def pgqueue_app(request: pytest.FixtureRequest, pgqueue_dsn: str) -> Iterator[PgQueue]:
    spec = request.config.getini("pgqueue_app")
    if not spec:
        raise ConfigurationError("the pgqueue_app fixture needs the ini option pgqueue_app = 'module:app' (in "
                                 "pytest.ini or [tool.pytest.ini_options]), or a pgqueue_app fixture of your own")
    with bound(load_app(str(spec)), pgqueue_dsn) as app:
        yield app
