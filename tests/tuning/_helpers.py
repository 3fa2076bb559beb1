"""Helpers for the tuning tests: a real MLP trained in about a second on scikit-learn's
bundled breast-cancer data, eval functions, and a cheap TuningConfig.

The MLP is made *quantization-hostile in exactly one layer* so that a tight accuracy goal
forces fallbacks, and so that the right answer is known in advance:

* It is trained normally on standardised features (30 -> 64 -> 64 -> 64 -> 2, ReLU).
* Then it is re-parameterised without changing the float function: one input feature
  (``HOSTILE_FEATURE``, "symmetry error", the feature least correlated with the label)
  is multiplied by ``1/OUTLIER`` in the model's own input scaling (a buffer,
  ``x * in_scale``, not a quantizable op), and the matching column of ``fc1``'s weight is
  multiplied by ``OUTLIER`` (1e4). ``fc1(x * s) == fc1'(x)`` up to float rounding, so the
  float accuracy is unchanged.
* But every row of ``fc1``'s weight now holds one value ~1e4 times larger than the
  others. Any int8 weight quantization of ``fc1`` (per channel or per tensor, static,
  dynamic or weight-only) uses a scale set by that outlier, so every other weight of
  the row rounds to zero: the quantized ``fc1`` only sees the one uninformative feature
  and accuracy drops by 13-35 points. The other layers are ordinary: quantizing them
  costs at most a sample or two.

So with a tight goal (1% relative on 171 held-out samples: at most one more mistake)
every plan that quantizes ``fc1`` fails and every plan that keeps exactly ``fc1`` in
fp32 passes. ``test_strategies.py::test_fixture_premise`` checks this premise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoquant.tuning import TuningConfig

HOSTILE_FEATURE = 18  # "symmetry error": |corr(feature, label)| = 0.007, the lowest of 30
OUTLIER = 1e4
HOSTILE_LAYER = "fc1"


class CancerMLP(nn.Module):
    """30 -> 64 -> 64 -> 64 -> 2 with a fixed per-feature input scaling (a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("in_scale", torch.ones(30))
        self.fc1 = nn.Linear(30, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 64)
        self.fc4 = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.in_scale
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = torch.relu(self.fc3(x))
        return self.fc4(x)


@dataclass
class CancerTask:
    """The trained model, its data and ready-made eval functions."""

    model: CancerMLP
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    calib: list[torch.Tensor] = field(default_factory=list)

    @property
    def example(self) -> torch.Tensor:
        return self.calib[0]

    def accuracy(self, model: nn.Module) -> float:
        """Accuracy on the held-out split: one forward pass over ``x_test``."""
        with torch.inference_mode():
            return float((model(self.x_test).argmax(1) == self.y_test).float().mean())

    def batched_accuracy(
        self,
        model: nn.Module,
        report: Callable[[float, float], None] | None,
        *,
        batch_size: int = 19,
        on_batch: Callable[[int], None] | None = None,
    ) -> float:
        """Accuracy batch by batch, reporting the running accuracy and the share done."""
        correct = seen = 0
        n = len(self.y_test)
        with torch.inference_mode():
            for i, (xb, yb) in enumerate(
                zip(self.x_test.split(batch_size), self.y_test.split(batch_size), strict=True)
            ):
                if on_batch is not None:
                    on_batch(i)
                correct += int((model(xb).argmax(1) == yb).sum())
                seen += len(yb)
                if report is not None:
                    report(correct / seen, seen / n)
        return correct / n

    def n_batches(self, batch_size: int = 19) -> int:
        return -(-len(self.y_test) // batch_size)


def train_cancer() -> CancerTask:
    """Train the MLP (about a second on 2 cores) and make ``fc1`` quantization-hostile."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x = data.data.astype("float32")
    y = data.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0)
    x_train = torch.tensor((x_tr - mean) / std)
    x_test = torch.tensor((x_te - mean) / std)
    y_train = torch.tensor(y_tr, dtype=torch.long)
    y_test = torch.tensor(y_te, dtype=torch.long)

    torch.manual_seed(0)
    model = CancerMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):  # full-batch Adam: ~0.2 s on 2 cores, ~95% held-out accuracy
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    model.eval()
    # The outlier re-parameterisation described in the module docstring.
    with torch.no_grad():
        model.in_scale[HOSTILE_FEATURE] = 1.0 / OUTLIER
        model.fc1.weight[:, HOSTILE_FEATURE] *= OUTLIER
    return CancerTask(
        model=model,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        # 100 training samples (never test samples) in 4 batches of 25.
        calib=list(x_train[:100].split(25)),
    )


def fast_config(**changes: Any) -> TuningConfig:
    """A config whose measurements are cheap: few latency runs, fast observers only
    (``kl``/``mse`` cost ~1 s per static build on 2 cores), tight 1% goal."""
    base: dict[str, Any] = {
        "latency_repeats": 3,
        "latency_warmup": 1,
        "observers": ("minmax", "percentile"),
        "tolerable_loss": 0.01,
        "max_trials": 8,
    }
    base.update(changes)
    return TuningConfig(**base)
