"""``prepare_qat`` and ``convert``: the torch.ao / INC shape of quantization-aware training.

``prepare_qat(model, plan, calib_data)`` returns a new trainable model: every planned op
is a :class:`~autoquant.qat._modules.QATOp` (fake-quantized weights, and fake-quantized
input for ``static``/``qat`` ops), initialised from the same calibration statistics and
observers static PTQ uses. The user trains it like any ``nn.Module``.

``convert(qat_model)`` does not build integer modules itself. It hands the backend's
*static PTQ build* (``autoquant.quantize`` with ``stats=``) the two things QAT changed:

* the trained float weights, in the user's own architecture (a Conv+BatchNorm pair is
  given back as conv and BN, which the build folds exactly as it does for PTQ and as
  training simulated);
* the learned activation qparams, as calibration statistics: the trained float model is
  calibrated on the kept calibration batches (so every tensor the build may read has an
  entry), then each fake-quantized input's entries -- ``in:<op>`` and every entry of the
  same tensor under another name, e.g. a graph node -- are replaced by min/max statistics
  that give back exactly the learned scale and zero point under the ``minmax`` observer
  (:func:`stats_for_qparams`); the converted plan uses ``minmax`` for those ops, and
  the other entries become min/max of the plan's observer range (:func:`_clip_the_rest`),
  so an untrained QAT model converts to exactly the PTQ model of the same plan.

So a converted model runs on whatever kernels the backend's static rows build, is
recorded by ``quant_info`` like any PTQ model (simulated only where PTQ is too) and
saves/loads like one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoquant.config import QuantSpec
from autoquant.errors import ConfigError, QuantizationError
from autoquant.qat._modules import ActivationFakeQuant, FoldedBatchNorm, QATOp

if TYPE_CHECKING:
    from autoquant.backends.base import Backend
    from autoquant.plan import Plan
    from autoquant.stats import CalibrationStats, TensorStats

__all__ = ["QATConfig", "prepare_qat", "convert", "is_qat_model", "stats_for_qparams"]

# Approaches whose input is fake-quantized and which convert through the static rows.
_STATIC = ("qat", "static")
_UNINITIALISED_OBSERVE_STEPS = 10


@dataclass(frozen=True, kw_only=True)
class QATConfig:
    """How a QAT model trains (all counts are training steps: forward calls in train mode).

    freeze_observers_at: step from which activation ranges stop following the data (a
        moving-average min/max until then). None: 0 when calibration statistics
        initialised them (they keep the PTQ qparams, or learn them with LSQ), else
        10 (the first batches set them).
    freeze_bn_at: step from which a BatchNorm folded into its conv normalises with its
        running statistics and stops updating them. 0 (the default) keeps the trained
        model's statistics throughout: fine-tuning then trains exactly the folded conv
        the integer kernel runs.
    learn_scales: LSQ -- activation scales become trainable parameters: True for every
        op, or a tuple of op names / globs (``("fc*",)``). Weight scales are always
        recomputed from the weights (``weight_qparams``), as the static build does.
    max_samples: calibration samples kept for ``convert`` (from ``calib_data`` or, without
        it, the first training batches).
    """

    freeze_observers_at: int | None = None
    freeze_bn_at: int = 0
    learn_scales: bool | tuple[str, ...] = False
    max_samples: int = 100

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, allowed: str) -> ConfigError:
            return ConfigError(f"QATConfig.{name} must be {allowed}, but got {value!r}.")

        def count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        if self.freeze_observers_at is not None and not count(self.freeze_observers_at):
            raise bad("freeze_observers_at", self.freeze_observers_at, "None or an int >= 0")
        if not count(self.freeze_bn_at):
            raise bad("freeze_bn_at", self.freeze_bn_at, "an int >= 0")
        ls = self.learn_scales
        if isinstance(ls, list):
            object.__setattr__(self, "learn_scales", tuple(ls))
            ls = self.learn_scales
        if not isinstance(ls, bool) and not (
            isinstance(ls, tuple) and all(isinstance(p, str) for p in ls)
        ):
            raise bad("learn_scales", ls, "a bool or a tuple of op names/globs")
        if not count(self.max_samples) or self.max_samples < 1:
            raise bad("max_samples", self.max_samples, "an int >= 1")

    def learns(self, fqn: str) -> bool:
        if isinstance(self.learn_scales, bool):
            return self.learn_scales
        return any(fnmatchcase(fqn, p) for p in self.learn_scales)


@dataclass
class _QATState:
    """What ``convert`` needs besides the trained modules (kept on the QAT model)."""

    plan: Plan  # as resolved by prepare_qat (saturation switches applied)
    backend: str
    config: QATConfig
    calib: list[Any] = field(default_factory=list)  # [(model inputs,), ...]
    calib_samples: int = 0
    stats_mode: str | None = None


def is_qat_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, "_aq_qat", None), _QATState)


def _static_plan(plan: Plan) -> Plan:
    """The plan with ``qat`` ops as ``static``: what the backend builds at convert."""
    changed = {
        f: c.replace(approach="static")
        for f, c in plan.items()
        if c is not None and c.approach == "qat"
    }
    return plan.with_configs(changed) if changed else plan


def _keep_batches(data: Iterable[Any], max_samples: int) -> tuple[list[Any], int]:
    """Copies of the first ``max_samples`` samples of ``data`` as ``[(inputs,), ...]``
    (iter_batches reads a tuple's first element as the model inputs)."""
    from autoquant._data import iter_batches
    from autoquant.inputs import from_batch

    def own(v: Any) -> Any:
        return v.detach().clone() if torch.is_tensor(v) else v

    kept, n = [], 0
    for args, kwargs, k in iter_batches(data, max_samples):
        inputs = from_batch(tuple(own(a) for a in args), {key: own(v) for key, v in kwargs.items()})
        kept.append((inputs,))
        n += k
    return kept, n


def _bn_pairs(model: nn.Module, convs: Iterable[str]) -> dict[str, str]:
    """conv fqn -> fqn of the BatchNorm that alone consumes its output (what the build
    folds); {} when the model cannot be traced (the build does not fold then either)."""
    import torch.fx

    wanted = set(convs)
    if not wanted:
        return {}
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable: module mode, no folding
        return {}
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or str(node.target) not in wanted:
            continue
        if calls[str(node.target)] != 1 or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module":
            continue
        bn = gm.get_submodule(str(user.target))
        if (
            isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d))
            and calls[str(user.target)] == 1
            and bn.track_running_stats
        ):
            pairs[str(node.target)] = str(user.target)
    return pairs


def _record_first_batches(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: keep the first inputs when prepare_qat had no calib_data."""
    from autoquant.inputs import from_batch

    state = module._aq_qat
    left = state.config.max_samples - state.calib_samples
    if left > 0:
        kept, n = _keep_batches([(from_batch(args, kwargs),)], left)
        state.calib.extend(kept)
        state.calib_samples += n


def prepare_qat(
    model: nn.Module,
    plan: Plan | Mapping[str, Any],
    calib_data: Iterable[Any] | None = None,
    *,
    backend: str | Backend = "x86",
    stats: CalibrationStats | None = None,
    config: QATConfig | None = None,
    allow_saturation: bool = False,
) -> nn.Module:
    """A new trainable model with fake quantization per ``plan``; ``model`` is untouched.

    Args:
        model: the float model (deep-copied; it is never modified).
        plan: a :class:`~autoquant.plan.Plan` or rules. ``approach="qat"`` and
            ``"static"`` ops get fake-quantized weights and inputs and convert through
            the backend's static rows; ``dynamic``/``weight_only`` ops get fake-quantized
            weights and convert with their own approach.
        calib_data: model inputs: one calibration pass initialises the activation
            qparams exactly as static PTQ computes them (same statistics, same
            observers). Without it (and without ``stats``), the first training batches do.
        stats: statistics from :func:`~autoquant.calibration.calibrate` of ``model``
            (the tuner's), used instead of calibrating again; ``calib_data`` is still
            kept for ``convert``.
        config: :class:`QATConfig` (freezing steps, LSQ, kept samples).

    The result is in train mode; train it with your own loop, then :func:`convert` it.
    """
    from autoquant.backends.registry import get_backend
    from autoquant.plan import PlanWarning, resolve_plan

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}.")
    config = config or QATConfig()
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, but got {type(config).__name__}.")
    be = get_backend(backend)
    resolved = resolve_plan(plan, model)
    if not resolved.quantized:
        warnings.warn(
            "the plan quantizes no op; the QAT model trains in float.", PlanWarning, stacklevel=2
        )
    build_plan = _static_plan(resolved)
    be.check(build_plan, model)
    if not allow_saturation:
        build_plan, switched = be.avoid_saturation(build_plan, model)
        if switched:
            from autoquant.backends.x86 import SaturationWarning

            warnings.warn(
                f"ops {list(switched)} run on a kernel that adds uint8 x int8 product pairs in "
                "int16: they train and convert with reduce_range=True (allow_saturation=True "
                "keeps the plan as given).",
                SaturationWarning,
                stacklevel=2,
            )
    state = _QATState(plan=build_plan, backend=be.name, config=config)
    static_ops = [f for f, c in build_plan.items() if c is not None and c.approach in _STATIC]
    if calib_data is not None:
        state.calib, state.calib_samples = _keep_batches(calib_data, config.max_samples)
        if stats is None and static_ops:
            from autoquant.calibration import calibrate

            stats = calibrate(model, state.calib, backend=be, max_samples=config.max_samples)
    if stats is not None:
        state.stats_mode = stats.mode
    folds_bn = (
        stats.mode == "graph" if stats is not None else be.calibration_graph(model) is not None
    )
    convs = [f for f in static_ops if build_plan.op_types[f] in ("Conv1d", "Conv2d")]
    pairs = _bn_pairs(model, convs) if folds_bn else {}

    qat = copy.deepcopy(model)
    from autoquant.backends._build import set_submodule
    from autoquant.observers import activation_qparams

    for fqn, cfg in build_plan.items():
        if cfg is None:
            continue
        op = qat.get_submodule(fqn)
        act = None
        if cfg.approach in _STATIC:
            assert cfg.activation is not None
            calibrated = stats is not None and f"in:{fqn}" in stats
            freeze = config.freeze_observers_at
            if freeze is None:
                freeze = 0 if calibrated else _UNINITIALISED_OBSERVE_STEPS
            act = ActivationFakeQuant(
                cfg.activation, freeze_at=freeze, learn_scale=config.learns(fqn)
            )
            if calibrated:
                act.set_qparams(activation_qparams(stats[f"in:{fqn}"], cfg.activation))
                st = stats[f"in:{fqn}"]
                with torch.no_grad():
                    act.min_val.fill_(st.min)
                    act.max_val.fill_(st.max)
        bn_fqn = pairs.get(fqn)
        bn = qat.get_submodule(bn_fqn) if bn_fqn else None
        wrapped = QATOp(op, cfg, act, bn=bn, bn_fqn=bn_fqn, freeze_bn_at=config.freeze_bn_at)
        set_submodule(qat, fqn, wrapped)
        if bn_fqn:
            set_submodule(qat, bn_fqn, FoldedBatchNorm(owner=fqn))
    qat._aq_qat = state
    if calib_data is None:
        qat.register_forward_pre_hook(_record_first_batches, with_kwargs=True)
    qat.train()
    return qat


def _drop_record_hook(model: nn.Module) -> None:
    for key, hook in list(model._forward_pre_hooks.items()):
        if hook is _record_first_batches:
            del model._forward_pre_hooks[key]


def float_model(qat_model: nn.Module) -> nn.Module:
    """The trained float model in the original architecture (a new module)."""
    from autoquant.backends._build import set_submodule

    _require_qat(qat_model)
    out = copy.deepcopy(qat_model)
    _drop_record_hook(out)
    del out._aq_qat
    wrapped = [(f, m) for f, m in out.named_modules() if isinstance(m, QATOp)]
    for fqn, m in wrapped:
        set_submodule(out, fqn, m.op)
        if m.bn_fqn is not None:
            assert m.bn is not None
            set_submodule(out, m.bn_fqn, m.bn)
    return out


def _require_qat(model: Any) -> None:
    if not isinstance(model, nn.Module) or not is_qat_model(model):
        raise TypeError(
            "convert() takes a model returned by prepare_qat(), but got "
            f"{type(model).__name__} without QAT state. Quantize a float model with "
            "autoquant.quantize() instead."
        )


def stats_for_qparams(qp: Any, spec: QuantSpec) -> TensorStats:
    """Statistics whose ``minmax`` qparams under ``spec`` are ``qp`` (scale and zero point).

    asym: ``[ (qmin - z) * s, (qmax - z) * s ]``; sym: ``+-s * (qmax - qmin) / 2``; the
    range mapping of :mod:`autoquant.qparams` gives back ``z`` exactly and ``s`` up to
    float32 rounding of one subtraction and one division.
    """
    from autoquant.stats import TensorStats

    s = float(qp.scale.reshape(()))
    z = int(qp.zero_point.reshape(()))
    if spec.scheme == "sym":
        half = s * (qp.qmax - qp.qmin) / 2
        lo, hi = -half, half
    else:
        lo, hi = (qp.qmin - z) * s, (qp.qmax - z) * s
    return TensorStats.from_tensor(torch.tensor([lo, hi], dtype=torch.float64), bins=2)


def _same_tensor(a: TensorStats, b: TensorStats) -> bool:
    return (
        a.count == b.count
        and a.min == b.min
        and a.max == b.max
        and a.batch_mins == b.batch_mins
        and a.batch_maxs == b.batch_maxs
        and a.bins == b.bins
        and torch.equal(a.hist, b.hist)
    )


def _clip_the_rest(stats: CalibrationStats, overridden: set[str], specs: set[QuantSpec]) -> None:
    """Entries no learned qparams replaced, as min/max of their observer's clip range.

    The converted plan uses ``minmax`` (the learned qparams are exact under it), so a
    tensor the build quantizes at another point than an op's input (the last op's
    output, a conv output before a max-pool) would otherwise get its min/max where PTQ
    used the plan's observer. When every QAT op shares one activation spec, that
    observer's range of the trained model's statistics is what PTQ would compute.
    """
    from autoquant.observers import get_observer

    if len(specs) != 1:
        return
    (spec,) = specs
    if spec.observer == "minmax":
        return
    observer = get_observer(spec.observer)
    for key, st in list(stats.stats.items()):
        if key in overridden or st.count == 0:
            continue
        lo, hi = observer.clip_range(st, spec)
        stats.stats[key] = _minmax_stats(float(lo), float(hi))


def _minmax_stats(lo: float, hi: float) -> TensorStats:
    from autoquant.stats import TensorStats

    return TensorStats.from_tensor(torch.tensor([lo, hi], dtype=torch.float64), bins=2)


def convert(qat_model: nn.Module, *, self_check: bool = True) -> nn.Module:
    """The real integer model of a trained QAT model, built by the backend's static rows.

    The QAT model is not modified. The result is what :func:`autoquant.quantize` returns
    (``quant_info``, ``save``/``load`` alike); its ``autoquant_info.notes`` say it was
    converted from QAT. See the module docstring for how the learned qparams reach the
    build.

    Raises:
        QuantizationError: training left NaN/Inf in a weight or a learned scale.
        CalibrationError: the QAT model never saw an input (no calib_data, no training).
    """
    from autoquant.backends.registry import get_backend
    from autoquant.calibration import calibrate
    from autoquant.errors import CalibrationError
    from autoquant.quantizer import quantize

    _require_qat(qat_model)
    state: _QATState = qat_model._aq_qat
    be = get_backend(state.backend)
    for name, t in (*qat_model.named_parameters(), *qat_model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise QuantizationError(
                f"the QAT model's {name!r} contains NaN/Inf after training; lower the "
                "learning rate or the fine-tuning budget, then prepare and train again."
            )
    trained = float_model(qat_model)
    trained.eval()
    acts = {
        f: m.act for f, m in qat_model.named_modules() if isinstance(m, QATOp) and m.act is not None
    }
    plan = state.plan
    stats = None
    if any(c is not None and c.approach in _STATIC for c in plan.values()):
        if not state.calib:
            raise CalibrationError(
                "convert() needs calibration inputs for the static ops, but the QAT model "
                "saw none: pass calib_data= to prepare_qat(), or run at least one batch "
                "through the QAT model before converting."
            )
        stats = calibrate(trained, state.calib, backend=be, max_samples=state.config.max_samples)
        # Every op's input statistics as calibrated, before any entry is replaced.
        originals = {f: stats.stats.get(f"in:{f}") for f in acts}
        overridden: set[str] = set()
        for fqn, act in acts.items():
            assert isinstance(act, ActivationFakeQuant)
            if not bool(act.initialized):
                raise CalibrationError(f"op {fqn!r}: its activation range was never set.")
            qp = act.qparams()
            if not math.isfinite(float(qp.scale)) or float(qp.scale) <= 0:
                raise QuantizationError(
                    f"op {fqn!r}: the learned activation scale is {float(qp.scale)}; lower "
                    "the learning rate."
                )
            synthetic = stats_for_qparams(qp, act.spec)
            original = originals[fqn]
            # The same tensor under other names (graph nodes, views) gets the same qparams.
            keys = {f"in:{fqn}"} | {
                k
                for k, st in stats.stats.items()
                if original is not None and k not in overridden and _same_tensor(st, original)
            }
            for k in keys:
                stats.stats[k] = synthetic
            overridden |= keys
        _clip_the_rest(stats, overridden, {a.spec for a in acts.values()})
        minmax = {
            f: plan[f].replace(activation=plan[f].activation.replace(observer="minmax"))
            for f in acts
        }
        plan = plan.with_configs(minmax)
    with warnings.catch_warnings():
        from autoquant.plan import PlanWarning

        warnings.simplefilter("ignore", PlanWarning)
        qmodel = quantize(
            trained,
            plan,
            state.calib if self_check and state.calib else None,
            backend=be,
            stats=stats,
            allow_saturation=True,  # prepare_qat already applied the saturation switches
            self_check=self_check,
        )
    info = qmodel.autoquant_info
    qmodel.autoquant_info = dataclasses.replace(
        info,
        notes=(
            *info.notes,
            f"converted from QAT: trained weights and learned activation qparams of "
            f"{len(acts)} op(s) built by the {be.name!r} backend's rows",
        ),
    )
    return qmodel
