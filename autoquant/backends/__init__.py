"""Quantization backends. Importing this package registers the built-in ones."""

from autoquant.backends.base import (
    Backend,
    Capability,
    SpecSupport,
    available_backends,
    get_backend,
    register_backend,
)

__all__ = [
    "Backend",
    "Capability",
    "SpecSupport",
    "available_backends",
    "get_backend",
    "register_backend",
]

# Registration side effects: the built-in backends.
from autoquant.backends import simulated as _simulated  # noqa: E402,F401
from autoquant.backends import x86 as _x86  # noqa: E402,F401
