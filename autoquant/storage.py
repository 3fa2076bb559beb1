"""Where a study lives: a URL → an Optuna storage, with secrets kept out of logs.

* ``None``: in memory, this process only (the default).
* ``sqlite:///path.db``, ``postgresql://user@host/db``, any SQLAlchemy URL: Optuna's
  RDB storage (SQLite for one process; PostgreSQL for workers on several machines).
* ``journal:///absolute/path.log``: Optuna's JournalStorage with a file backend, for
  several processes on one machine (SQLite is not for parallel workers).
* ``grpc://host:port``: Optuna's gRPC storage proxy in front of a database.

A password never has to be in the URL: with ``AUTOQUANT_STORAGE_PASSWORD`` (or
``AUTOQUANT_STORAGE_PASSWORD_FILE``) set, it is added when connecting, and
:func:`mask_url` is what logs, summaries and MLflow see.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from autoquant.errors import ConfigError

__all__ = ["open_storage", "mask_url", "PASSWORD_ENV", "PASSWORD_FILE_ENV"]

PASSWORD_ENV = "AUTOQUANT_STORAGE_PASSWORD"
PASSWORD_FILE_ENV = "AUTOQUANT_STORAGE_PASSWORD_FILE"
_RDB = re.compile(r"^(sqlite|postgresql|postgres|mysql|mariadb|oracle|mssql)(\+\w+)?://")


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
            secret = open(path).read().strip()
        except OSError as exc:
            raise ConfigError(f"{PASSWORD_FILE_ENV}={path!r} cannot be read: {exc}") from exc
    parts = urlsplit(url)
    if secret is None or parts.password is not None or not parts.username:
        return url
    user, host = parts.netloc.split("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(secret, safe='')}@{host}"))


def open_storage(url: str | None, *, heartbeat_interval: int | None = None) -> Any:
    """The Optuna storage for ``url`` (None: in memory). Fails fast on a bad URL.

    ``heartbeat_interval`` (RDB only) lets Optuna fail the trials of dead workers; it
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

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if url.startswith("grpc://"):
        host, _, port = url[len("grpc://") :].partition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"storage URL {url!r} must look like grpc://host:port.")
        from optuna.storages import GrpcStorageProxy

        return GrpcStorageProxy(host=host, port=int(port))
    if _RDB.match(url):
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith(("postgresql", "postgres")):
            engine_kwargs["connect_args"] = {
                "connect_timeout": 10
            }  # a down server: seconds, not a hang
        try:
            return optuna.storages.RDBStorage(
                _with_password(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=None if heartbeat_interval is None else 2 * heartbeat_interval,
            )
        except Exception as exc:  # noqa: BLE001 - driver errors vary; all mean "cannot use it"
            raise ConfigError(
                f"cannot open storage {mask_url(url)!r}: {type(exc).__name__}: {exc}"
            ) from None
    raise ConfigError(
        f"storage URL must be sqlite:///..., postgresql://..., journal:///absolute/path.log "
        f"or grpc://host:port, but got {mask_url(url)!r}."
    )
