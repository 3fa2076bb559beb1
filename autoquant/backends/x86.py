"""The x86 CPU backend: oneDNN's int8 kernels and the CPU weight-only kernels, on plain tensors.

Every real-kernel row except dynamic LSTM/GRU runs on ``uint8``/``int8`` tensors with
float scales through our own modules (:mod:`autoquant.backends._modules`); static ops
of a traceable model are converted on a torch.fx graph with fusions
(:mod:`autoquant.backends._graph`). Neither quantized tensors nor ``torch.ao`` are on
their build or inference path. Dynamic LSTM/GRU alone still use torch.ao's quantized
RNN modules (nothing else runs them), and their row's kernel label says so.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import TYPE_CHECKING

import torch
import torch.fx
from torch import nn

from autoquant.backends._build import (
    calibrated_qparams,
    quantized_weight,
)
from autoquant.backends._graph import calibration_graph as _calibration_graph
from autoquant.backends._graph import convert_static
from autoquant.backends._modules import (
    BF16Op,
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
from autoquant.config import OpConfig
from autoquant.errors import UnsupportedConfigError
from autoquant.qparams import QParams, quant_range

if TYPE_CHECKING:
    from autoquant.plan import Plan
    from autoquant.stats import CalibrationStats

__all__ = ["X86Backend", "SaturationWarning", "cpu_has_vnni", "cpu_has_bf16"]


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


# -- one op at a time: the per-op builders of the rows -----------------------------------
def _build_static(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    """Static op of a model torch.fx cannot trace: one quantized island per op (float
    in, float out; the kernel dequantizes its own output)."""
    q, qp = quantized_weight(module.weight, cfg)
    in_qp = calibrated_qparams(stats, f"in:{fqn}", cfg, fqn)
    if isinstance(module, nn.Linear):
        return StaticLinear(module, q, qp, in_qp)
    return StaticConv(module, q, qp, in_qp)


def _build_dynamic_linear(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    q, qp = quantized_weight(module.weight, cfg)
    assert cfg.activation is not None
    return DynamicLinear(module, q, qp, reduce_range=cfg.activation.reduce_range)


def _build_dynamic_rnn(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    # The one row still on torch.ao (deprecated upstream): torch has no plain-tensor
    # quantized LSTM/GRU cell, and nothing else in this backend runs them.
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import PlaceholderObserver, QConfig
    from torch.ao.quantization.observer import ObserverBase

    class _PresetWeightObserver(ObserverBase):
        """Hands autoquant's weight qparams to torch.ao's from_float."""

        def __init__(self, **_: object) -> None:
            super().__init__(dtype=torch.qint8, is_dynamic=False)
            per_channel = cfg.weight.granularity == "per_channel"
            sym = cfg.weight.scheme == "sym"
            self.qscheme = (
                (torch.per_channel_symmetric if sym else torch.per_channel_affine)
                if per_channel
                else (torch.per_tensor_symmetric if sym else torch.per_tensor_affine)
            )
            self.ch_axis = cfg.weight.axis
            self.quant_min, self.quant_max = quant_range(cfg.weight.dtype, cfg.weight.reduce_range)
            self.qparams: QParams | None = None

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            from autoquant.observers import weight_qparams

            self.qparams = weight_qparams(w.detach().float(), cfg.weight)
            return w

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            assert self.qparams is not None, "weight observer never saw the weight"
            return self.qparams.scale, self.qparams.zero_point

    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in ("x86", "fbgemm") and "x86" in engines:
        # The RNN's packed weights are engine specific; pack them for x86.
        torch.backends.quantized.engine = "x86"
    float_copy = copy.deepcopy(module)
    float_copy.qconfig = QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.quint8, is_dynamic=True),
        weight=_PresetWeightObserver,
    )
    cls = nnqd.LSTM if isinstance(module, nn.LSTM) else nnqd.GRU
    with warnings.catch_warnings():
        # torch 2.13 warns that quantized tensors and torch.ao are deprecated; this row
        # knows (see above) and the warning would repeat once per layer.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecat.*")
        return cls.from_float(float_copy)


def cpu_has_bf16() -> bool:
    """Whether this CPU and torch build run bfloat16 matmuls/convs natively (oneDNN)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def _build_bf16(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    return BF16Op(module)


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
_SYM_INT8 = SpecSupport(
    # oneDNN's int8 kernels take no weight zero point: symmetric weights only (asym
    # int8 weights fall to the simulated rows).
    dtypes=("int8",),
    schemes=("sym",),
    granularities=("per_tensor", "per_channel"),
    observers=W_OBSERVERS,
)
_ROWS = [
    Capability(
        op_types=("Linear", "Conv1d", "Conv2d"),
        approach="static",
        weight=_SYM_INT8,
        activation=SpecSupport(dtypes=("uint8",), observers=ACT_OBSERVERS),
        kernel="onednn::qlinear_pointwise / qconv_pointwise (uint8 x int8, plain tensors)",
        build=_build_static,
        graph_build=convert_static,
        reads=("in",),
        # Measured (scripts/kernel_saturation.py, torch 2.13, AVX512-VNNI CPU): oneDNN's
        # int8 Linear/Conv1d/Conv2d, depthwise included, are exact at full uint8 range.
        # (torch.ao's fbgemm depthwise kernel, used before issue 10, was not.)
        saturates=(),
    ),
    Capability(
        op_types=("Linear",),
        approach="dynamic",
        weight=_SYM_INT8,
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
        kernel="torch.ao quantized::quantized_lstm/gru (dynamic int8; deprecated quantized tensors, only row left on torch.ao)",
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
    Capability(
        op_types=("Linear", "Conv1d", "Conv2d"),
        approach="bf16",
        # One canonical spelling (config.bf16()): scheme, granularity and observer mean
        # nothing for a float type, so the search space gets one bf16 choice, not many.
        weight=SpecSupport(dtypes=("bf16",), schemes=("sym",), reduce_range=(False,)),
        activation=None,
        kernel=BF16Op.kernel,
        build=_build_bf16,
    ),
]


@register_backend
class X86Backend(Backend):
    """oneDNN int8 kernels and CPU weight-only/bf16 kernels on plain tensors."""

    name = "x86"

    def prepare(self) -> None:
        if not torch.backends.mkldnn.is_available():
            raise UnsupportedConfigError(
                "backend 'x86' runs oneDNN's int8 kernels, but this torch build has no "
                "oneDNN (torch.backends.mkldnn.is_available() is False). Install a torch "
                "build for x86 CPUs, or use backend='simulated'."
            )

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
        try:
            return _calibration_graph(model)
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
        bf16 = [f for f, c in caps.items() if c.approach == "bf16"]
        if bf16 and not cpu_has_bf16():
            raise UnsupportedConfigError(
                f"the plan runs {bf16[:5]}{' ...' if len(bf16) > 5 else ''} in bf16, but this "
                f"CPU ({torch.backends.cpu.get_cpu_capability()}) or torch build has no native "
                "bfloat16 kernels (needs AVX512-BF16 or AMX and oneDNN); emulated bf16 would "
                "be slower than fp32. Map these ops to None (fp32) or to an int8 config."
            )
        if at_risk and not cpu_has_vnni():
            warnings.warn(
                f"this CPU has no VNNI: the int8 kernels accumulate pairs in int16 and "
                f"can saturate with full-range activations, as planned for {at_risk[:5]}"
                f"{' ...' if len(at_risk) > 5 else ''}. Set reduce_range=True on their "
                "activation spec (or let the tuner search it).",
                SaturationWarning,
                stacklevel=4,
            )


register_capabilities(X86Backend.name, [*_ROWS, *SIMULATED_ROWS])
