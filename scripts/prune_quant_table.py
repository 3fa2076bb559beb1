"""Prune + quantize vs quantize only, on the Fashion-MNIST CNN: one process, side by side.

Two ``tune`` runs with the same goal (1% relative accuracy loss on all 10,000 test
images), strategy, budget and latency objective (batch 64, 1 thread): quantization only,
and quantization with the per-op channel-pruning dimension (each pruned model fine-tuned
by ``train_fn`` before it is calibrated). Then the best models of both, the float model
and an "unstructured 50% + the same int8 plan" model (to show that zeros alone buy no
speed on dense kernels) are timed in interleaved rounds at batch 1 and 64, and saved, to
report saved sizes. Prints a markdown table.

    PYTHONPATH=. python scripts/prune_quant_table.py --trials 30
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--strategy", default="basic")
    parser.add_argument("--ft-images", type=int, default=10000, help="fine-tuning images")
    parser.add_argument("--ft-lr", type=float, default=3e-4, help="fine-tuning Adam lr")
    parser.add_argument("--ft-epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import autoquant as aq
    from autoquant.examples import fashion_mnist as fm
    from autoquant.measure import compare_latency, size_bytes
    from autoquant.pruning import PruneSpec, prune_info
    from autoquant.tuning import TuningConfig, tune

    torch.set_num_threads(1)
    model = fm.trained_model()
    evaluate = fm.eval_fn()
    calib = fm.calibration_batches()
    example = fm.example_inputs(64)
    train = fm.load_data(args.ft_images)

    def train_fn(m: nn.Module) -> None:
        """Fine-tune a pruned model: ``ft_epochs`` of Adam on the first training images."""
        torch.manual_seed(0)
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        opt = torch.optim.Adam(m.parameters(), lr=args.ft_lr)
        x, y = train["x_train"], train["y_train"]
        gen = torch.Generator().manual_seed(0)
        for _ in range(args.ft_epochs):
            for idx in torch.randperm(len(y), generator=gen).split(128):
                opt.zero_grad()
                nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
                opt.step()
        torch.set_num_threads(threads)

    base = dict(
        strategy=args.strategy,
        tolerable_loss=0.01,
        max_trials=args.trials,
        approaches=("static",),
        latency_threads=1,
        latency_repeats=20,
    )
    runs = {}
    for name, extra, fn in (
        ("quantize only", {}, None),
        (
            "prune + quantize",
            {"prune_patterns": ("channel",), "prune_ratios": tuple(args.ratios)},
            train_fn,
        ),
    ):
        t0 = time.perf_counter()
        result = tune(
            model,
            evaluate,
            calib_data=calib,
            example_inputs=example,
            config=TuningConfig(**base, **extra),
            train_fn=fn,
        )
        runs[name] = (result, time.perf_counter() - t0)
        print(result.summary(), flush=True)

    q_only = runs["quantize only"][0]
    unstructured_plan = {
        f: c.replace(prune=PruneSpec(pattern="unstructured", ratio=0.5))
        for f, c in q_only.best_plan.items()
        if c is not None
    }
    sparse_int8 = aq.quantize(model, unstructured_plan, calib)
    candidates = {
        "fp32": model,
        "quantize only (best)": q_only.best_model,
        "prune + quantize (best)": runs["prune + quantize"][0].best_model,
        "unstructured 50% + same int8 plan": sparse_int8,
    }
    inputs = {64: fm.example_inputs(64), 1: fm.example_inputs(1)}
    lat = compare_latency(candidates, inputs, threads=1, rounds=args.rounds, repeats=args.repeats)
    acc = {n: evaluate(m) for n, m in candidates.items()}
    saved = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, m in candidates.items():
            if n == "fp32":
                d = Path(tmp) / "fp32"
                d.mkdir()
                torch.save(m.state_dict(), d / "state.pt")
            else:
                d = aq.save(m, Path(tmp) / n.replace(" ", "_"))
            saved[n] = _dir_bytes(d)
    trials = {
        "quantize only (best)": runs["quantize only"],
        "prune + quantize (best)": runs["prune + quantize"],
    }
    print()
    print(
        "| model | test accuracy | loss | b1 ms | b64 ms | b64 speedup vs quant-only | "
        "params | in-memory KiB | saved KiB | trials (evaluations, wall s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref = "quantize only (best)"
    for n, m in candidates.items():
        report = prune_info(m)
        params = (
            report.params[1] if report is not None else sum(p.numel() for p in model.parameters())
        )
        t = trials.get(n)
        tr = f"{len(t[0].trials)} ({t[0].n_evaluations}, {t[1]:.0f})" if t else "–"
        loss = (acc["fp32"] - acc[n]) / acc["fp32"]
        print(
            f"| {n} | {acc[n]:.4f} | {loss:+.2%} | {lat[(n, 1)]:.3f} | {lat[(n, 64)]:.3f} | "
            f"{lat[(ref, 64)] / lat[(n, 64)]:.2f}x | {params:,} | {size_bytes(m) / 1024:.1f} | "
            f"{saved[n] / 1024:.1f} | {tr} |"
        )
    best = runs["prune + quantize"][0]
    report = prune_info(best.best_model)
    print("\nprune + quantize best plan:")
    print(best.best_plan)
    if report is not None:
        print(report.summary())


if __name__ == "__main__":
    main()
