"""Building blocks shared by backends: module surgery and per-op replacements."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from autoquant.config import OpConfig
from autoquant.errors import CalibrationError
from autoquant.qparams import QParams, quantize

if TYPE_CHECKING:
    from autoquant.stats import CalibrationStats

__all__ = ["copy_model", "set_submodule", "quantized_weight", "calibrated_qparams", "simulated_op"]


def copy_model(model: nn.Module, replaced: list[str], share_float: bool) -> nn.Module:
    """Deep copy of ``model`` for a build that replaces the ops in ``replaced``.

    The replaced ops are not copied (a placeholder stands in until they are swapped);
    with ``share_float`` the float tensors of everything else are referenced, not copied.
    """
    import copy

    memo: dict[int, object] = {}
    for fqn in replaced:
        memo[id(model.get_submodule(fqn))] = nn.Identity()
    if share_float:
        for t in (*model.parameters(), *model.buffers()):
            memo[id(t)] = t
    return copy.deepcopy(model, memo)


def set_submodule(root: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantized_weight(weight: torch.Tensor, cfg: OpConfig) -> tuple[torch.Tensor, QParams]:
    """Integer weight and its qparams under ``cfg.weight``."""
    from autoquant.observers import weight_qparams

    w = weight.detach().float()
    spec = cfg.weight
    if spec.granularity == "per_group" and w.dim() > 2:
        w = w.reshape(w.shape[0], -1)
    qp = weight_qparams(w, spec)
    return quantize(w, qp), qp


def calibrated_qparams(
    stats: CalibrationStats | None, key: str, cfg: OpConfig, fqn: str
) -> QParams:
    """Activation qparams of ``key`` from calibration statistics, with a clear error."""
    from autoquant.observers import activation_qparams

    assert cfg.activation is not None
    if stats is None:
        raise CalibrationError(
            f"op {fqn!r} uses approach={cfg.approach!r}, which needs calibration data: pass "
            "calib_data= (an iterable of model inputs, ~100 samples) to quantize()."
        )
    if key not in stats:
        raise CalibrationError(
            f"calibration statistics have no entry {key!r} needed by op {fqn!r}: they were "
            "collected on a different model or backend. Calibrate this model again."
        )
    return activation_qparams(stats[key], cfg.activation)


def simulated_op(
    module: nn.Module, cfg: OpConfig, fqn: str, stats: CalibrationStats | None
) -> nn.Module:
    """Fake-quant stand-in for a config that has no integer kernel."""
    import copy

    from autoquant.backends._modules import SimulatedOp

    op = copy.deepcopy(module)
    q, qp = quantized_weight(op.weight, cfg)
    if cfg.approach == "static":
        return SimulatedOp(op, q, qp, input_qp=calibrated_qparams(stats, f"in:{fqn}", cfg, fqn))
    if cfg.approach == "dynamic":
        return SimulatedOp(op, q, qp, dynamic_spec=cfg.activation)
    return SimulatedOp(op, q, qp)
