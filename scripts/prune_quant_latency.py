"""Re-time the plans ``prune_quant_table.py`` found, with more interleaved rounds.

The tuning runs take minutes on a shared machine and their timing table can catch load
changes; this rebuilds the same models (fp32, all-static-int8 = the quantize-only best,
the prune+quantize best: ``--prune`` channel specs, fine-tuned exactly as in the
tuning run, then static int8; and unstructured 50% + int8, to show zeros buy no speed
on dense kernels) and times them side by side at batch 1 and 64, 1 thread.

    PYTHONPATH=. python scripts/prune_quant_latency.py --prune conv1=0.25 fc1=0.25
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prune", nargs="+", default=["conv1=0.25", "fc1=0.25"])
    parser.add_argument("--ft-images", type=int, default=10000)
    parser.add_argument("--ft-lr", type=float, default=3e-4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import autoquant as aq
    from autoquant.examples import fashion_mnist as fm
    from autoquant.measure import compare_latency
    from autoquant.pruning import PruneSpec, prune

    torch.set_num_threads(1)
    model = fm.trained_model()
    calib = fm.calibration_batches()
    evaluate = fm.eval_fn()
    train = fm.load_data(args.ft_images)
    specs = {
        k: PruneSpec(pattern="channel", ratio=float(v))
        for k, v in (p.split("=") for p in args.prune)
    }
    pruned, report = prune(model, specs)
    # The tuning run's train_fn (seeded), on 2 threads.
    torch.manual_seed(0)
    torch.set_num_threads(2)
    opt = torch.optim.Adam(pruned.parameters(), lr=args.ft_lr)
    x, y = train["x_train"], train["y_train"]
    gen = torch.Generator().manual_seed(0)
    pruned.train()
    for idx in torch.randperm(len(y), generator=gen).split(128):
        opt.zero_grad()
        nn.functional.cross_entropy(pruned(x[idx]), y[idx]).backward()
        opt.step()
    pruned.eval()
    torch.set_num_threads(1)
    plan = {"default": aq.static_int8()}
    models = {
        "fp32": model,
        "quantize only": aq.quantize(model, plan, calib),
        "prune + quantize": aq.quantize(pruned, plan, calib),
        # Zeros alone: the same dense int8 kernels, half the weights zero (no fine-tuning).
        "unstructured 50% + int8": aq.quantize(
            model,
            {
                "default": aq.static_int8().replace(
                    prune=PruneSpec(pattern="unstructured", ratio=0.5)
                )
            },
            calib,
        ),
    }
    inputs = {64: fm.example_inputs(64), 1: fm.example_inputs(1)}
    lat = compare_latency(models, inputs, threads=1, rounds=args.rounds, repeats=args.repeats)
    print(report.summary())
    print("| model | test accuracy | b1 ms | b1 vs quant-only | b64 ms | b64 vs quant-only |")
    print("|---|---|---|---|---|---|")
    ref = "quantize only"
    for name, m in models.items():
        print(
            f"| {name} | {evaluate(m):.4f} | {lat[(name, 1)]:.3f} | "
            f"{lat[(ref, 1)] / lat[(name, 1)]:.2f}x | {lat[(name, 64)]:.3f} | "
            f"{lat[(ref, 64)] / lat[(name, 64)]:.2f}x |"
        )


if __name__ == "__main__":
    main()
