"""The default job's three models side by side: float, the first plan, the best plan.

Runs the default search (the breast-cancer MLP, basic, 1% relative, latency objective,
static/dynamic int8: conf/space/default.yaml) through ``autoquant.tune``, and once more
with weight-only in the space (what the default space held before issue 14), then
measures fp32, the first plan (every op static int8) and each best plan with interleaved
medians at the CLI's batch (64), one thread; deployed (``torch.compile``) rows where
this autoquant has ``autoquant.deploy``. Tables: experiments/default_job/README.md.

    python scripts/default_job_table.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch

import autoquant
from autoquant.examples import breast_cancer as bc
from autoquant.measure import measure_latency, size_bytes
from autoquant.tuning import TuningConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = bc.trained_model()
    calib, evaluate, example = bc.calibration_batches(), bc.eval_fn(), bc.example_inputs(64)
    models: dict[str, torch.nn.Module] = {"fp32": model}
    base = TuningConfig(seed=1978)
    for label, approaches in (
        ("", ("static", "dynamic")),
        (" (+weight-only)", ("static", "dynamic", "weight_only")),
    ):
        result = autoquant.tune(
            model, evaluate, calib_data=calib, config=base.replace(approaches=approaches)
        )
        fp32_ops = [f for f, c in result.best_plan.items() if c is None]
        states = {}
        for t in result.trials:
            states[t.state] = states.get(t.state, 0) + 1
        print(
            f"search{label}: {len(result.trials)} trials {states}, met {result.met}, "
            f"best trial {result.best_trial}, fp32 ops {fp32_ops}"
        )
        if not label:
            models["first plan (all static int8)"] = autoquant.quantize(
                model, result.trials[0].plan, calib
            )
        models[f"best plan{label}"] = result.best_model
        if hasattr(autoquant, "deploy") and not label:
            models["best plan, deployed (compiled)"] = autoquant.quantize(
                model, result.best_plan, calib, compile=True
            )
    if hasattr(autoquant, "deploy"):
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(example)
        models["fp32, torch.compile"] = compiled
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            times[name].append(
                measure_latency(m, example, threads=1, repeats=args.repeats).median_ms
            )
    fp32_ms = statistics.median(times["fp32"])
    print(f"\nbatch 64, 1 thread, median of {args.rounds} interleaved medians of {args.repeats}")
    print("| model | accuracy | latency ms | speedup vs fp32 eager | size KiB |")
    print("|---|---|---|---|---|")
    for name, m in models.items():
        ms = statistics.median(times[name])
        try:
            size = f"{size_bytes(m) / 1024:.1f}"
        except Exception:  # a compiled wrapper
            size = "-"
        print(f"| {name} | {evaluate(m):.4f} | {ms:.3f} | {fp32_ms / ms:.2f}x | {size} |")


if __name__ == "__main__":
    main()
