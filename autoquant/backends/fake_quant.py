"""Simulated (fake-quant) rows: every format on float kernels, shared by the backends.

For accuracy studies of formats no kernel implements. The ``simulated`` backend is
exactly these rows; ``x86`` lists them after its real kernels, as its fallback. Nothing
built from them is faster than float, and every op they build is marked simulated, so
no latency from it is ever reported as quantized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoquant.backends._build import simulated_op
from autoquant.backends._modules import SimulatedOp
from autoquant.backends.capability import Capability, SpecSupport
from autoquant.config import DTYPES, OpConfig

if TYPE_CHECKING:
    from torch import nn

    from autoquant.stats import CalibrationStats

__all__ = ["SIMULATED_ROWS", "ACT_OBSERVERS", "W_OBSERVERS", "LINEAR_CONV"]

ALL_DTYPES = tuple(DTYPES)
ACT_OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "kl")
W_OBSERVERS = ("minmax", "mse", "percentile")
LINEAR_CONV = ("Linear", "Conv1d", "Conv2d")


def build_simulated(
    module: nn.Module, fqn: str, cfg: OpConfig, cap: Capability, stats: CalibrationStats | None
) -> nn.Module:
    return simulated_op(module, cfg, fqn, stats)


SIMULATED_ROWS = (
    Capability(
        op_types=LINEAR_CONV,
        approach="static",
        weight=SpecSupport(
            dtypes=ALL_DTYPES,
            granularities=("per_tensor", "per_channel"),
            observers=W_OBSERVERS,
        ),
        activation=SpecSupport(dtypes=ALL_DTYPES, observers=ACT_OBSERVERS),
        kernel=SimulatedOp.kernel,
        build=build_simulated,
        reads=("in",),
        simulated=True,
    ),
    Capability(
        op_types=LINEAR_CONV,
        approach="dynamic",
        weight=SpecSupport(
            dtypes=ALL_DTYPES,
            granularities=("per_tensor", "per_channel"),
            observers=W_OBSERVERS,
        ),
        activation=SpecSupport(dtypes=ALL_DTYPES),
        kernel=SimulatedOp.kernel,
        build=build_simulated,
        simulated=True,
    ),
    Capability(
        op_types=LINEAR_CONV,
        approach="weight_only",
        weight=SpecSupport(
            dtypes=ALL_DTYPES,
            granularities=("per_tensor", "per_channel", "per_group"),
            observers=W_OBSERVERS,
            group_sizes=(16, 32, 64, 128, 256),
        ),
        activation=None,
        kernel=SimulatedOp.kernel,
        build=build_simulated,
        simulated=True,
    ),
)
