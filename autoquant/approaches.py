"""The quantization approaches autoquant knows, by name: a torch-free registry.

An approach is a way of quantizing one op (``static``, ``dynamic``, ``weight_only``,
...). What this module records is what *configs and the search space* need to know
about it, nothing that needs torch:

* ``activations``: whether its ``OpConfig`` carries an activation spec;
* ``needs_calibration``: whether building it reads calibration statistics (the tuner
  calibrates once when any such approach is in the space; ``quantize`` asks for
  ``calib_data=`` for it);
* ``preset``: the ``OpConfig`` the search space starts from for it (``None``: the name
  is known, so ``OpConfig`` accepts it, but it cannot be tuned or built yet, e.g. ``qat``).

The built-in approaches are registered by :mod:`autoquant.config` next to their presets.
How an approach is *built* on a device lives with the backends: see
:mod:`autoquant.backends.capability` for the whole extension contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Approach",
    "register_approach",
    "unregister_approach",
    "get_approach",
    "approach_names",
    "tunable_approaches",
]


@dataclass(frozen=True, kw_only=True)
class Approach:
    """What configs and the search space know about one approach (see module docstring)."""

    name: str
    activations: bool = True
    needs_calibration: bool = False
    # () -> OpConfig; typed loosely so this module stays below autoquant.config.
    preset: Callable[[], Any] | None = None


_APPROACHES: dict[str, Approach] = {}


def register_approach(
    name: str,
    *,
    activations: bool = True,
    needs_calibration: bool = False,
    preset: Callable[[], Any] | None = None,
) -> Approach:
    """Make ``name`` an approach ``OpConfig`` accepts (and the tuner, with a ``preset``)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"an approach name must be an identifier, but got {name!r}.")
    if name in _APPROACHES:
        raise ValueError(
            f"approach {name!r} is already registered; call unregister_approach({name!r}) first."
        )
    approach = Approach(
        name=name, activations=activations, needs_calibration=needs_calibration, preset=preset
    )
    _APPROACHES[name] = approach
    return approach


def unregister_approach(name: str) -> None:
    """Forget ``name`` (tests that register a toy approach clean up with this)."""
    _APPROACHES.pop(name, None)


def get_approach(name: str) -> Approach:
    try:
        return _APPROACHES[name]
    except KeyError:
        raise KeyError(f"unknown approach {name!r} (known: {list(_APPROACHES)}).") from None


def approach_names() -> tuple[str, ...]:
    """Every registered approach, in registration order."""
    return tuple(_APPROACHES)


def tunable_approaches() -> tuple[str, ...]:
    """The approaches the search space can start from (those with a preset)."""
    return tuple(n for n, a in _APPROACHES.items() if a.preset is not None)
