"""Capability rows: what a backend can run, each row with the function that builds it.

A *row* (:class:`Capability`) says which op types, approach and weight/activation specs
one kernel runs, and carries the code that builds it, so the table and the builder
cannot drift apart. A backend is the set of rows registered under its name
(:func:`register_capabilities`); :meth:`autoquant.backends.base.Backend.build` runs
every op of a plan through its row's builder.

Extension contract (adding an approach such as ``qat`` or ``prune``, or a device such
as ``cuda``, is one new module; nothing else is edited but a registry import):

1. A new approach name is registered once, torch-free, with
   :func:`autoquant.approaches.register_approach` (whether its ``OpConfig`` has an
   activation spec, whether it reads calibration statistics, and the preset ``OpConfig``
   the search space starts from). ``OpConfig``, ``TuningConfig.approaches`` and the
   search space read it from there.
2. Its kernels are rows, registered for each backend that runs them with
   ``register_capabilities(backend_name, [Capability(..., build=fn)])``. ``fn(module,
   fqn, cfg, cap, stats) -> nn.Module`` returns a *new* module for the float
   ``module`` (it must not modify it); ``stats`` is None unless the approach needs
   calibration, and ``calibrated_qparams(stats, "in:" + fqn, ...)`` reads them;
   ``reads`` names the statistics it uses (so ``save``/``load`` keep them). A row may
   add ``graph_build(model, plan, fqns, stats, used_keys, kernels) -> nn.Module`` to
   convert all its ops at once on a traced graph (x86 static int8 does). Rows with
   ``simulated=True`` (fake-quant) come after real kernels whatever the registration
   order, since :meth:`Backend.find` returns the first row that fits.
3. A new device is a :class:`~autoquant.backends.base.Backend` subclass registered
   with :func:`autoquant.backends.registry.register_backend` whose ``name`` its rows
   are registered under; it overrides only what differs on that device (per-module
   limits, a calibration graph, warnings before a build). Its module is imported
   by ``autoquant/backends/__init__.py`` (the one registry import to add).

:func:`unregister_capabilities` removes rows again (tests that register a toy
approach clean up with it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoquant.approaches import get_approach
from autoquant.config import OpConfig, QuantSpec
from autoquant.errors import CalibrationError

if TYPE_CHECKING:
    from torch import nn

    from autoquant.plan import Plan
    from autoquant.stats import CalibrationStats

__all__ = [
    "BuildReuse",
    "SpecSupport",
    "Capability",
    "QuantizedModelInfo",
    "OpBuilder",
    "GraphBuilder",
    "module_kinds",
    "register_capabilities",
    "unregister_capabilities",
    "rows",
    "stats_needed_by",
    "require_stats",
]

# (float module, its fqn, its config, its row, calibration statistics) -> new module
OpBuilder = Callable[["nn.Module", str, OpConfig, "Capability", "CalibrationStats | None"], Any]
# (float model, plan, the fqns to convert, statistics, stat keys read (appended),
#  kernel label per fqn (filled)) -> new model
GraphBuilder = Callable[..., Any]


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
    ``build``/``reads``/``graph_build``: how the row is built (module docstring).
    """

    op_types: tuple[str, ...]
    approach: str
    weight: SpecSupport
    activation: SpecSupport | None
    kernel: str
    # How the row is built (see the module docstring): the per-op builder, the
    # calibration statistics it reads ("in"/"out" -> "in:<fqn>"/"out:<fqn>"), and an
    # optional whole-graph builder used instead when calibration ran in graph mode.
    build: OpBuilder = field(compare=False, repr=False)
    reads: tuple[str, ...] = ()
    graph_build: GraphBuilder | None = field(default=None, compare=False, repr=False)
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
    ``stat_keys`` are the calibration statistics the build read; ``execution`` is
    ``"eager"`` (as built) or ``"compiled (torch.compile inductor, freezing)"`` once
    deployed (:func:`autoquant.deploy`).
    """

    plan: Plan
    backend: str
    mode: str
    kernels: dict[str, str]
    simulated: tuple[str, ...]
    stat_keys: tuple[str, ...]
    notes: tuple[str, ...] = ()
    execution: str = "eager"


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


_ROWS: dict[str, list[Capability]] = {}


def register_capabilities(backend: str, caps: Iterable[Capability]) -> None:
    """Add rows to the backend named ``backend`` (see the module docstring)."""
    caps = list(caps)
    for cap in caps:
        if not isinstance(cap, Capability):
            raise TypeError(f"register_capabilities takes Capability rows, but got {cap!r}.")
        get_approach(cap.approach)  # an unknown approach name fails here, not at build
        if not callable(cap.build):
            raise TypeError(f"capability {cap.kernel!r} has no build function.")
    _ROWS.setdefault(backend, []).extend(caps)


def unregister_capabilities(backend: str, caps: Iterable[Capability]) -> None:
    """Remove rows added with :func:`register_capabilities` (by identity)."""
    gone = {id(c) for c in caps}
    _ROWS[backend] = [c for c in _ROWS.get(backend, []) if id(c) not in gone]


def rows(backend: str) -> list[Capability]:
    """The rows of ``backend``: real kernels first, then simulated ones, each in
    registration order (``Backend.find`` returns the first row that fits)."""
    mine = _ROWS.get(backend, [])
    return [c for c in mine if not c.simulated] + [c for c in mine if c.simulated]


def stats_needed_by(plan: Plan) -> list[str]:
    """The ops of ``plan`` whose approach reads calibration statistics."""
    return [
        fqn
        for fqn, cfg in plan.items()
        if cfg is not None and get_approach(cfg.approach).needs_calibration
    ]


def require_stats(plan: Plan, stats: CalibrationStats | None) -> None:
    """The one "these ops need calibration statistics" check (quantize and every build)."""
    needing = stats_needed_by(plan)
    if stats is None and needing:
        raise CalibrationError(
            f"op {needing[0]!r} uses approach={plan[needing[0]].approach!r}, which needs "
            "calibration data: pass calib_data= (an iterable of model inputs, ~100 samples) "
            "or stats= to quantize()."
        )
