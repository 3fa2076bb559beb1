"""Quantization backends. Importing this package registers the built-in ones.

A backend is a set of capability rows, each carrying the function that builds it;
:mod:`autoquant.backends.capability` states the contract for adding an approach or a
device (one module that registers its rows, imported below).
"""

from autoquant.backends.base import Backend
from autoquant.backends.capability import Capability, SpecSupport, register_capabilities
from autoquant.backends.registry import available_backends, get_backend, register_backend

__all__ = [
    "Backend",
    "Capability",
    "SpecSupport",
    "available_backends",
    "get_backend",
    "register_backend",
    "register_capabilities",
]

# Registration side effects: the built-in backends and their rows.
from autoquant.backends import cuda as _cuda  # noqa: E402,F401
from autoquant.backends import simulated as _simulated  # noqa: E402,F401
from autoquant.backends import x86 as _x86  # noqa: E402,F401
