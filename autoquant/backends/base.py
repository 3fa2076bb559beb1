"""Backend extension point: a capability table plus a builder.

A backend answers two questions: *can* it run a given op config (``capabilities``), and
*how* does it turn a float model and a resolved plan into a quantized model (``build``).
Adding a backend is one new module with one ``Backend`` subclass decorated with
:func:`register_backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from autoquant.config import OpConfig, QuantSpec
from autoquant.errors import UnsupportedConfigError

if TYPE_CHECKING:
    import torch.fx
    from torch import nn

    from autoquant.calibrate import CalibrationStats
    from autoquant.plan import Plan

__all__ = ["Capability", "Backend", "register_backend", "get_backend", "available_backends"]


@dataclass(frozen=True, kw_only=True)
class SpecSupport:
    """The set of QuantSpec values one side (weight or activation) of a kernel accepts."""

    dtypes: tuple[str, ...]
    schemes: tuple[str, ...] = ("sym", "asym")
    granularities: tuple[str, ...] = ("per_tensor",)
    observers: tuple[str, ...] = ("minmax",)
    reduce_range: tuple[bool, ...] = (False, True)

    def mismatch(self, side: str, spec: QuantSpec) -> str | None:
        for field, allowed in (
            ("dtype", self.dtypes),
            ("scheme", self.schemes),
            ("granularity", self.granularities),
            ("observer", self.observers),
            ("reduce_range", self.reduce_range),
        ):
            value = getattr(spec, field)
            if value not in allowed:
                return f"{side}.{field}={value!r} (allowed: {list(allowed)})"
        return None


@dataclass(frozen=True, kw_only=True)
class Capability:
    """One way a backend can run some op types.

    ``kernel`` names the implementation; ``simulated`` marks fake-quant (float) execution,
    whose latency must never be reported as quantized speed.
    """

    op_types: tuple[str, ...]
    approach: str
    weight: SpecSupport
    activation: SpecSupport | None
    kernel: str
    simulated: bool = False

    def mismatch(self, op_type: str, cfg: OpConfig) -> str | None:
        """None when this capability runs ``cfg`` on ``op_type``, else the first reason not."""
        if op_type not in self.op_types:
            return f"op type {op_type} (allowed: {list(self.op_types)})"
        if cfg.approach != self.approach:
            return f"approach={cfg.approach!r} (allowed: {self.approach!r})"
        reason = self.weight.mismatch("weight", cfg.weight)
        if reason:
            return reason
        if self.activation is not None and cfg.activation is not None:
            return self.activation.mismatch("activation", cfg.activation)
        return None


class Backend(ABC):
    """Base class of quantization backends."""

    name: ClassVar[str]

    @abstractmethod
    def capabilities(self) -> list[Capability]:
        """Every (op type, approach, spec) combination this backend can run."""

    def find(self, op_type: str, cfg: OpConfig) -> Capability | None:
        """The first capability (real kernels are listed before simulated ones) for cfg."""
        for cap in self.capabilities():
            if cap.mismatch(op_type, cfg) is None:
                return cap
        return None

    def check(self, plan: "Plan") -> None:
        """Raise UnsupportedConfigError listing every op of ``plan`` this backend cannot run."""
        problems = []
        for fqn, cfg in plan.items():
            if cfg is None:
                continue
            op_type = plan.op_types[fqn]
            if self.find(op_type, cfg) is None:
                problems.append(f"  - {fqn} ({op_type}): {cfg.short()}\n      {self.explain(op_type, cfg)}")
        if problems:
            raise UnsupportedConfigError(
                f"backend {self.name!r} cannot run {len(problems)} op config(s) of the plan:\n"
                + "\n".join(problems)
                + "\nChange these rules (or map the op to None to keep it float); "
                "`autoquant.capabilities(backend)` lists what is supported."
            )

    def explain(self, op_type: str, cfg: OpConfig) -> str:
        """Why no capability matches: the closest capability's first mismatch."""
        same = [c for c in self.capabilities() if op_type in c.op_types]
        if not same:
            types = sorted({t for c in self.capabilities() for t in c.op_types})
            return f"{op_type} is not quantizable on {self.name!r} (quantizable: {types})"
        approaches = sorted({c.approach for c in same})
        if cfg.approach not in approaches:
            return f"approach={cfg.approach!r} is not available for {op_type} (allowed: {approaches})"
        reasons = [c.mismatch(op_type, cfg) for c in same if c.approach == cfg.approach]
        return "unsupported " + "; or ".join(r for r in reasons if r)

    def calibration_graph(self, model: "nn.Module") -> "torch.fx.GraphModule | None":
        """A float graph whose node names match the ones ``build`` observes, or None.

        Calibration records statistics for every node of this graph, so qparams for any
        plan can be derived later without running the model again. None means the backend
        works module by module (statistics of each quantizable op's input and output).
        """
        return None

    @abstractmethod
    def build(
        self, model: "nn.Module", plan: "Plan", stats: "CalibrationStats | None"
    ) -> "nn.Module":
        """Return a new quantized model; ``model`` must not be modified."""


_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend under its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(backend: "str | Backend") -> Backend:
    if isinstance(backend, Backend):
        return backend
    # Importing the package registers the built-in backends.
    import autoquant.backends  # noqa: F401

    try:
        return _REGISTRY[backend]()
    except KeyError:
        raise UnsupportedConfigError(
            f"backend must be one of {available_backends()}, but got {backend!r}."
        ) from None
