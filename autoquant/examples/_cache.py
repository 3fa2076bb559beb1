"""The examples' trained-weights cache: train once per machine, then load.

Weights live as safetensors under ``$AUTOQUANT_CACHE`` (default ``~/.cache/autoquant``),
named by the caller after everything that changes them (architecture, epochs, data,
seed), so a changed recipe never loads stale weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

__all__ = ["cache_dir", "cached_training"]

M = TypeVar("M", bound=nn.Module)


def cache_dir() -> Path:
    root = os.environ.get("AUTOQUANT_CACHE") or Path.home() / ".cache" / "autoquant"
    return Path(root)


def cached_training(
    path: Path,
    empty: Callable[[], M],
    train: Callable[[], M],
    *,
    cache: bool = True,
    threads: int | None = None,
) -> M:
    """``empty()`` with the weights at ``path`` when they exist, else ``train()`` (with
    ``threads`` torch threads, restored afterwards), saved to ``path`` when ``cache``."""
    from safetensors.torch import load_file, save_file

    if cache and path.exists():
        model = empty()
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    import logging

    log = logging.getLogger("autoquant.examples")
    where = f"; cached at {path} for later runs" if cache else ""
    log.info("no trained weights yet: training %s once%s", path.stem, where)
    prev_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model = train()
    finally:
        torch.set_num_threads(prev_threads)
    model.eval()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent reader (test workers) never sees half a file.
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    return model
