"""The ``cuda`` backend: the same plans on NVIDIA GPUs (int8, fp8, int4 weight-only, bf16).

Its rows (real kernels, :mod:`autoquant.backends._cuda_modules`):

============================  ==============================================  =========
row                           kernel                                          min. cc
============================  ==============================================  =========
static int8 Linear            ``torch._int_mm``, calibrated input scale        8.0
dynamic int8 Linear           ``torch._int_mm``, per-token/per-tensor scales   8.0
dynamic fp8 e4m3 row-wise     ``torch._scaled_mm``, per-token x per-channel    8.9
dynamic fp8 e4m3 per-tensor   ``torch._scaled_mm``, one scale each             8.9
int4 weight-only per-group    tinygemm ``aten._weight_int4pack_mm``            8.0
============================  ==============================================  =========

then the shared simulated rows. :func:`rows_for_compute_capability` is the pure filter
from a compute capability to the rows it runs; :class:`CudaBackend` lists only those for
its GPU, so the tuner never proposes a kernel the device lacks (fp8 on an A100, say).

Ops the plan keeps float (``None``) run in the backend's float dtype: bf16 (the GPU
baseline) or fp16 (``CudaBackend(float_dtype="float16")``); it is one choice per model,
not a per-op search dimension.

A built model lives on the GPU. Called with tensors on the CPU (as the tuner's
``eval_fn`` and the CLI's data do) it moves them to the GPU, casts float inputs to the
float dtype and returns its outputs on the CPU as float32; called with GPU tensors it
returns GPU tensors without copies (what :func:`autoquant.backends._cuda_modules.cuda_latency`
should time).

Calibration: :func:`calibrate_on_device` records the statistics with the float model on
the GPU (the module-mode keys ``in:``/``out:`` that the static row reads).

torchao: :func:`torchao_config` maps one op config to the torchao config that computes
the same format (``None`` where torchao has none); :func:`apply_torchao` applies a plan
with per-module ``filter_fn``. The rows above use our own modules because they follow
the plan's qparams exactly (observers, zero points) and save as plain tensors; torchao
chooses its own qparams.

2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``, cc >= 8.0) is
not a row yet: it needs a pruning approach (a ``PruneSpec`` in the plan), which is being
built separately. The hook is :data:`_ROWS_WITH_MIN_CC`: when the ``prune`` approach is
registered, its cuda row (build: prune 2 of every 4 weights, then
``to_sparse_semi_structured`` on the bf16 weight) is appended there with ``(8, 0)``; the
filter, the table and the tuner need nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoquant.backends._build import calibrated_qparams, quantized_weight
from autoquant.backends._cuda_modules import (
    CudaQuantModule,
    Fp8Linear,
    Int4WeightOnlyLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
)
from autoquant.backends.base import Backend
from autoquant.backends.capability import Capability, SpecSupport, register_capabilities, rows
from autoquant.backends.fake_quant import ACT_OBSERVERS, SIMULATED_ROWS, W_OBSERVERS
from autoquant.backends.registry import register_backend
from autoquant.config import OpConfig
from autoquant.errors import UnsupportedConfigError

if TYPE_CHECKING:
    from autoquant.plan import Plan
    from autoquant.stats import CalibrationStats

__all__ = [
    "CudaBackend",
    "rows_for_compute_capability",
    "min_compute_capability",
    "torchao_config",
    "apply_torchao",
    "calibrate_on_device",
    "device_latency",
    "FLOAT_DTYPES",
]

FLOAT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_MIN_DEVICE_CC = (8, 0)  # bf16 tensor cores: the baseline itself needs Ampere


# -- per-op builders -------------------------------------------------------------------
def _build_int8_static(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    q, qp = quantized_weight(module.weight, cfg)
    return Int8StaticLinear(module, q, qp, calibrated_qparams(stats, f"in:{fqn}", cfg, fqn))


def _build_int8_dynamic(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    q, qp = quantized_weight(module.weight, cfg)
    assert cfg.activation is not None
    return Int8DynamicLinear(module, q, qp, per_token=cfg.activation.granularity == "per_channel")


def _build_fp8(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    return Fp8Linear(module, rowwise=cfg.weight.granularity == "per_channel")


def _build_int4(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    return Int4WeightOnlyLinear(module, *quantized_weight(module.weight, cfg))


_INT8_W = SpecSupport(
    dtypes=("int8",),
    schemes=("sym",),
    granularities=("per_channel", "per_tensor"),
    observers=W_OBSERVERS,
    reduce_range=(False,),
)


def _fp8(granularity: str) -> SpecSupport:
    return SpecSupport(
        dtypes=("fp8_e4m3",), schemes=("sym",), granularities=(granularity,), reduce_range=(False,)
    )


# (row, minimum compute capability). The order is Backend.find's order.
_ROWS_WITH_MIN_CC: list[tuple[Capability, tuple[int, int]]] = [
    (
        Capability(
            op_types=("Linear",),
            approach="static",
            weight=_INT8_W,
            activation=SpecSupport(
                dtypes=("int8", "uint8"), observers=ACT_OBSERVERS, reduce_range=(False,)
            ),
            kernel=Int8StaticLinear.kernel,
            build=_build_int8_static,
            reads=("in",),
        ),
        (8, 0),
    ),
    (
        Capability(
            op_types=("Linear",),
            approach="dynamic",
            weight=_INT8_W,
            # per_channel on a dynamic activation = one scale per token.
            activation=SpecSupport(
                dtypes=("int8",),
                schemes=("sym",),
                granularities=("per_channel", "per_tensor"),
                reduce_range=(False,),
            ),
            kernel=Int8DynamicLinear.kernel,
            build=_build_int8_dynamic,
        ),
        (8, 0),
    ),
    (
        Capability(
            op_types=("Linear",),
            approach="dynamic",
            weight=_fp8("per_channel"),
            activation=_fp8("per_channel"),
            kernel=Fp8Linear.kernel + ", row-wise scales",
            build=_build_fp8,
        ),
        # torch runs row-wise scaled fp8 on sm89 (CUTLASS 2.x) and sm90 (CUTLASS 3).
        (8, 9),
    ),
    (
        Capability(
            op_types=("Linear",),
            approach="dynamic",
            weight=_fp8("per_tensor"),
            activation=_fp8("per_tensor"),
            kernel=Fp8Linear.kernel + ", per-tensor scales",
            build=_build_fp8,
        ),
        (8, 9),
    ),
    (
        Capability(
            op_types=("Linear",),
            approach="weight_only",
            weight=SpecSupport(
                dtypes=("int4", "uint4"),
                granularities=("per_group",),
                observers=W_OBSERVERS,
                reduce_range=(False,),
            ),
            activation=None,
            kernel=Int4WeightOnlyLinear.kernel,
            build=_build_int4,
        ),
        (8, 0),
    ),
]


def rows_for_compute_capability(major: int, minor: int) -> list[Capability]:
    """The real-kernel rows a GPU of compute capability ``major.minor`` runs (pure).

    sm80/sm86 (A100, A10, RTX 30xx): int8 static/dynamic, int4 weight-only. sm89/sm90
    (L4, RTX 40xx, H100/H200): those and fp8. Below 8.0: none (no bf16 tensor cores).
    """
    for name, value in (("major", major), ("minor", minor)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"compute capability {name} must be an int >= 0, but got {value!r}.")
    return [row for row, need in _ROWS_WITH_MIN_CC if (major, minor) >= need]


def min_compute_capability(cap: Capability) -> tuple[int, int] | None:
    """The compute capability ``cap`` needs, or None for rows that are not cuda's own."""
    for row, need in _ROWS_WITH_MIN_CC:
        if row is cap:
            return need
    return None


def _device_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def _no_cuda_message() -> str:
    return (
        "backend 'cuda' needs an NVIDIA GPU, but torch.cuda.is_available() is False "
        f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}). Install a "
        "CUDA build of torch on a machine with a GPU, or use backend=x86 or "
        "backend=simulated."
    )


# -- the backend -----------------------------------------------------------------------
@register_backend
class CudaBackend(Backend):
    """int8 / fp8 / int4 weight-only kernels on an NVIDIA GPU, bf16 (or fp16) elsewhere.

    Args:
        device: the CUDA device the built models run on.
        float_dtype: ``"bfloat16"`` (default, the GPU baseline) or ``"float16"``: the
            dtype of every op the plan keeps float.
        compute_capability: the (major, minor) to list rows for; the device's own by
            default. Without a GPU every row is listed (the feature table), and ``build``
            refuses with an error that says so.
    """

    name = "cuda"

    def __init__(
        self,
        *,
        device: str | torch.device = "cuda",
        float_dtype: str = "bfloat16",
        compute_capability: tuple[int, int] | None = None,
    ) -> None:
        if float_dtype not in FLOAT_DTYPES:
            raise UnsupportedConfigError(
                f"CudaBackend float_dtype must be one of {list(FLOAT_DTYPES)}, but got "
                f"{float_dtype!r}."
            )
        self.device = torch.device(device)
        self.float_dtype = FLOAT_DTYPES[float_dtype]
        self._cc = compute_capability

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        return self._cc if self._cc is not None else _device_capability(self.device)

    def capabilities(self) -> list[Capability]:
        cc = self.compute_capability
        mine = rows(self.name)
        if cc is None:
            return mine
        allowed = {id(c) for c in rows_for_compute_capability(*cc)}
        return [c for c in mine if c.simulated or id(c) in allowed]

    def module_problem(self, module: nn.Module, cfg: OpConfig, cap: Capability) -> str | None:
        if cap.simulated or not isinstance(module, nn.Linear):
            return None
        k, n = module.in_features, module.out_features
        if cfg.weight.dtype == "fp8_e4m3" and (k % 16 or n % 16):
            return (
                f"torch._scaled_mm needs in and out features divisible by 16, but this "
                f"Linear is {k} -> {n}; use int8 or map it to None."
            )
        if cfg.weight.dtype == "int8" and (k % 8 or n % 8):
            return (
                f"torch._int_mm needs in and out features divisible by 8, but this Linear "
                f"is {k} -> {n}; map it to None."
            )
        gs = cfg.weight.group_size
        if gs is not None and (k % gs or k % 32):
            fits = [g for g in (32, 64, 128, 256) if k % g == 0] if k % 32 == 0 else []
            return (
                f"the int4 kernel needs group_size={gs} and 32 to divide the op's {k} input "
                f"features; pick one of {fits or 'none: use int8'}."
            )
        return None

    def prepare(self) -> None:
        if self.device.type != "cuda":
            return  # CPU runs of the same modules (tests of the math)
        if not torch.cuda.is_available():
            raise UnsupportedConfigError(_no_cuda_message())
        cc = self.compute_capability
        assert cc is not None
        if cc < _MIN_DEVICE_CC:
            raise UnsupportedConfigError(
                f"backend 'cuda' needs compute capability >= 8.0 (bf16 tensor cores), but "
                f"{torch.cuda.get_device_name(self.device)} is {cc[0]}.{cc[1]}."
            )

    def build(
        self,
        model: nn.Module,
        plan: Plan,
        stats: CalibrationStats | None,
        reuse: Any = None,
    ) -> nn.Module:
        """Build on the CPU (the same quantization math everywhere), then move to the GPU.

        ``reuse`` is not used: its shared float tensors belong to the caller's model,
        which a move to the device must not touch. Every build copies the float model.
        """
        self.prepare()
        qmodel = super().build(model, plan, stats, reuse=None)
        info = qmodel.autoquant_info
        _cast_float_parts(qmodel, self.float_dtype)
        qmodel.to(self.device)
        _install_device_io(qmodel, self.device, self.float_dtype)
        qmodel.autoquant_info = info
        return qmodel

    def calibration_model(self, model: nn.Module) -> nn.Module:
        """Statistics are gathered on the device: a float32 copy of ``model`` on the GPU
        (``model`` itself is not moved); calibration moves each batch to it."""
        import copy

        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise UnsupportedConfigError(_no_cuda_message())
        return copy.deepcopy(model).float().to(self.device)

    def baseline_model(self, model: nn.Module) -> nn.Module:
        """Trials on the GPU are compared with the model in the float dtype on the device
        (:meth:`float_baseline`), not with the fp32 CPU model."""
        return self.float_baseline(model)

    def latency(
        self, model: nn.Module, example_inputs: Any, *, threads: int, warmup: int, repeats: int
    ) -> Any:
        """CUDA events after warm-up and a synchronize, inputs moved to the GPU first
        (:func:`device_latency`); ``threads`` does not apply to the GPU."""
        from autoquant.inputs import as_inputs
        from autoquant.measure import LatencyStats, batch_size_of

        times = device_latency(
            model,
            example_inputs,
            warmup=warmup,
            repeats=repeats,
            device=self.device,
            float_dtype=_dtype_name(self.float_dtype),
        )
        args, kwargs = as_inputs(example_inputs)
        info = getattr(model, "autoquant_info", None)
        return LatencyStats(
            median_ms=times["median_ms"],
            p90_ms=times["p90_ms"],
            mean_ms=times["mean_ms"],
            min_ms=times["min_ms"],
            runs=int(times["repeats"]),
            threads=torch.get_num_threads(),
            batch_size=batch_size_of(args, kwargs),
            simulated_ops=tuple(getattr(info, "simulated", ()) or ()),
        )

    def float_baseline(self, model: nn.Module) -> nn.Module:
        """The GPU baseline of ``model``: every op float, in the float dtype, on the device
        (what a cuda trial's latency and accuracy should be compared with, not the fp32
        CPU model)."""
        from autoquant.plan import Plan

        return self.build(model, Plan.float(model), None)


def _cast_float_parts(qmodel: nn.Module, dtype: torch.dtype) -> None:
    """Floating parameters and buffers of every non-quantized module to ``dtype``; our
    quantized modules keep float32 scales and cast activations themselves, and a
    simulated op keeps its own float32 qparams (its wrapped float op is cast)."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    quantized = [m for m in qmodel.modules() if isinstance(m, CudaQuantModule)]
    inside = {id(s) for m in quantized for s in m.modules()}
    for module in qmodel.modules():
        if id(module) not in inside and not getattr(module, "simulated", False):
            module._apply(cast, recurse=False)


def _map_tensors(value: Any, fn: Any) -> Any:
    from torch.utils._pytree import tree_map

    if isinstance(value, dict) and type(value) is not dict:
        # transformers' ModelOutput (an OrderedDict subclass) keeps its type.
        return type(value)(**{k: _map_tensors(v, fn) for k, v in value.items()})
    return tree_map(lambda t: fn(t) if isinstance(t, torch.Tensor) else t, value)


def _install_device_io(qmodel: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Host inputs go to the device (floats cast to ``dtype``); their outputs come back
    to the host as float32. Device inputs stay put and get device outputs."""
    state = {"host": False}

    def to_device(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu":
            state["host"] = True
        t = t.to(device, non_blocking=True)
        return t.to(dtype) if t.is_floating_point() else t

    def pre(module: nn.Module, args: Any, kwargs: Any) -> Any:
        state["host"] = False
        return _map_tensors(args, to_device), _map_tensors(kwargs, to_device)

    def post(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        if not state["host"]:
            return output
        return _map_tensors(output, lambda t: t.float().cpu() if t.is_floating_point() else t.cpu())

    qmodel.register_forward_pre_hook(pre, with_kwargs=True)
    qmodel.register_forward_hook(post, with_kwargs=True)


register_capabilities(CudaBackend.name, [*(row for row, _ in _ROWS_WITH_MIN_CC), *SIMULATED_ROWS])


# -- calibration on the device -----------------------------------------------------------
def calibrate_on_device(
    model: nn.Module, calib_data: Any, *, device: str | torch.device = "cuda", **kwargs: Any
) -> Any:
    """:func:`autoquant.calibrate` with a float32 copy of ``model`` on the GPU: the
    statistics come from the device's kernels; ``model`` itself is not moved."""
    from autoquant.calibration import calibrate

    # The backend's calibration_model makes the device copy.
    return calibrate(model, calib_data, backend=CudaBackend(device=device), **kwargs)


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in FLOAT_DTYPES.items() if d == dtype)


# -- latency -------------------------------------------------------------------------------
def device_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    warmup: int = 10,
    repeats: int = 50,
    compiled: bool = False,
    device: str | torch.device = "cuda",
    float_dtype: str = "bfloat16",
) -> dict[str, float]:
    """Latency of a model built by this backend in its deployed call: ``example_inputs``
    (any form :func:`autoquant.inputs.as_inputs` takes) are moved to the device first, so
    no host copy is timed; CUDA events after warm-up and a synchronize
    (:func:`~autoquant.backends._cuda_modules.cuda_latency`). ``compiled``: through
    ``torch.compile(mode="reduce-overhead")`` (inductor + CUDA graphs), compiled during
    the warm-up. The hook :mod:`autoquant.measure` can call for ``backend="cuda"``."""
    from autoquant.backends._cuda_modules import cuda_latency
    from autoquant.inputs import as_inputs

    if not torch.cuda.is_available():
        raise UnsupportedConfigError(_no_cuda_message())
    dtype = FLOAT_DTYPES[float_dtype]

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        return t.to(dtype) if t.is_floating_point() else t

    args, kwargs = as_inputs(example_inputs)
    args, kwargs = _map_tensors(args, move), _map_tensors(kwargs, move)
    # forward itself: the inputs are on the device already, so the host I/O hooks would
    # only add Python time to every call.
    runner = torch.compile(model.forward, mode="reduce-overhead") if compiled else model.forward
    return cuda_latency(lambda: runner(*args, **kwargs), warmup=warmup, repeats=repeats)


# -- torchao ------------------------------------------------------------------------------
def torchao_config(cfg: OpConfig | None) -> Any:
    """The torchao config computing ``cfg``'s format on a Linear, or None where it has none.

    Mapped: dynamic int8 per-token x per-channel (``Int8DynamicActivationInt8WeightConfig``),
    dynamic fp8 row-wise / per-tensor (``Float8DynamicActivationFloat8WeightConfig``), int4
    weight-only per-group with min/max ranges (``Int4WeightOnlyConfig``, tinygemm layout).
    Not mapped: static int8 (torchao needs its own activation scale), per-tensor dynamic
    int8 activations, other observers. torchao picks its own qparams (its int4 zero
    point is a float), so outputs agree with ours to quantization noise, not bit for bit.
    """
    if cfg is None:
        return None
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
        PerTensor,
    )

    w, a = cfg.weight, cfg.activation
    if cfg.approach == "dynamic" and a is not None:
        if w.dtype == a.dtype == "fp8_e4m3":
            gran = PerRow() if w.granularity == "per_channel" else PerTensor()
            if a.granularity == w.granularity:
                return Float8DynamicActivationFloat8WeightConfig(granularity=gran)
        if (
            w.dtype == a.dtype == "int8"
            and w.granularity == a.granularity == "per_channel"
            and w.scheme == a.scheme == "sym"
            and w.observer == "minmax"
        ):
            return Int8DynamicActivationInt8WeightConfig()
    if (
        cfg.approach == "weight_only"
        and w.dtype in ("int4", "uint4")
        and w.granularity == "per_group"
        and w.scheme == "asym"
        and w.observer == "minmax"
        and w.group_size in (32, 64, 128, 256)
    ):
        return Int4WeightOnlyConfig(
            group_size=w.group_size,
            int4_packing_format="tile_packed_to_4d",
            int4_choose_qparams_algorithm="tinygemm",
        )
    return None


def torchao_plan(plan: Plan) -> tuple[dict[str, Any], list[str]]:
    """(fqn -> torchao config for the ops torchao fits, the quantized ops it does not)."""
    mapped: dict[str, Any] = {}
    left: list[str] = []
    for fqn, cfg in plan.items():
        if cfg is None:
            continue
        ao = torchao_config(cfg) if plan.op_types[fqn] == "Linear" else None
        if ao is None:
            left.append(fqn)
        else:
            mapped[fqn] = ao
    return mapped, left


def apply_torchao(model: nn.Module, plan: Plan, *, ops: Iterable[str] | None = None) -> list[str]:
    """Quantize ``model`` in place with torchao, one ``quantize_`` per op (``filter_fn``
    selects it by name); returns the ops applied. ``model`` should already be on the GPU
    in bf16. Ops torchao does not fit are left alone (build them with the backend)."""
    from torchao.quantization import quantize_

    mapped, _ = torchao_plan(plan)
    wanted = set(mapped) if ops is None else set(ops) & set(mapped)
    for fqn in sorted(wanted):
        quantize_(model, mapped[fqn], filter_fn=lambda m, name, fqn=fqn: name == fqn)
    return sorted(wanted)
