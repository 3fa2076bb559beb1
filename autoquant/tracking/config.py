"""What and where to track: :class:`TrackingConfig` (torch- and mlflow-free)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from autoquant.errors import ConfigError

__all__ = ["TrackingConfig"]


def _fail(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"TrackingConfig.{field} must be {allowed}, but got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where and what to track.

    enabled: False gives a tracker that does nothing (mlflow is never imported).
    uri: MLflow tracking URI: ``sqlite:///path.db`` (relative paths are resolved against
        the working directory when the tracker is made), ``http(s)://host:port``,
        ``postgresql://...``, ``mysql://...``, ``databricks``. MLflow >= 3.13 refuses the
        file store, so plain paths and ``file:`` URIs are rejected here.
    experiment: experiment name; default: the study name given to :func:`make_tracker`.
    log_model: log the best model and register it in the model registry.
    registered_model: registered model name; default: the experiment name.
    plots: accuracy vs latency, per-op fp32 fallback frequency and the optimization
        history, as PNG artifacts of the parent run.
    """

    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None
    log_model: bool = True
    registered_model: str | None = None
    plots: bool = True

    def __post_init__(self) -> None:
        for name in ("enabled", "log_model", "plots"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, getattr(self, name), "a bool")
        if not isinstance(self.uri, str) or not self.uri.strip():
            raise _fail("uri", self.uri, "a non-empty MLflow tracking URI string")
        match = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):", self.uri.strip())
        scheme = match.group(1).lower() if match else ""
        if self.uri.strip() in ("databricks", "databricks-uc"):
            pass
        elif len(scheme) < 2 or scheme == "file":  # no scheme, "C:\...", file:
            raise _fail(
                "uri",
                self.uri,
                "a tracking URI such as 'sqlite:///mlflow.db' or 'http://host:5000' (MLflow "
                ">= 3.13 refuses the file store, so local paths and file: URIs cannot be used)",
            )
        for name in ("experiment", "registered_model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise _fail(name, value, "None or a non-empty string")
