"""The x86 CPU backend: PyTorch's fbgemm/oneDNN int8 engine and its weight-only kernels.

This is the only module that touches ``torch.ao.quantization`` (deprecated upstream): the
FX graph rewrite for static quantization (borders, fusions, BN folding) and the dynamic
LSTM/GRU modules. Everything else calls ``torch.ops`` kernels through our own modules
(:mod:`autoquant.backends._modules`), so replacing torch.ao later touches this file only.
"""

from __future__ import annotations

import copy
import operator
import os
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from autoquant.backends._build import (
    calibrated_qparams,
    quantized_weight,
)
from autoquant.backends._modules import (
    DynamicLinear,
    StaticConv,
    StaticLinear,
    WeightOnlyEmbedding,
    WeightOnlyInt4Linear,
    WeightOnlyInt8Linear,
)
from autoquant.backends.base import Backend
from autoquant.backends.capability import Capability, SpecSupport, register_capabilities
from autoquant.backends.fake_quant import (
    ACT_OBSERVERS,
    ALL_DTYPES,
    LINEAR_CONV,
    SIMULATED_ROWS,
    W_OBSERVERS,
)
from autoquant.backends.registry import register_backend
from autoquant.config import OpConfig, QuantSpec
from autoquant.errors import CalibrationError, UnsupportedConfigError
from autoquant.qparams import QParams, quant_range

if TYPE_CHECKING:
    from autoquant.plan import Plan
    from autoquant.stats import CalibrationStats

__all__ = ["X86Backend", "SaturationWarning", "cpu_has_vnni"]

_FX_LABEL = "x86 int8 engine via torch.fx graph ({})"


def _torch_qscheme(spec: QuantSpec, per_channel: bool) -> torch.qscheme:
    if per_channel:
        return torch.per_channel_symmetric if spec.scheme == "sym" else torch.per_channel_affine
    return torch.per_tensor_symmetric if spec.scheme == "sym" else torch.per_tensor_affine


def _observer_classes() -> tuple[type, type]:
    """torch.ao observer subclasses that hand our qparams to torch.ao's FX convert."""
    from torch.ao.quantization.observer import ObserverBase

    class PresetActivationObserver(ObserverBase):
        """Identity during prepare; its qparams are set from calibration statistics."""

        def __init__(self, spec: QuantSpec, **_: Any) -> None:
            super().__init__(dtype=torch.quint8, is_dynamic=False)
            self.spec = spec
            self.qscheme = _torch_qscheme(spec, per_channel=False)
            self.quant_min, self.quant_max = quant_range(spec.dtype, spec.reduce_range)
            self.qparams: QParams | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            assert self.qparams is not None, "activation qparams were not set"
            return self.qparams.scale.reshape(1), self.qparams.zero_point.reshape(1)

    class PresetWeightObserver(ObserverBase):
        """Computes weight qparams with autoquant's observers when convert runs it."""

        def __init__(self, spec: QuantSpec, **_: Any) -> None:
            super().__init__(dtype=torch.qint8, is_dynamic=False)
            self.spec = spec
            per_channel = spec.granularity == "per_channel"
            self.qscheme = _torch_qscheme(spec, per_channel)
            self.ch_axis = spec.axis
            self.quant_min, self.quant_max = quant_range(spec.dtype, spec.reduce_range)
            self.qparams: QParams | None = None

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            from autoquant.observers import weight_qparams

            self.qparams = weight_qparams(w.detach().float(), self.spec)
            return w

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            assert self.qparams is not None, "weight observer never saw the weight"
            return self.qparams.scale, self.qparams.zero_point

    return PresetActivationObserver, PresetWeightObserver


def _is_torch_quantized(module: nn.Module) -> bool:
    mod = type(module).__module__
    return mod.startswith("torch.ao.nn.quantized") or mod.startswith(
        "torch.ao.nn.intrinsic.quantized"
    )


def _is_fused_float(module: nn.Module) -> bool:
    # torch.ao's float fused modules (LinearReLU, ConvReLU2d, ...) are Sequentials whose
    # first child is the (BN-folded) op.
    return type(module).__module__.startswith("torch.ao.nn.intrinsic.modules")


# Ops without weights that run on quantized tensors (their output shares the input's
# qparams, or gets its own from calibration, e.g. add). They are quantized only when all
# their inputs already are, so quantize/dequantize pairs sit at the borders of quantized
# regions and never inside a region the plan keeps in float.
_GLUE_FUNCTIONS = {
    operator.add,
    torch.add,
    operator.mul,
    torch.mul,
    torch.cat,
    torch.relu,
    F.relu,
    F.relu6,
    F.hardtanh,
    torch.flatten,
    F.max_pool1d,
    F.max_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.dropout,
    torch.clamp,
}
_GLUE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
_GLUE_METHODS = {
    "flatten",
    "view",
    "reshape",
    "relu",
    "mean",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
}
# Inputs that carry shapes or scalars, not tensors; they do not decide quantization.
_SHAPE_METHODS = {"size", "dim", "numel"}


def _traced(model: nn.Module) -> torch.fx.GraphModule:
    """The model as torch.ao's tracer sees it, with ``torch.relu``/``x.relu()`` spelled
    ``F.relu``: torch.ao fuses and quantizes only that spelling, and the three compute
    the same. Calibration and build both start from this graph, so node names agree.
    """
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    root = copy.deepcopy(model).eval()
    graph = QuantizationTracer([], []).trace(root)
    for node in graph.nodes:
        if node.op == "call_function" and node.target is torch.relu:
            node.target = F.relu
        elif node.op == "call_method" and node.target == "relu":
            node.op, node.target = "call_function", F.relu
    graph.lint()
    return torch.fx.GraphModule(root, graph, class_name=type(model).__name__)


# Ops that clamp their input to a range (ReLU, ReLU6, hardtanh, clamp in every spelling).
_CLAMP_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_CLAMP_FUNCTIONS = {F.relu, F.relu6, F.hardtanh, torch.clamp, torch.clip}
_CLAMP_METHODS = {"relu", "clamp", "clip"}


def _is_clamp(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _CLAMP_MODULES)
    if node.op == "call_function":
        return node.target in _CLAMP_FUNCTIONS
    return node.op == "call_method" and node.target in _CLAMP_METHODS


def _after_clamps(
    prepared: torch.fx.GraphModule, obs_node: torch.fx.Node, act_cls: type
) -> torch.fx.Node:
    """The node whose calibrated range an observer's qparams should come from.

    An op's output whose only consumer is a clamp (conv -> ReLU6, as unfused activations
    are) is quantized with the clamp's output range: values the clamp discards need no
    integer levels, and with the pre-activation range a mostly negative conv output would
    leave ReLU6's [0, 6] a small, high slice of the uint8 range. Fused conv-ReLU gets this
    from the fusion already; this covers every other spelling.
    """
    source = obs_node.args[0]
    assert isinstance(source, torch.fx.Node)
    node = obs_node
    while len(node.users) == 1:
        (user,) = node.users
        if not _is_clamp(prepared, user):
            break
        source = user
        # The clamp's own output observer (shared or not) is where the chain continues.
        outs = [
            u
            for u in user.users
            if u.op == "call_module" and isinstance(prepared.get_submodule(str(u.target)), act_cls)
        ]
        if len(outs) != 1:
            break
        node = outs[0]
    return source


def _add_glue_qconfigs(
    mapping: Any, traced: torch.fx.GraphModule, static: dict[str, OpConfig], qconfig: Any
) -> None:
    """Give weightless ops between quantized ops a qconfig, node by node.

    FX assigns a function call's qconfig by (enclosing module, function, occurrence
    index); we walk the same fused graph prepare_fx builds, in the same order, to name
    each call that way. ``traced`` is the flat graph of :func:`_traced`, so every call
    sits in the top-level module (scope ""). Methods can only be configured by name, so
    a method gets a qconfig only when every call of it qualifies.
    """
    from torch.ao.quantization.quantize_fx import fuse_fx

    fused = fuse_fx(copy.deepcopy(traced))
    spec_of: dict[str, OpConfig] = {}  # node name -> config of the quantized producer
    counters: dict[tuple[str, Any], int] = {}
    method_ok: dict[str, bool] = {}

    def quantized_inputs(node: Any, first_only: bool) -> list[OpConfig] | None:
        inputs = [node.args[0]] if first_only and node.args else node.all_input_nodes
        inputs = [
            i
            for i in inputs
            if hasattr(i, "op") and not (i.op == "call_method" and i.target in _SHAPE_METHODS)
        ]
        if not inputs or any(i.name not in spec_of for i in inputs):
            return None
        return [spec_of[i.name] for i in inputs]

    for node in fused.graph.nodes:
        if node.op == "call_module":
            module = fused.get_submodule(node.target)
            if node.target in static:
                spec_of[node.name] = static[node.target]
            elif isinstance(module, _GLUE_MODULES):
                src = quantized_inputs(node, first_only=True)
                if src:
                    spec_of[node.name] = src[0]
                    mapping.set_module_name(node.target, qconfig(src[0]))
        elif node.op == "call_function":
            scope = ""
            index = counters.get((scope, node.target), 0)
            counters[(scope, node.target)] = index + 1
            if node.target in _GLUE_FUNCTIONS:
                src = quantized_inputs(node, first_only=node.target is not torch.cat)
                if node.target in (operator.add, torch.add, operator.mul, torch.mul):
                    src = quantized_inputs(node, first_only=False)
                if src:
                    spec_of[node.name] = src[0]
                    mapping.set_module_name_object_type_order(
                        scope, node.target, index, qconfig(src[0])
                    )
        elif node.op == "call_method" and node.target in _GLUE_METHODS:
            src = quantized_inputs(node, first_only=True)
            method_ok[node.target] = method_ok.get(node.target, True) and bool(src)
            if src:
                spec_of[node.name] = src[0]
    for method, ok in method_ok.items():
        if ok:
            # Shape methods share their input's qparams; the spec only fills the qconfig.
            mapping.set_object_type(method, qconfig(next(iter(static.values()))))


def cpu_has_vnni() -> bool:
    """Whether fbgemm's int8 dot products accumulate in int32 (VNNI) on this CPU.

    Without VNNI (AVX2 only), fbgemm sums pairs of u8*s8 products in saturating int16,
    so full-range activations can overflow; ``reduce_range=True`` avoids it. Honours
    ``FBGEMM_ENABLE_INSTRUCTIONS``, which can force fbgemm below what the CPU has.
    """
    forced = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper()
    if forced and "VNNI" not in forced and "AVX512" not in forced:
        return False
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class SaturationWarning(UserWarning):
    """Full-range int8 activations on a CPU whose int8 kernels can saturate."""


# -- static ops through torch.ao's FX rewrite (the graph builder of the static rows) ----
def _convert_fx(
    model: nn.Module,
    plan: Plan,
    fx_ops: list[str],
    stats: CalibrationStats,
    used_keys: list[str],
    kernels: dict[str, str],
) -> nn.Module:
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    act_cls, weight_cls = _observer_classes()

    def qconfig(cfg: OpConfig) -> Any:
        return QConfig(
            activation=act_cls.with_args(spec=cfg.activation),
            weight=weight_cls.with_args(spec=cfg.weight),
        )

    mapping = QConfigMapping().set_global(None)
    for fqn in fx_ops:
        mapping.set_module_name(fqn, qconfig(plan[fqn]))
    traced = _traced(model)
    _add_glue_qconfigs(mapping, traced, {f: plan[f] for f in fx_ops}, qconfig)
    prepared = prepare_fx(traced, mapping, example_inputs=())
    from autoquant.observers import activation_qparams

    # Ops like pooling, reshapes and ReLU6 share their input's observer instance: one
    # instance observes several nodes; the producer (first in graph order) is its key.
    observed: dict[int, list[torch.fx.Node]] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and isinstance(prepared.get_submodule(node.target), act_cls):
            observed.setdefault(id(prepared.get_submodule(node.target)), []).append(node)
    for obs_nodes in observed.values():
        obs = prepared.get_submodule(obs_nodes[0].target)
        source = _after_clamps(prepared, obs_nodes[0], act_cls)
        key = f"node:{source.name}"
        if key not in stats:
            raise CalibrationError(
                f"calibration statistics have no entry {key!r}: they were collected on a "
                "different model. Calibrate this model again."
            )
        obs.qparams = activation_qparams(stats[key], _tensor_spec(prepared, obs, obs_nodes, plan))
        used_keys.append(key)
    converted = convert_fx(prepared)
    left_float = [f for f in fx_ops if not _is_torch_quantized(converted.get_submodule(f))]
    if left_float:
        raise UnsupportedConfigError(
            f"torch's FX convert left {left_float} in float although the plan quantizes "
            "them statically; this op/config combination has no x86 static kernel. "
            "Use approach='dynamic' or map these ops to None."
        )
    for fqn in fx_ops:
        kernels[fqn] = _FX_LABEL.format(type(converted.get_submodule(fqn)).__name__)
    return converted


def _tensor_spec(
    gm: torch.fx.GraphModule, obs: Any, obs_nodes: list[torch.fx.Node], plan: Plan
) -> QuantSpec:
    """The spec of one quantized tensor: its producer's, with reduce_range when a
    consumer's plan asks for it.

    A plan's activation spec is the op's *input* spec, but in a graph the tensor
    between two quantized ops is quantized once, by its producer's observer; a
    consumer whose kernel must not see full-range inputs (see ``Capability.saturates``)
    would otherwise get them whatever its own spec says.
    """
    spec = obs.spec
    # Consumers, looking through clamps: a quantized ReLU6 keeps its input's qparams,
    # so the op after it reads the producer's integers whatever its own observer says.
    todo, seen = list(obs_nodes), set()
    while todo:
        node = todo.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if _is_clamp(gm, user) or (
                user.op == "call_module"
                and isinstance(gm.get_submodule(str(user.target)), type(obs))
            ):
                todo.append(user)
                continue
            cfg = plan.get(str(user.target)) if user.op == "call_module" else None
            if cfg is not None and cfg.activation is not None and cfg.activation.reduce_range:
                return spec.replace(reduce_range=True)
    return spec


# -- one op at a time: the per-op builders of the rows -----------------------------------
def _build_static(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    """Static op of a model torch.fx cannot trace: one quantized island per op."""
    q, qp = quantized_weight(module.weight, cfg)
    in_qp = calibrated_qparams(stats, f"in:{fqn}", cfg, fqn)
    out_qp = calibrated_qparams(stats, f"out:{fqn}", cfg, fqn)
    if isinstance(module, nn.Linear):
        return StaticLinear(module, q, qp, in_qp, out_qp)
    return StaticConv(module, q, qp, in_qp, out_qp)


def _build_dynamic_linear(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    q, qp = quantized_weight(module.weight, cfg)
    assert cfg.activation is not None
    return DynamicLinear(module, q, qp, reduce_range=cfg.activation.reduce_range)


def _build_dynamic_rnn(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import PlaceholderObserver, QConfig

    _, weight_cls = _observer_classes()
    float_copy = copy.deepcopy(module)
    float_copy.qconfig = QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.quint8, is_dynamic=True),
        weight=weight_cls.with_args(spec=cfg.weight),
    )
    cls = nnqd.LSTM if isinstance(module, nn.LSTM) else nnqd.GRU
    return cls.from_float(float_copy)


def _build_weight_only_int8(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    q, qp = quantized_weight(module.weight, cfg)
    if qp.axis is None:  # the kernel takes one scale per output row
        qp = QParams(
            scale=qp.scale.expand(module.out_features).clone(),
            zero_point=qp.zero_point.expand(module.out_features).clone(),
            qmin=qp.qmin,
            qmax=qp.qmax,
            dtype=qp.dtype,
            axis=0,
        )
    return WeightOnlyInt8Linear(module, q, qp)


def _build_weight_only_int4(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    return WeightOnlyInt4Linear(module, *quantized_weight(module.weight, cfg))


def _build_embedding(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    return WeightOnlyEmbedding(module, *quantized_weight(module.weight, cfg))


# The real integer kernels, in the order Backend.find tries them; the shared simulated
# rows (autoquant.backends.fake_quant) follow as the fallback.
_ROWS = [
    Capability(
        op_types=("Linear", "Conv1d"),
        approach="static",
        weight=SpecSupport(
            dtypes=("int8",), granularities=("per_tensor", "per_channel"), observers=W_OBSERVERS
        ),
        activation=SpecSupport(dtypes=("uint8",), observers=ACT_OBSERVERS),
        # The x86 engine runs Linear on fbgemm and picks fbgemm or oneDNN for conv.
        kernel="x86 int8 engine: quantized::linear (fbgemm), quantized::conv1d (fbgemm/oneDNN)",
        build=_build_static,
        graph_build=_convert_fx,
        reads=("in", "out"),
    ),
    Capability(
        op_types=("Conv2d",),
        approach="static",
        weight=SpecSupport(
            dtypes=("int8",), granularities=("per_tensor", "per_channel"), observers=W_OBSERVERS
        ),
        activation=SpecSupport(dtypes=("uint8",), observers=ACT_OBSERVERS),
        kernel="x86 int8 engine: quantized::conv2d (fbgemm/oneDNN)",
        build=_build_static,
        graph_build=_convert_fx,
        reads=("in", "out"),
        # Measured (scripts/kernel_saturation.py, torch 2.13, AVX512-VNNI CPU): fbgemm's
        # depthwise kernel (groups == channels > 100 with "same" padding) is off by ~45
        # output steps at full range and exact at reduce_range; dense and grouped convs,
        # Conv1d and Linear are exact. Smaller depthwise convs go to oneDNN today, but
        # that routing is torch's choice, so every depthwise Conv2d is treated alike.
        saturates=("depthwise",),
    ),
    Capability(
        op_types=("Linear",),
        approach="dynamic",
        weight=SpecSupport(
            dtypes=("int8",), granularities=("per_tensor", "per_channel"), observers=W_OBSERVERS
        ),
        activation=SpecSupport(dtypes=("uint8",), schemes=("asym",)),
        kernel=DynamicLinear.kernel,
        build=_build_dynamic_linear,
    ),
    Capability(
        op_types=("LSTM", "GRU"),
        approach="dynamic",
        weight=SpecSupport(dtypes=("int8",), observers=W_OBSERVERS),
        # torch's quantized RNN cells hard-code reduce_range=True.
        activation=SpecSupport(dtypes=("uint8",), schemes=("asym",), reduce_range=(True,)),
        kernel="quantized::quantized_lstm/gru (dynamic int8)",
        build=_build_dynamic_rnn,
    ),
    Capability(
        op_types=("Linear",),
        approach="weight_only",
        weight=SpecSupport(
            dtypes=("int8",),
            schemes=("sym",),
            granularities=("per_tensor", "per_channel"),
            observers=W_OBSERVERS,
        ),
        activation=None,
        kernel=WeightOnlyInt8Linear.kernel,
        build=_build_weight_only_int8,
    ),
    Capability(
        op_types=("Linear",),
        approach="weight_only",
        weight=SpecSupport(
            dtypes=("int4", "uint4"), granularities=("per_group",), observers=W_OBSERVERS
        ),
        activation=None,
        kernel=WeightOnlyInt4Linear.kernel,
        build=_build_weight_only_int4,
    ),
    Capability(
        op_types=("Embedding",),
        approach="weight_only",
        weight=SpecSupport(
            dtypes=ALL_DTYPES, granularities=("per_channel",), observers=W_OBSERVERS
        ),
        activation=None,
        kernel=WeightOnlyEmbedding.kernel,
        build=_build_embedding,
    ),
]


@register_backend
class X86Backend(Backend):
    """fbgemm/oneDNN int8 kernels (the ``x86`` quantized engine) plus CPU weight-only kernels."""

    name = "x86"
    engine = "x86"

    def prepare(self) -> None:
        self._require_engine()

    def _require_engine(self) -> None:
        engines = torch.backends.quantized.supported_engines
        if self.engine not in engines:
            raise UnsupportedConfigError(
                f"backend 'x86' needs torch's {self.engine!r} quantized engine, but this "
                f"torch build offers {engines}. On ARM use a qnnpack-based backend."
            )
        if torch.backends.quantized.engine != self.engine:
            # Packed weights are engine specific; pack them for the engine we run on.
            torch.backends.quantized.engine = self.engine

    def module_problem(self, module: nn.Module, cfg: OpConfig, cap: Capability) -> str | None:
        weight = getattr(module, "weight", None)
        gs = cfg.weight.group_size
        if gs is not None and weight is not None:
            k = weight[0].numel()
            if k % gs:
                return (
                    f"group_size={gs} must divide the op's {k} input features; "
                    f"pick one of {[g for g in (32, 64, 128, 256) if k % g == 0] or 'none: use per_channel'}."
                )
        if isinstance(module, nn.Embedding) and module.max_norm is not None:
            return (
                "Embedding with max_norm renormalises its float weights on every lookup and "
                "cannot be stored as integers; map it to None."
            )
        if (
            not cap.simulated
            and isinstance(module, (nn.Conv1d, nn.Conv2d))
            and module.padding_mode != "zeros"
        ):
            return (
                f"padding_mode={module.padding_mode!r}: the int8 conv kernels pad with zeros "
                "only; map this op to None or use the simulated backend."
            )
        return None

    def calibration_graph(self, model: nn.Module) -> torch.fx.GraphModule | None:
        from torch.ao.quantization.quantize_fx import fuse_fx

        try:
            return fuse_fx(_traced(model))
        except Exception:  # noqa: BLE001 - any tracing failure means "use module mode"
            return None

    def before_build(self, plan: Plan, caps: dict[str, Capability]) -> None:
        at_risk = [
            f
            for f, c in caps.items()
            if not c.simulated
            and c.activation is not None
            and not plan[f].activation.reduce_range
            and plan.op_types[f] in LINEAR_CONV
        ]
        if at_risk and not cpu_has_vnni():
            warnings.warn(
                f"this CPU has no VNNI: fbgemm's int8 kernels accumulate pairs in int16 and "
                f"can saturate with full-range activations, as planned for {at_risk[:5]}"
                f"{' ...' if len(at_risk) > 5 else ''}. Set reduce_range=True on their "
                "activation spec (or let the tuner search it).",
                SaturationWarning,
                stacklevel=4,
            )

    def graph_target(self, qmodel: nn.Module, fqn: str) -> str:
        if _is_fused_float(qmodel.get_submodule(fqn)):
            # torch.fx fused it with its ReLU (and folded BN): swap the op inside.
            return f"{fqn}.0"
        return fqn


register_capabilities(X86Backend.name, [*_ROWS, *SIMULATED_ROWS])
