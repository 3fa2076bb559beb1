"""Backend extension point: a capability table plus a builder.

A backend answers two questions: *can* it run a given op config (``capabilities``), and
*how* does it turn a float model and a resolved plan into a quantized model (``build``).
Adding a backend is one new module with one ``Backend`` subclass decorated with
:func:`register_backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from autoquant.config import OpConfig, QuantSpec
from autoquant.errors import UnsupportedConfigError

if TYPE_CHECKING:
    import torch.fx
    from torch import nn

    from autoquant.stats import CalibrationStats
    from autoquant.plan import Plan

__all__ = [
    "BuildReuse",
    "SpecSupport",
    "Capability",
    "QuantizedModelInfo",
    "Backend",
    "register_backend",
    "get_backend",
    "available_backends",
    "capabilities",
    "capability_table",
    "module_kinds",
]


@dataclass(frozen=True, kw_only=True)
class SpecSupport:
    """The set of QuantSpec values one side (weight or activation) of a kernel accepts."""

    dtypes: tuple[str, ...]
    schemes: tuple[str, ...] = ("sym", "asym")
    granularities: tuple[str, ...] = ("per_tensor",)
    observers: tuple[str, ...] = ("minmax",)
    reduce_range: tuple[bool, ...] = (False, True)
    axes: tuple[int, ...] = (0,)
    group_sizes: tuple[int, ...] = (32, 64, 128, 256)

    def mismatch(self, side: str, spec: QuantSpec) -> str | None:
        checks: list[tuple[str, tuple]] = [
            ("dtype", self.dtypes),
            ("scheme", self.schemes),
            ("granularity", self.granularities),
            ("observer", self.observers),
            ("reduce_range", self.reduce_range),
        ]
        if spec.granularity == "per_channel":
            checks.append(("axis", self.axes))
        if spec.granularity == "per_group":
            checks.append(("group_size", self.group_sizes))
        for name, allowed in checks:
            value = getattr(spec, name)
            if value not in allowed:
                return f"{side}.{name}={value!r} (allowed: {list(allowed)})"
        return None


@dataclass(frozen=True, kw_only=True)
class Capability:
    """One way a backend can run some op types.

    ``kernel`` names the implementation; ``simulated`` marks fake-quant (float) execution,
    whose latency must never be reported as quantized speed. ``saturates`` lists the
    module kinds (:func:`module_kinds`: ``"depthwise"``, ...) on which this kernel adds
    uint8 x int8 product pairs in int16, so full-range uint8 activations can overflow
    (``scripts/kernel_saturation.py`` measures it); such ops get ``reduce_range=True``
    unless the user asks otherwise, and the tuner never proposes full range for them.
    """

    op_types: tuple[str, ...]
    approach: str
    weight: SpecSupport
    activation: SpecSupport | None
    kernel: str
    simulated: bool = False
    saturates: tuple[str, ...] = ()

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


def module_kinds(module: nn.Module) -> frozenset[str]:
    """Shape classes of a module that decide which kernel variant runs it.

    ``depthwise``: a conv with one input channel per group (groups == in_channels > 1);
    ``grouped``: any other conv with groups > 1; ``dense``: everything else.
    """
    groups = getattr(module, "groups", 1)
    if groups > 1 and groups == getattr(module, "in_channels", 0):
        return frozenset({"depthwise"})
    return frozenset({"grouped" if groups > 1 else "dense"})


@dataclass(frozen=True)
class QuantizedModelInfo:
    """What a built model is: attached to it as ``autoquant_info``.

    ``kernels`` maps each quantized op to the kernel that runs it; ``simulated`` lists
    the ops executed as fake-quant (their latency is not quantized speed); ``mode`` is
    ``graph`` (torch.fx: quantize/dequantize only at region borders, fusions applied),
    ``module`` (each op its own quantized island) or ``eager`` (no static ops);
    ``stat_keys`` are the calibration statistics the build read.
    """

    plan: Plan
    backend: str
    mode: str
    kernels: dict[str, str]
    simulated: tuple[str, ...]
    stat_keys: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass
class BuildReuse:
    """Lets repeated builds of one float model share what does not change between them.

    With it, a build references (does not copy) the float tensors of ops that stay
    float, and reuses the quantized module built earlier for the same (op, config).
    Models built this way share tensors with the float model and with each other, so
    they must be used read-only, one at a time: exactly the tuner's trial candidates.
    """

    modules: dict[tuple[str, OpConfig], nn.Module] = field(default_factory=dict)
    hits: int = 0


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

    def module_problem(self, module: nn.Module, cfg: OpConfig, cap: Capability) -> str | None:
        """Why this particular module (its shapes, options) cannot run ``cfg``, or None.

        Capabilities describe op types; a backend overrides this for per-module limits
        (e.g. a group size that must divide the input features).
        """
        return None

    def saturation_risk(self, module: nn.Module, cfg: OpConfig, cap: Capability) -> str | None:
        """Why ``cfg`` can overflow ``cap``'s kernel on this module, or None.

        Full-range uint8 activations on a kernel that sums product pairs in int16 (see
        ``Capability.saturates``) overflow once two products exceed 32767 together;
        7-bit activations (``reduce_range=True``) cannot.
        """
        act = cfg.activation
        if cap.simulated or act is None or act.dtype != "uint8" or act.reduce_range:
            return None
        kinds = module_kinds(module) & set(cap.saturates)
        if not kinds:
            return None
        return (
            f"{cap.kernel} adds uint8 x int8 product pairs in int16 for {'/'.join(sorted(kinds))} "
            "convs: full-range uint8 activations (2 x 255 x 127 > 32767) overflow it. "
            "Use reduce_range=True on the activation spec."
        )

    def avoid_saturation(self, plan: Plan, model: nn.Module) -> tuple[Plan, tuple[str, ...]]:
        """``plan`` with ``reduce_range=True`` on every op whose kernel would saturate,
        and the names of the ops changed."""
        from autoquant.plan import Plan

        changed: dict[str, OpConfig] = {}
        for fqn, cfg in plan.items():
            if cfg is None or cfg.activation is None:
                continue
            cap = self.find(plan.op_types[fqn], cfg)
            if cap is not None and self.saturation_risk(model.get_submodule(fqn), cfg, cap):
                changed[fqn] = cfg.replace(activation=cfg.activation.replace(reduce_range=True))
        if not changed:
            return plan, ()
        return Plan({**dict(plan), **changed}, dict(plan.op_types)), tuple(changed)

    def check(self, plan: Plan, model: nn.Module | None = None) -> None:
        """Raise UnsupportedConfigError listing every op of ``plan`` this backend cannot run.

        With ``model``, per-module limits (:meth:`module_problem`) are checked too.
        """
        problems = []
        for fqn, cfg in plan.items():
            if cfg is None:
                continue
            op_type = plan.op_types[fqn]
            cap = self.find(op_type, cfg)
            if cap is None:
                problems.append(
                    f"  - {fqn} ({op_type}): {cfg.short()}\n      {self.explain(op_type, cfg)}"
                )
            elif model is not None:
                reason = self.module_problem(model.get_submodule(fqn), cfg, cap)
                if reason:
                    problems.append(f"  - {fqn} ({op_type}): {cfg.short()}\n      {reason}")
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
            return (
                f"approach={cfg.approach!r} is not available for {op_type} (allowed: {approaches})"
            )
        reasons = [c.mismatch(op_type, cfg) for c in same if c.approach == cfg.approach]
        return "unsupported " + "; or ".join(r for r in reasons if r)

    def calibration_graph(self, model: nn.Module) -> torch.fx.GraphModule | None:
        """A float graph whose node names match the ones ``build`` observes, or None.

        Calibration records statistics for every node of this graph, so qparams for any
        plan can be derived later without running the model again. None means the backend
        works module by module (statistics of each quantizable op's input and output).
        """
        return None

    @abstractmethod
    def build(
        self,
        model: nn.Module,
        plan: Plan,
        stats: CalibrationStats | None,
        reuse: BuildReuse | None = None,
    ) -> nn.Module:
        """Return a new quantized model; ``model`` must not be modified (see BuildReuse)."""


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
    # Importing the package registers the built-in backends.
    import autoquant.backends  # noqa: F401

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
