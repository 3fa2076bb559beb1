"""The Backend base class: a named set of capability rows and the build that runs them.

A backend answers two questions: *can* it run a given op config (``capabilities``: its
rows, :mod:`autoquant.backends.capability`), and *how* does it turn a float model and a
resolved plan into a quantized model (``build``: each op through its row's builder, and
the rows with a graph builder through that, once). The extension contract is in
:mod:`autoquant.backends.capability`; the registry of backends by name in
:mod:`autoquant.backends.registry`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

from autoquant.backends.capability import (
    BuildReuse,
    Capability,
    QuantizedModelInfo,
    SpecSupport,
    module_kinds,
    require_stats,
    rows,
)
from autoquant.config import OpConfig
from autoquant.errors import UnsupportedConfigError

if TYPE_CHECKING:
    import torch.fx
    from torch import nn

    from autoquant.measure import LatencyStats
    from autoquant.plan import Plan
    from autoquant.stats import CalibrationStats

__all__ = [
    "BuildReuse",
    "SpecSupport",
    "Capability",
    "QuantizedModelInfo",
    "Backend",
    "module_kinds",
]


class Backend:
    """Base class of quantization backends: rows by name, the generic build, and hooks
    a device overrides (``prepare``, ``before_build``, ``graph_target``,
    ``module_problem``, ``calibration_graph``)."""

    name: ClassVar[str]

    def capabilities(self) -> list[Capability]:
        """Every (op type, approach, spec) combination this backend can run: the rows
        registered under its name (real kernels first, then simulated ones)."""
        return rows(self.name)

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

    def calibration_model(self, model: nn.Module) -> nn.Module:
        """The model :func:`autoquant.calibrate` runs to collect statistics: ``model``
        itself (not modified) on the CPU backends; a device backend may return a copy on
        its device so the statistics come from its kernels."""
        return model

    # -- measuring -------------------------------------------------------------------
    def baseline_model(self, model: nn.Module) -> nn.Module:
        """The float model a trial on this device is compared with (accuracy and
        latency). The CPU backends compare with ``model`` itself; a GPU backend with the
        model in its float dtype on the device."""
        return model

    def latency(
        self, model: nn.Module, example_inputs: Any, *, threads: int, warmup: int, repeats: int
    ) -> LatencyStats:
        """Latency of a model this backend built (or of :meth:`baseline_model`), timed the
        way this device must be timed (wall clock here; CUDA events on a GPU)."""
        from autoquant.measure import measure_latency

        return measure_latency(
            model, example_inputs, threads=threads, warmup=warmup, repeats=repeats
        )

    # -- building --------------------------------------------------------------------
    def prepare(self) -> None:
        """Called first by :meth:`build` (e.g. select the engine the kernels need)."""

    def before_build(self, plan: Plan, caps: dict[str, Capability]) -> None:
        """Called once the plan is checked and the rows chosen (e.g. to warn); warnings
        raised here reach the caller of ``quantize`` with ``stacklevel=4``."""

    def graph_target(self, qmodel: nn.Module, fqn: str) -> str:
        """Where op ``fqn`` sits in a graph-converted model (a fusion may wrap it)."""
        return fqn

    def build(
        self,
        model: nn.Module,
        plan: Plan,
        stats: CalibrationStats | None,
        reuse: BuildReuse | None = None,
    ) -> nn.Module:
        """Return a new quantized model; ``model`` must not be modified (see BuildReuse).

        Each op runs through the ``build`` of the row :meth:`find` picks for it; the ops
        whose row has a ``graph_build`` go through that instead, together, when the
        statistics come from a graph (calibration in graph mode).
        """
        from autoquant.backends._build import copy_model, set_submodule

        self.prepare()
        self.check(plan, model)
        caps: dict[str, Capability] = {}
        for fqn, cfg in plan.items():
            if cfg is not None:
                cap = self.find(plan.op_types[fqn], cfg)
                assert cap is not None  # check() passed
                caps[fqn] = cap
        require_stats(plan, stats)
        self.before_build(plan, caps)
        graph_ops = [f for f, c in caps.items() if c.graph_build is not None]
        converters = {caps[f].graph_build for f in graph_ops}
        if len(converters) > 1:
            raise UnsupportedConfigError(
                f"backend {self.name!r}: the plan mixes rows with different graph builders "
                f"({sorted(caps[f].kernel for f in graph_ops)}); one build runs one graph "
                "conversion."
            )
        used_keys: list[str] = []
        kernels: dict[str, str] = {}
        notes: list[str] = []
        if graph_ops and stats is not None and stats.mode == "graph":
            (convert,) = converters
            qmodel = convert(model, plan, graph_ops, stats, used_keys, kernels)
            mode = "graph"
        else:
            qmodel = copy_model(model, list(caps), share_float=reuse is not None)
            mode = "module" if graph_ops else "eager"
            if graph_ops:
                notes.append(
                    "torch.fx cannot trace this model: static ops are quantized module by "
                    "module (quantize/dequantize around each op, no fusion)."
                )
            graph_ops = []
        for fqn, cap in caps.items():
            if fqn in graph_ops:
                continue
            target, source = fqn, model.get_submodule(fqn)
            if mode == "graph":
                # The graph's copy: BN folding may have changed its weights.
                target = self.graph_target(qmodel, fqn)
                source = qmodel.get_submodule(target)
            key = (fqn, plan[fqn])
            reusable = reuse is not None and target == fqn
            new = reuse.modules.get(key) if reusable else None
            if new is not None:
                reuse.hits += 1
            else:
                new = cap.build(source, fqn, plan[fqn], cap, stats)
                if reusable:
                    reuse.modules[key] = new
            used_keys += [f"{side}:{fqn}" for side in cap.reads]
            set_submodule(qmodel, target, new)
            kernels[fqn] = cap.kernel
        qmodel.eval()
        qmodel.autoquant_info = QuantizedModelInfo(
            plan=plan,
            backend=self.name,
            mode=mode,
            kernels=kernels,
            simulated=tuple(f for f, c in caps.items() if c.simulated),
            stat_keys=tuple(dict.fromkeys(used_keys)),
            notes=tuple(notes),
        )
        return qmodel


# Names that moved to autoquant.backends.registry, still importable from here (PEP 562,
# so this module does not import the registry, which imports it).
_LAZY = {
    "register_backend": "autoquant.backends.registry",
    "get_backend": "autoquant.backends.registry",
    "available_backends": "autoquant.backends.registry",
    "capabilities": "autoquant.backends.registry",
    "capability_table": "autoquant.backends.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
