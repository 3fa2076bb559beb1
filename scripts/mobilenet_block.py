"""Real x86 int8 kernels vs the simulated math on a MobileNetV2-style inverted residual.

The expand conv's BN biases are set so its pre-activation range is mostly negative (what
ReLU6 then discards), the case where x86 static int8 went wrong (issue 15). Prints the
relative error of the block output (vs float) for each plan, real and simulated.

    PYTHONPATH=. .venv/bin/python scripts/mobilenet_block.py [--markdown]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import autoquant as aq


class InvertedResidual(nn.Module):
    """24 -> 144 -> 24, stride 1, residual (MobileNetV2's block with expand ratio 6)."""

    def __init__(self, c: int = 24, expand: int = 6) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Conv2d(c, h, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(h)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False)
        self.bn2 = nn.BatchNorm2d(h)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(h, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.expand(x)))
        y = self.act2(self.bn2(self.dw(y)))
        return x + self.bn3(self.project(y))


def mostly_negative_block(seed: int = 0) -> InvertedResidual:
    """A block whose expand pre-activation is mostly negative (BN bias around -3)."""
    torch.manual_seed(seed)
    m = InvertedResidual()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2, m.bn3):
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
        m.bn1.bias.normal_(-3.0, 1.0)  # most pre-activations < 0: ReLU6 drops them
        m.bn2.bias.uniform_(0.0, 1.0)
        m.bn3.bias.normal_(0, 0.1)
    return m.eval()


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


PLANS = {
    "all three convs": lambda cfg: {"Conv2d": cfg},
    "expand + depthwise only": lambda cfg: {"Conv2d": None, "expand": cfg, "dw": cfg},
    "depthwise + project only": lambda cfg: {"Conv2d": None, "dw": cfg, "project": cfg},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--observers", default="minmax,kl,mse,percentile")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = mostly_negative_block()
    torch.manual_seed(1)
    calib = [torch.randn(8, 24, 14, 14) for _ in range(4)]
    test = torch.randn(16, 24, 14, 14)
    with torch.no_grad():
        ref = model(test)
    print("| plan | observer | reduce_range | x86 (real kernels) | simulated | real/sim |")
    print("|---|---|---|---|---|---|")
    for name, rules in PLANS.items():
        for obs in args.observers.split(","):
            for rr in (False, True):
                cfg = aq.static_int8(observer=obs, reduce_range=rr)
                errs = []
                for backend in ("x86", "simulated"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            q = aq.quantize(model, rules(cfg), calib, backend=backend)
                        except aq.AutoQuantError as e:
                            errs.append(f"refused: {type(e).__name__}")
                            continue
                    with torch.no_grad():
                        errs.append(rel_err(q(test), ref))
                ratio = (
                    f"{errs[0] / errs[1]:.2f}" if all(isinstance(e, float) for e in errs) else "-"
                )
                fmt = [f"{e:.4f}" if isinstance(e, float) else e for e in errs]
                print(f"| {name} | {obs} | {rr} | {fmt[0]} | {fmt[1]} | {ratio} |")


if __name__ == "__main__":
    main()
