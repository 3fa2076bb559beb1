"""Backends by name: register, look up, and list what they can run.

Importing :mod:`autoquant.backends` registers the built-in backends (its ``__init__``
imports their modules); a new backend module is added there. How to add an approach or a
device is described in :mod:`autoquant.backends.capability`.
"""

from __future__ import annotations

from autoquant.backends.base import Backend
from autoquant.backends.capability import Capability, SpecSupport
from autoquant.errors import UnsupportedConfigError

__all__ = [
    "register_backend",
    "get_backend",
    "available_backends",
    "capabilities",
    "capability_table",
]


_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend under its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(backend: str | Backend) -> Backend:
    if isinstance(backend, Backend):
        return backend
    # The built-in backends are registered by autoquant/backends/__init__.py, which
    # Python runs before this module (its package), so they are always here.
    try:
        return _REGISTRY[backend]()
    except KeyError:
        raise UnsupportedConfigError(
            f"backend must be one of {available_backends()}, but got {backend!r}."
        ) from None


def capabilities(backend: str | Backend = "x86") -> list[Capability]:
    """What ``backend`` can run: one entry per kernel (real ones first, then simulated)."""
    return get_backend(backend).capabilities()


def capability_table(backends: list[str] | None = None) -> str:
    """The supported feature matrix as a markdown table (the README's is generated here)."""

    def side(s: SpecSupport | None) -> str:
        if s is None:
            return "float"
        parts = [
            "/".join(s.dtypes),
            "/".join(s.schemes),
            "/".join(g.replace("per_", "") for g in s.granularities),
        ]
        if "per_group" in s.granularities:
            parts.append("g" + "/".join(map(str, s.group_sizes)))
        if s.reduce_range != (False, True):
            parts.append("reduce_range=" + "/".join(map(str, s.reduce_range)))
        return " ".join(parts)

    rows = [
        "| backend | approach | op types | weight | activation | runs on | kind "
        "| full-range uint8 overflows on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in backends or available_backends():
        for cap in get_backend(name).capabilities():
            rows.append(
                f"| {name} | {cap.approach} | {', '.join(cap.op_types)} | {side(cap.weight)} "
                f"| {side(cap.activation)} | {cap.kernel} | "
                f"{'simulated' if cap.simulated else 'real kernel'} "
                f"| {', '.join(cap.saturates) or '-'} |"
            )
    return "\n".join(rows)
