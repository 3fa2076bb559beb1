"""The execution mode a user deploys: the one place the tuner, the per-op latency table,
the float baselines and the benchmark get it from.

That is ``torch.compile`` (Inductor) with weight freezing, run without autograd: the
same compile as :func:`autoquant.deploy` (``backends._deploy.compile_frozen``), which is
what ``tune`` hands back in the deployed latency mode. Every caller goes through
:func:`deployed`, so the latency the tuner optimises follows it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

__all__ = ["deployed", "bf16_model", "release"]

log = logging.getLogger("autoquant.deploy")


class _Deployed(nn.Module):
    """``model`` compiled, called under no_grad.

    Compiling happens on the first call: a graph Inductor cannot compile then runs eager
    instead of raising, and ``compile_error`` says why.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # Not registered as submodules: train()/eval() on the wrapper must not reach an
        # exported graph (torch.export / PT2E models refuse train()/eval()).
        self.__dict__["model"] = model
        # The same compile as autoquant.deploy (freezing for every compiled shape);
        # importing it also hides Inductor's own copy-construct warning.
        from autoquant.backends._deploy import compile_frozen

        self.__dict__["_compiled"] = compile_frozen(model)
        self._first = True
        self.compile_error: str | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._first:
            import torch._dynamo.config as dynamo_config

            try:
                with dynamo_config.patch(suppress_errors=True), torch.no_grad():
                    out = self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - see below
                # Kernels on quantized tensors (torch.ao modules) may not trace; such a
                # model deploys eager, and says so (``compile_error``).
                self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                log.warning("compile failed, running eager: %s", self.compile_error)
                self.__dict__["_compiled"] = self.model
                with torch.no_grad():
                    out = self.model(*args, **kwargs)
            self._first = False
            return out
        with torch.no_grad():
            return self._compiled(*args, **kwargs)


def deployed(model: nn.Module) -> nn.Module:
    """``model`` as a user deploys it (compiled on its first call; eval mode)."""
    _set_eval(model)
    return _Deployed(model).eval()


def _set_eval(model: nn.Module) -> None:
    try:
        model.eval()
    except NotImplementedError:
        # An exported program's module (PT2E) cannot switch modes; it is exported for
        # inference already (torchao: move_exported_model_to_eval).
        pass


class _Bf16(nn.Module):
    """A bfloat16 copy of a float model that takes and returns float32 tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(torch.bfloat16).eval()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        def down(v: Any) -> Any:
            return (
                v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            )

        out = self.model(*(down(a) for a in args), **{k: down(v) for k, v in kwargs.items()})
        return _up(out)


def _up(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_up(v) for v in value)
    if isinstance(value, dict):
        return {k: _up(v) for k, v in value.items()}
    return value


def bf16_model(model: nn.Module) -> nn.Module:
    """An eager bfloat16 copy of ``model`` (weights and float inputs cast; outputs back to
    float32 so a user's metric sees the dtype it expects). ``model`` is not modified."""
    return _Bf16(model).eval()


def release() -> None:
    """Forget compiled code so the next compile starts fresh.

    Dynamo keeps compiled code per function, with a small limit on variants; after that
    it silently runs eager. The tuner compiles many short-lived models (one per latency
    table entry, baseline and verified plan), so it releases them after each timing.
    """
    torch._dynamo.reset()
