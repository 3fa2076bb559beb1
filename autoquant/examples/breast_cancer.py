"""An MLP on scikit-learn's bundled breast-cancer data, on the features in their own units:
the embedded default model, one where the accuracy goal binds.

The 30 features span five orders of magnitude (worst area up to ~4250, smoothness ~0.1).
The float model copes; int8 activations of its input layer cannot: one per-tensor scale
set by the largest feature rounds the small ones to zero, so the plans that quantize
``fc1``'s input miss a 1% goal by several points, and the tuner recovers by keeping
``fc1`` in fp32 while the two wide layers behind it run int8, several times faster than
float at batch 64 (measured in ``experiments/default_job``). Real tabular pipelines that
skip standardisation hit exactly this.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from autoquant.examples._cache import cache_dir, cached_training

__all__ = [
    "CancerMLP",
    "load_data",
    "trained_model",
    "calibration_batches",
    "eval_fn",
    "example_inputs",
]

_SEED = 0
log = logging.getLogger("autoquant.examples")


class CancerMLP(nn.Module):
    """30 -> 512 -> 512 -> 2, ReLU: wide enough that int8 pays off (fc2 carries 90% of
    the multiply-adds); at width 64 every int8 plan ran slower than float."""

    def __init__(self, width: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(30, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def load_data() -> dict[str, torch.Tensor]:
    """70/30 stratified split (fixed seed), features as float32 in their own units."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x = data.data.astype("float32")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, data.target, test_size=0.3, random_state=_SEED, stratify=data.target
    )
    return {
        "x_train": torch.tensor(x_tr),
        "y_train": torch.tensor(y_tr, dtype=torch.long),
        "x_test": torch.tensor(x_te),
        "y_test": torch.tensor(y_te, dtype=torch.long),
    }


def trained_model(*, steps: int = 1000, lr: float = 3e-3, cache: bool = True) -> CancerMLP:
    """The trained float model (full-batch Adam, ~15 s on one busy thread), cached."""
    arch = hashlib.sha256(repr(CancerMLP()).encode()).hexdigest()[:8]
    path = cache_dir() / f"cancer_mlp_{arch}_n{steps}_lr{lr:g}_s{_SEED}.safetensors"
    return cached_training(path, CancerMLP, lambda: _train(steps, lr), cache=cache, threads=1)


def _train(steps: int, lr: float) -> CancerMLP:
    data = load_data()
    x, y = data["x_train"], data["y_train"]
    torch.manual_seed(_SEED)
    model = CancerMLP()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.monotonic()
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log.info(
                "training cancer MLP: step %d/%d, loss %.3f (%.1f s)",
                step,
                steps,
                float(loss.detach()),
                time.monotonic() - start,
            )
    return model.eval()


def calibration_batches(n: int = 100, batch_size: int = 25) -> list[torch.Tensor]:
    """``n`` training samples in batches (never test samples)."""
    return list(load_data()["x_train"][:n].split(batch_size))


def eval_fn() -> Callable[[nn.Module], float]:
    """Top-1 accuracy on the 171 held-out samples."""
    data = load_data()
    x, y = data["x_test"], data["y_test"]

    def evaluate(model: nn.Module) -> float:
        with torch.inference_mode():
            return float((model(x).argmax(1) == y).float().mean())

    return evaluate


def example_inputs(batch_size: int = 64) -> torch.Tensor:
    return load_data()["x_test"][:batch_size]
