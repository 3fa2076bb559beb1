"""The deployed form of a built model: compiled with Inductor, weights frozen.

A model from :meth:`Backend.build` runs eagerly: each int8 op quantizes its input,
calls its oneDNN/``_int_mm`` kernel and rescales, one Python call per step. Deployed,
the same module runs through ``torch.compile`` (Inductor) with ``freezing``: the
elementwise quantize/rescale steps fuse with their neighbours, and frozen weights let
Inductor lower the oneDNN int8 calls with their packed weights as constants (the
compiled qlinear/qconv need them to be). The model object, its ``state_dict`` keys and
its ``autoquant_info`` stay as they were; only ``info.execution`` changes.

Compiling happens at the first call of each input shape and costs seconds, which is why
the tuner evaluates candidates eagerly and deploys only what it hands back.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from torch import nn

from autoquant.backends.capability import QuantizedModelInfo

__all__ = ["deploy", "undeploy", "compile_frozen", "EAGER", "COMPILED"]

# Inductor's oneDNN int8 lowering copy-constructs a tensor from a tensor and torch warns
# about it on every compiled qlinear/qconv (torch 2.13): torch's own code, nothing a user
# did or can fix, so it is hidden for that module and message only.
warnings.filterwarnings(
    "ignore",
    message="To copy construct from a tensor",
    category=UserWarning,
    module="torch._inductor.mkldnn_lowerings",
)

EAGER = "eager"
COMPILED = "compiled (torch.compile inductor, freezing)"


def _info(qmodel: nn.Module) -> QuantizedModelInfo:
    info = getattr(qmodel, "autoquant_info", None)
    if not isinstance(info, QuantizedModelInfo):
        raise TypeError(
            "deploy() takes a model built by autoquant (quantize, load, Backend.build), but "
            f"this {type(qmodel).__name__} has no autoquant_info. To compile any other "
            "model, call torch.compile on it."
        )
    return info


def compile_frozen(fn: Any, *, dynamic: bool | None = None) -> Any:
    """``fn`` (a module or its call) compiled the way :func:`deploy` compiles: Inductor
    with ``freezing=True``, called under ``torch.no_grad``. For timing one op in the
    deployed execution mode (a per-op latency table) without an ``autoquant_info``."""
    compiled = torch.compile(fn, dynamic=dynamic)

    def run(*args: Any, **kwargs: Any) -> Any:
        # freezing is read from Inductor's config when a graph compiles (first call of a
        # shape), and the compiled oneDNN int8 ops need it (packed weights as constants).
        # Passing it as torch.compile(options=...) instead did not freeze (the lowering
        # then fails on a reloaded model), so it is patched around every call; that
        # costs ~0.1 ms per call (digits CNN batch 1: 0.38 vs 0.28 ms), left for later.
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return run


def deploy(qmodel: nn.Module, *, dynamic: bool | None = None) -> nn.Module:
    """Make ``qmodel`` (from ``quantize``/``load``/``Backend.build``) run compiled, in place.

    Returns the same module, whose calls now go through ``torch.compile`` (Inductor,
    ``freezing=True``, inference only: calls run under ``torch.no_grad``) and whose
    ``autoquant_info.execution`` says so. ``dynamic`` is passed to ``torch.compile``
    (None: recompile once, then treat a changing batch size as dynamic).

    The weights are frozen into the compiled code at the first call: change the
    model's tensors afterwards (``load_state_dict``) and call :func:`deploy` again.
    Calling it on a model already deployed recompiles it.
    """
    info = _info(qmodel)
    qmodel.eval()
    run = compile_frozen(qmodel._call_impl, dynamic=dynamic)
    # nn.Module.__call__ runs _compiled_call_impl when set (what Module.compile() sets);
    # the module keeps its class, attributes and state_dict keys.
    qmodel._compiled_call_impl = run  # type: ignore[assignment]
    qmodel.autoquant_info = dataclasses.replace(info, execution=COMPILED)
    return qmodel


def undeploy(qmodel: nn.Module) -> nn.Module:
    """Back to eager execution (for debugging with hooks, or to change weights)."""
    info = _info(qmodel)
    qmodel._compiled_call_impl = None  # type: ignore[assignment]
    qmodel.autoquant_info = dataclasses.replace(info, execution=EAGER)
    return qmodel
