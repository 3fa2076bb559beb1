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
