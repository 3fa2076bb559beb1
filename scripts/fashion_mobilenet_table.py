"""Issue 15's table: the MobileNet-style Fashion-MNIST model, float vs all-int8 per
observer vs tuned (sensitivity, 1% goal), accuracy on the 10,000 test images and
latency at batch 1 and 32 (interleaved medians, 1 thread).

    PYTHONPATH=. .venv/bin/python scripts/fashion_mobilenet_table.py
"""

from __future__ import annotations

import time
import warnings

import torch

import autoquant as aq
from autoquant.examples import fashion_mobilenet as fm
from autoquant.measure import compare_latency

warnings.filterwarnings("ignore")


def main() -> None:
    torch.set_num_threads(1)
    model = fm.trained_model()
    evaluate = fm.eval_fn()
    calib = fm.calibration_batches()
    cands = {"fp32": model}
    for obs in ("minmax", "kl", "mse", "percentile"):
        cands[f"all static int8, {obs}"] = aq.quantize(
            model, {"default": aq.static_int8(observer=obs)}, calib
        )
    t = time.perf_counter()
    result = aq.tune(
        model,
        evaluate,
        calib_data=calib,
        config=aq.TuningConfig(tolerable_loss=0.01, strategy="sensitivity", max_trials=12),
        example_inputs=fm.example_inputs(32),
    )
    tune_s = time.perf_counter() - t
    n_float = sum(1 for c in result.best_plan.values() if c is None)
    cands[f"tuned (sensitivity, 1% goal; {n_float}/{len(result.best_plan)} ops float)"] = (
        result.best_model
    )
    acc = {k: evaluate(m) for k, m in cands.items()}
    lat = compare_latency(
        cands, {b: fm.example_inputs(b) for b in (1, 32)}, threads=1, rounds=3, repeats=30
    )
    base = acc["fp32"]
    print(f"tuning: {len(result.trials)} trials, {tune_s:.0f} s, met={result.met}")
    print("| model | test accuracy | vs fp32 (points) | batch 1 ms | batch 32 ms | speedup b32 |")
    print("|---|---|---|---|---|---|")
    for k in cands:
        print(
            f"| {k} | {acc[k]:.4f} | {100 * (acc[k] - base):+.2f} | {lat[(k, 1)]:.3f} "
            f"| {lat[(k, 32)]:.3f} | {lat[('fp32', 32)] / lat[(k, 32)]:.2f}x |"
        )


if __name__ == "__main__":
    main()
