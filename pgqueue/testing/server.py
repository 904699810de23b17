"""A PostgreSQL server for tests, and throwaway migrated databases on it.

`PGQUEUE_TEST_DSN` names an existing server (its user must be allowed to CREATE DATABASE);
without it, a server is started from the embedded package (or PGQUEUE_PG_BIN's binaries) in a
folder of the caller's (pytest's temporary folder) and removed with `destroy()`.

Each database is a copy of a template migrated once per server: creating one takes a fraction of
a second. Templates made `with_clock` carry the movable clock of `pgqueue.testing.clock`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..config import connect
from ..embedded import EmbeddedServer, find_pg_bin
from ..migrations import migrate
from ..ops import execute_on
from .clock import install_clock_op

#: the environment variable naming an existing server for tests
TEST_DSN_VARIABLE = "PGQUEUE_TEST_DSN"


@dataclass
class TestServer:
    """A server whose admin DSN may create and drop databases."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    admin_dsn: str
    embedded: EmbeddedServer | None = None
    _templates: dict[bool, str] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, folder: Path, dsn: str | None = None) -> TestServer:
        """The server at `dsn` (else PGQUEUE_TEST_DSN), else an embedded one living in `folder`."""
        given = dsn or os.environ.get(TEST_DSN_VARIABLE)
        if given:
            return cls(given)
        embedded = EmbeddedServer(folder, find_pg_bin())
        embedded.ensure_running()
        return cls(embedded.dsn, embedded)

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def create_database(self, prefix: str = "pgqueue_test", *, template: str | None = None,
                        with_clock: bool = True, migrated: bool = True) -> str:
        """A new database named after `prefix`; its DSN. By default a copy of a migrated
        template with the test clock; `template` names another one, `migrated=False` gives an
        empty database."""
        if template is None and migrated:
            template = self.template(with_clock)
        name = f"{prefix[:40]}_{uuid.uuid4().hex[:8]}".lower()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(create)
        dsn = self.dsn_for(name)
        if template and with_clock:
            # database settings are not copied from a template: the clock's search_path again
            with connect(dsn, autocommit=True) as conn:
                execute_on(conn, install_clock_op())
        return dsn

    def template(self, with_clock: bool = True) -> str:
        """The name of a migrated template of this session (made on first use)."""
        if with_clock not in self._templates:
            name = f"pgqueue_template_{'clock_' if with_clock else ''}{uuid.uuid4().hex[:8]}"
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            dsn = self.dsn_for(name)
            if with_clock:
                with connect(dsn, autocommit=True) as conn:
                    execute_on(conn, install_clock_op())
            migrate(dsn)
            self._templates[with_clock] = name
        return self._templates[with_clock]

    def drop_database(self, dsn_or_name: str) -> None:
        name = conninfo_to_dict(dsn_or_name)["dbname"] if "=" in dsn_or_name or "://" in dsn_or_name else dsn_or_name
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))

    def destroy(self) -> None:
        """Drop the templates; stop and remove an embedded server."""
        if self.embedded is not None:
            self.embedded.destroy()
            return
        for name in self._templates.values():
            self.drop_database(name)
        self._templates.clear()
