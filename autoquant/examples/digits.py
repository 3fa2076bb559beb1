"""A small CNN on scikit-learn's bundled 8x8 digits: the embedded default model.

``python -m autoquant.examples.digits`` trains it (or reloads it from the local cache),
quantizes it with static int8 on the x86 backend, and prints accuracy, latency and size
before and after.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable

import torch
from torch import nn

from autoquant.examples._cache import cache_dir, cached_training

__all__ = [
    "DigitsCNN",
    "load_data",
    "trained_model",
    "accuracy",
    "calibration_batches",
    "eval_fn",
    "example_inputs",
    "train_batches",
    "train_fn",
]

_SEED = 0


class DigitsCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU) with a residual add, global pooling, a Linear head."""

    def __init__(self, width: int = 32, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * 16, 64)
        self.fc2 = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + torch.relu(self.bn2(self.conv2(x)))
        x = self.pool(torch.relu(self.bn3(self.conv3(x))))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def load_data() -> dict[str, torch.Tensor]:
    """Digits split 80/20 (fixed seed); pixels scaled to [0, 1], shape [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        range(len(y)), test_size=0.2, random_state=_SEED, stratify=digits.target
    )
    return {
        "x_train": x[idx_train],
        "y_train": y[idx_train],
        "x_test": x[idx_test],
        "y_test": y[idx_test],
    }


def trained_model(*, epochs: int = 15, cache: bool = True) -> DigitsCNN:
    """The trained float model; trained once (seconds) and cached as safetensors.

    15 epochs reach the test accuracy 25 did (0.983). One torch thread: the batches are
    small, and on a busy 2-core machine two threads made training ~10x slower
    (202 s vs 19 s for 25 epochs, load average 4.5).
    """
    # The architecture is part of the name, so a changed model never loads stale weights.
    arch = hashlib.sha256(repr(DigitsCNN()).encode()).hexdigest()[:8]
    path = cache_dir() / f"digits_cnn_{arch}_e{epochs}_s{_SEED}.safetensors"
    return cached_training(path, DigitsCNN, lambda: _train(epochs), cache=cache, threads=1)


def _train(epochs: int) -> DigitsCNN:
    import logging
    import time

    log = logging.getLogger("autoquant.examples")
    data = load_data()
    torch.manual_seed(_SEED)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data["x_train"], data["y_train"]
    gen = torch.Generator().manual_seed(_SEED)
    model.train()
    start = time.monotonic()
    for epoch in range(epochs):
        total, n = 0.0, 0
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(idx), n + len(idx)
        log.info(
            "training digits CNN: epoch %d/%d, train loss %.3f (%.1f s)",
            epoch + 1,
            epochs,
            total / n,
            time.monotonic() - start,
        )
    return model.eval()


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    batches = zip(x.split(batch_size), y.split(batch_size), strict=True)
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    return correct / len(y)


def calibration_batches(n: int = 100, batch_size: int = 20) -> list[torch.Tensor]:
    """``n`` training images in batches: the calibration set (never the test set)."""
    return list(load_data()["x_train"][:n].split(batch_size))


def eval_fn(split: str = "test") -> Callable[[nn.Module], float]:
    """The default job's metric: top-1 accuracy on the held-out split (360 images)."""
    data = load_data()
    x, y = data[f"x_{split}"], data[f"y_{split}"]

    def evaluate(model: nn.Module) -> float:
        return accuracy(model, x, y)

    return evaluate


def example_inputs(batch_size: int = 64) -> torch.Tensor:
    """Test images at the batch size latency is measured with."""
    return load_data()["x_test"][:batch_size]


def train_batches(batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training split as shuffled ``(images, labels)`` batches (fixed seed): the
    fine-tuning data of QAT (``train=sgd``'s data factory)."""
    data = load_data()
    x, y = data["x_train"], data["y_train"]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(_SEED + 1))
    return [(x[idx], y[idx]) for idx in order.split(batch_size)]


def train_fn(lr: float = 1e-3, epochs: float = 1.0, batch_size: int = 64):
    """A real QAT fine-tuning function for this model: SGD with momentum on the training
    split (:class:`autoquant.qat.train.TrainLoop`); ``tune(..., train_fn=train_fn())``."""
    from autoquant.qat.train import TrainLoop

    return TrainLoop(data=train_batches, lr=lr, epochs=epochs, batch_size=batch_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64, help="batch for latency")
    args = parser.parse_args(argv)

    import autoquant
    from autoquant.measure import measure_latency, size_bytes

    torch.manual_seed(_SEED)
    data = load_data()
    model = trained_model()
    calib = calibration_batches()
    candidates: dict[str, nn.Module] = {"fp32": model}
    candidates["static int8 (all ops)"] = autoquant.quantize(
        model, {"default": autoquant.static_int8()}, calib
    )
    candidates["dynamic int8 (Linear)"] = autoquant.quantize(
        model, {"Linear": autoquant.dynamic_int8()}
    )
    example = data["x_test"][: args.batch_size]
    rows = []
    for name, m in candidates.items():
        acc = accuracy(m, data["x_test"], data["y_test"])
        lat = measure_latency(m, example, threads=args.threads, repeats=50)
        rows.append((name, acc, lat.median_ms, size_bytes(m)))
    base_lat, base_size = rows[0][2], rows[0][3]
    print(
        f"digits CNN, {len(data['y_test'])} test images, latency at batch {args.batch_size}, "
        f"{args.threads} thread(s), median of 50"
    )
    print(
        f"{'model':<24}{'accuracy':>10}{'latency ms':>12}{'speedup':>9}{'size KiB':>10}{'smaller':>9}"
    )
    for name, acc, lat_ms, size in rows:
        print(
            f"{name:<24}{acc:>10.4f}{lat_ms:>12.3f}{base_lat / lat_ms:>8.2f}x"
            f"{size / 1024:>10.1f}{base_size / size:>8.2f}x"
        )
    info = autoquant.quant_info(candidates["static int8 (all ops)"])
    print(f"\nstatic int8 build: mode={info.mode}; kernels:")
    for fqn, kernel in info.kernels.items():
        print(f"  {fqn:<8} {kernel}")


if __name__ == "__main__":
    main()
