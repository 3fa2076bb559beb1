"""A small MobileNetV2-style network on the real Fashion-MNIST.

Depthwise separable inverted residuals with ReLU6 (expand 1x1 -> depthwise 3x3 ->
project 1x1, residual adds where shapes allow), the structure where x86 static int8
went wrong (issue 15): unfused ReLU6 after conv-BN, and depthwise convs wide enough
(144 channels) to run on fbgemm's depthwise kernel, which overflows int16 pair sums with
full-range uint8 inputs. ``python -m autoquant.examples.fashion_mobilenet`` trains it
(or reloads it from the cache), quantizes it with static int8 for each observer and
prints accuracy, latency at batch 1 and 32, and size.

Data, calibration and evaluation are those of :mod:`autoquant.examples.fashion_mnist`.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoquant.examples._cache import cache_dir, cached_training
from autoquant.examples.fashion_mnist import (
    calibration_batches,
    eval_fn,
    example_inputs,
    load_data,
)

__all__ = [
    "InvertedResidual",
    "FashionMobileNet",
    "trained_model",
    "calibration_batches",
    "eval_fn",
    "example_inputs",
]

_SEED = 0


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1
    project + BN, plus the input when stride is 1 and the widths match."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.dw(y)))  # the functional spelling, on purpose
        y = self.bn3(self.project(y))
        return x + y if self.residual else y


class FashionMobileNet(nn.Module):
    """Stem conv (stride 2), four inverted residuals (two with residual adds, two with
    144-channel depthwise convs), a 1x1 head conv, global pooling and a Linear
    classifier: 28x28 -> 14 -> 7 -> 4. About 40 k parameters."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, 2, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.act0 = nn.ReLU6()
        self.blocks = nn.Sequential(
            InvertedResidual(16, 24, expand=4, stride=2),  # 7x7, depthwise 64
            InvertedResidual(24, 24, expand=6, stride=1),  # residual, depthwise 144
            InvertedResidual(24, 32, expand=6, stride=2),  # 4x4, depthwise 144
            InvertedResidual(32, 32, expand=4, stride=1),  # residual, depthwise 128
        )
        self.head = nn.Conv2d(32, 128, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(128)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.stem(x)))
        x = self.blocks(x)
        x = F.hardtanh(self.bn_head(self.head(x)), 0.0, 6.0)  # ReLU6 spelled as hardtanh
        return self.fc(torch.flatten(self.pool(x), 1))


def _cache_path(epochs: int, n_train: int | None) -> Path:
    n_name = "all" if n_train is None else str(n_train)
    return cache_dir() / f"fashion_mobilenet_e{epochs}_n{n_name}_s{_SEED}.safetensors"


def trained_model(
    *, epochs: int = 2, n_train: int | None = None, cache: bool = True, threads: int | None = None
) -> FashionMobileNet:
    """The trained float model, cached as safetensors under ``$AUTOQUANT_CACHE`` (default
    ``~/.cache/autoquant``), trained once per machine.

    Default recipe: all 60,000 training images, 2 epochs, Adam with a one-cycle learning
    rate peaking at 1e-2, batch 256, seed 0. ``n_train`` trains on the first ``n_train``
    images (the tests use a small one); ``threads`` sets torch's threads for training.
    """
    return cached_training(
        _cache_path(epochs, n_train),
        FashionMobileNet,
        lambda: _train(load_data(n_train), epochs),
        cache=cache,
        threads=threads,
    )


def _train(data: dict[str, torch.Tensor], epochs: int) -> FashionMobileNet:
    torch.manual_seed(_SEED)
    model = FashionMobileNet()
    x, y = data["x_train"], data["y_train"]
    batch_size, lr = 256, 1e-2
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(y) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(_SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for latency")
    args = parser.parse_args(argv)

    import autoquant
    from autoquant.measure import compare_latency

    evaluate = eval_fn()
    t0 = time.perf_counter()
    model = trained_model()
    print(f"model ready in {time.perf_counter() - t0:.1f} s")
    candidates: dict[str, nn.Module] = {"fp32": model}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*")
        for obs in ("minmax", "kl", "mse", "percentile"):
            candidates[f"static int8 {obs}"] = autoquant.quantize(
                model, {"default": autoquant.static_int8(observer=obs)}, calibration_batches()
            )
    acc = {name: evaluate(m) for name, m in candidates.items()}
    inputs = {b: example_inputs(b) for b in (1, 32)}
    median = compare_latency(candidates, inputs, threads=args.threads, rounds=3, repeats=30)
    print(f"{'model':<24}{'accuracy':>10}{'b1 ms':>9}{'b32 ms':>9}")
    for name in candidates:
        print(f"{name:<24}{acc[name]:>10.4f}{median[(name, 1)]:>9.3f}{median[(name, 32)]:>9.3f}")


if __name__ == "__main__":
    main()
