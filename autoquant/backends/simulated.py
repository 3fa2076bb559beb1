"""The simulated backend: every config runs as fake-quant on float kernels.

For accuracy studies of formats no kernel here implements (4-bit activations, say) and
for platforms without an int8 engine. It is the shared simulated rows
(:mod:`autoquant.backends.fake_quant`) and nothing else: the generic
:meth:`~autoquant.backends.base.Backend.build` runs them.
"""

from __future__ import annotations

from autoquant.backends.base import Backend
from autoquant.backends.capability import register_capabilities
from autoquant.backends.fake_quant import SIMULATED_ROWS
from autoquant.backends.registry import register_backend

__all__ = ["SimulatedBackend"]


@register_backend
class SimulatedBackend(Backend):
    name = "simulated"


register_capabilities(SimulatedBackend.name, SIMULATED_ROWS)
