"""The simulated backend: every config runs as fake-quant on float kernels.

For accuracy studies of formats no kernel here implements (4-bit activations, say) and
for platforms without an int8 engine. Nothing it builds is faster than float, and every
op it builds is marked simulated, so no latency from it is ever reported as quantized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from autoquant.backends._build import copy_model, set_submodule, simulated_op
from autoquant.backends.base import (
    Backend,
    BuildReuse,
    Capability,
    QuantizedModelInfo,
    register_backend,
)
from autoquant.errors import CalibrationError

if TYPE_CHECKING:
    from autoquant.stats import CalibrationStats
    from autoquant.plan import Plan

__all__ = ["SimulatedBackend"]


@register_backend
class SimulatedBackend(Backend):
    name = "simulated"

    def capabilities(self) -> list[Capability]:
        from autoquant.backends.x86 import _CAPABILITIES

        return [c for c in _CAPABILITIES if c.simulated]

    def build(
        self,
        model: nn.Module,
        plan: Plan,
        stats: CalibrationStats | None,
        reuse: BuildReuse | None = None,
    ) -> nn.Module:
        self.check(plan, model)
        quantized = [f for f, c in plan.items() if c is not None]
        if stats is None and any(plan[f].approach == "static" for f in quantized):
            raise CalibrationError(
                "static ops need calibration data: pass calib_data= to quantize()."
            )
        qmodel = copy_model(model, quantized, share_float=reuse is not None)
        kernels, keys = {}, []
        for fqn in quantized:
            cfg = plan[fqn]
            set_submodule(qmodel, fqn, simulated_op(model.get_submodule(fqn), cfg, fqn, stats))
            kernels[fqn] = self.find(plan.op_types[fqn], cfg).kernel
            if cfg.approach == "static":
                keys.append(f"in:{fqn}")
        qmodel.eval()
        qmodel.autoquant_info = QuantizedModelInfo(
            plan=plan,
            backend=self.name,
            mode="eager",
            kernels=kernels,
            simulated=tuple(quantized),
            stat_keys=tuple(keys),
        )
        return qmodel
