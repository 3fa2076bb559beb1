"""Where a study lives: a URL → an Optuna storage, with secrets kept out of logs.

* ``None``: in memory, this process only (the default).
* ``sqlite:///path.db``, ``postgresql://user@host/db``, any SQLAlchemy URL: Optuna's
  RDB storage (SQLite for one process; PostgreSQL for workers on several machines).
* ``journal:///absolute/path.log``: Optuna's JournalStorage with a file backend, for
  several processes on one machine (SQLite is not for parallel workers). Writers take
  an ``fcntl.flock`` on ``path.log.flock`` (:class:`FlockLock`), which the kernel
  releases when its holder dies; Optuna's default symlink lock stays behind a
  ``kill -9`` and blocks every worker for its 30 s grace period.
* ``grpc://host:port``: Optuna's gRPC storage proxy in front of a database.

A password never has to be in the URL: with ``AUTOQUANT_STORAGE_PASSWORD`` (or
``AUTOQUANT_STORAGE_PASSWORD_FILE``) set, it is added when connecting, and
:func:`mask_url` is what logs, summaries and MLflow see.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from autoquant.errors import ConfigError

__all__ = ["open_storage", "mask_url", "FlockLock", "PASSWORD_ENV", "PASSWORD_FILE_ENV"]

PASSWORD_ENV = "AUTOQUANT_STORAGE_PASSWORD"
PASSWORD_FILE_ENV = "AUTOQUANT_STORAGE_PASSWORD_FILE"
_RDB = re.compile(r"^(sqlite|postgresql|postgres|mysql|mariadb|oracle|mssql)(\+\w+)?://")
# Several workers opening a fresh database at once all see no tables and all create them:
# all but one fail on "already exists" / a duplicate key (PostgreSQL: also in its catalog,
# pg_type, for Optuna's enum types), or deadlock on each other's DDL. Such a failure means
# another worker is creating (or has created) the schema; a retry finds it there.
_SCHEMA_RACE = re.compile(
    r"already exists|duplicate key|duplicate entry|deadlock|concurrently updated", re.IGNORECASE
)
_SCHEMA_RACE_TRIES = 6


def mask_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (safe to log or record)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _with_password(url: str) -> str:
    secret = os.environ.get(PASSWORD_ENV)
    path = os.environ.get(PASSWORD_FILE_ENV)
    if secret is None and path:
        try:
            with open(path) as fh:
                secret = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"{PASSWORD_FILE_ENV}={path!r} cannot be read: {exc}") from exc
    parts = urlsplit(url)
    if secret is None or parts.password is not None or not parts.username:
        return url
    user, host = parts.netloc.split("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(secret, safe='')}@{host}"))


def open_storage(url: str | None, *, heartbeat_interval: int | None = None) -> Any:
    """The Optuna storage for ``url`` (None: in memory). Fails fast on a bad URL.

    ``heartbeat_interval`` (RDB only) lets Optuna fail the trials of dead workers (silent
    for 3 intervals, judged by the database server's clock); it
    needs a worker loop that beats, so it is off unless asked for.
    """
    if url is None:
        return None
    import optuna

    if url.startswith("journal://"):
        path = url[len("journal://") :]
        if not path.startswith("/"):
            raise ConfigError(
                f"storage URL {url!r}: a journal file needs an absolute path, "
                "e.g. journal:///home/me/study.log."
            )
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(
            JournalFileBackend(path, lock_obj=FlockLock(path))  # type: ignore[arg-type]
        )
    if url.startswith("grpc://"):
        host, _, port = url[len("grpc://") :].partition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"storage URL {url!r} must look like grpc://host:port.")
        from optuna.storages import GrpcStorageProxy

        return GrpcStorageProxy(host=host, port=int(port))
    if _RDB.match(url):
        return _open_rdb(url, heartbeat_interval)
    raise ConfigError(
        f"storage URL must be sqlite:///..., postgresql://..., journal:///absolute/path.log "
        f"or grpc://host:port, but got {mask_url(url)!r}."
    )


class FlockLock:
    """Optuna journal-file lock on ``fcntl.flock`` (a ``BaseJournalFileLock``).

    Each acquire opens its own descriptor of ``<journal>.flock``, so threads of one
    process exclude each other too (flock locks belong to the open file description).
    The kernel drops the lock with the descriptor, so a holder killed with ``kill -9``
    blocks no one. Local file systems only: flock over NFS is not reliable (Optuna's
    symlink lock exists for that case, at the price of its grace period).
    """

    def __init__(self, journal_path: str) -> None:
        self.path = journal_path + ".flock"
        self._held = threading.local()

    def acquire(self) -> bool:
        import fcntl

        from autoquant import _faults

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._held.fd = fd
        _faults.hit("storage_lock")
        return True

    def release(self) -> None:
        import fcntl

        fd = getattr(self._held, "fd", None)
        if fd is None:
            raise RuntimeError(f"{self.path}: released without being held")
        self._held.fd = None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _open_rdb(url: str, heartbeat_interval: int | None) -> Any:
    """Optuna's RDBStorage for ``url``, creating its schema if the database has none yet.

    Retries only the schema-creation race between workers starting together (a few
    times, after a short random wait, so they do not collide again); anything else (down
    server, wrong password, no such database, bad URL) is a ConfigError at once.
    """
    import optuna

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "postgres")):
        engine_kwargs["connect_args"] = {
            "connect_timeout": 10
        }  # a down server: seconds, not a hang
    full_url = _with_password(_with_driver(url))
    for attempt in range(1, _SCHEMA_RACE_TRIES + 1):
        try:
            return optuna.storages.RDBStorage(
                full_url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=None if heartbeat_interval is None else 3 * heartbeat_interval,
            )
        except Exception as exc:  # noqa: BLE001 - driver errors vary; all mean "cannot use it"
            if attempt < _SCHEMA_RACE_TRIES and _is_schema_race(exc):
                time.sleep(random.uniform(0.05, 0.25) * attempt)
                continue
            raise ConfigError(
                f"cannot open storage {mask_url(url)!r}: {_describe(exc, full_url)}"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _with_driver(url: str) -> str:
    """A PostgreSQL URL without a driver gets the one that is installed.

    SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3; our ``postgres`` extra
    installs psycopg2. Plain URLs work with either; an explicit ``+driver`` is kept.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}{sep}{rest}"
    raise ConfigError(
        f"storage URL {mask_url(url)!r} needs a PostgreSQL driver: install the postgres "
        "extra (pip install -e '.[postgres]', i.e. psycopg2-binary) or psycopg."
    )


def _is_schema_race(exc: Exception) -> bool:
    try:
        from sqlalchemy.exc import DBAPIError
    except ImportError:  # pragma: no cover - optuna's RDB storage needs SQLAlchemy
        return False
    # DBAPIError: the database itself answered (IntegrityError, ProgrammingError,
    # OperationalError, ...); a URL, driver or connection problem never matches the text.
    return isinstance(exc, DBAPIError) and bool(_SCHEMA_RACE.search(str(exc.orig)))


def _describe(exc: Exception, full_url: str) -> str:
    """``exc`` in one short line, for a person: the driver's own message when there is one
    (not SQLAlchemy's SQL dump and link), and never the password."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    password = urlsplit(full_url).password
    for secret in {password, unquote(password)} if password else ():
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"
