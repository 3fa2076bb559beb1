"""Gradual vs one-shot pruning at the same fine-tuning budget (Fashion-MNIST CNN).

Each arm prunes the trained Fashion-MNIST CNN with the same specs and fine-tunes it with
the same ``train_fn`` (Adam, lr 3e-4, batch 128, on the first 10,000 training images, a
fixed order, continued across calls) for the same total budget (``--epochs``): one shot
(prune, then train on the whole budget), gradual with the ratios rising over ``--stages``
stages (cubic) over the whole budget or its first half (``ramp 0.5``, then fine-tuning at
the full ratio), the channels removed at the end or at every stage. Test
accuracy on all 10,000 test images; the float model and the pruned model without
fine-tuning are the references.

    PYTHONPATH=. python scripts/prune_schedule_compare.py --ratio 0.5
"""

from __future__ import annotations

import argparse
import time

import torch

import autoquant.examples.fashion_mnist as fm
from autoquant.pruning import PruneSchedule, PruneSpec, prune, prune_and_train
from autoquant.qat.train import TrainBudget


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.5, help="channel ratio per op")
    parser.add_argument("--unstructured", type=float, default=0.0, help="also fc1 unstructured")
    parser.add_argument("--epochs", type=float, default=1.0, help="total fine-tuning epochs")
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="order of the training batches")
    parser.add_argument("--ops", nargs="+", default=["conv1", "conv2", "conv4", "fc1"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = fm.trained_model()
    evaluate = fm.eval_fn()
    batches = fm.train_batches(128, 10000)
    if args.seed:
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(args.seed))
        batches = [batches[i] for i in order]

    def make_train_fn():
        """Adam on the batches in a fixed order, *continuing* where the last call
        stopped: every arm sees the same sequence of batches for the same total budget
        (a loop restarting at the first batch would give each gradual stage the same
        quarter of the data)."""
        cursor = [0]

        def train_fn(m: torch.nn.Module, budget: TrainBudget) -> None:
            opt = torch.optim.Adam(m.parameters(), lr=3e-4 * budget.lr_scale)
            m.train()
            for _ in range(max(1, round(budget.epochs * len(batches)))):
                x, y = batches[cursor[0] % len(batches)]
                cursor[0] += 1
                opt.zero_grad()
                torch.nn.functional.cross_entropy(m(x), y).backward()
                opt.step()
            m.eval()

        return train_fn

    specs = {f: PruneSpec(pattern="channel", ratio=args.ratio) for f in args.ops}
    if args.unstructured:
        specs["fc2"] = PruneSpec(pattern="unstructured", ratio=args.unstructured)
    budget = TrainBudget(epochs=args.epochs)
    print(f"specs: { {f: s.short() for f, s in specs.items()} }, budget {budget.label()}")
    print(f"float: accuracy {evaluate(model):.4f}")
    pruned, report = prune(model, specs)
    print(f"pruned, no fine-tuning: accuracy {evaluate(pruned):.4f}, params {report.params}")
    arms = {
        "oneshot": PruneSchedule(kind="oneshot"),
        f"gradual/{args.stages} shrink at end": PruneSchedule(
            kind="gradual", stages=args.stages, ramp=1.0, channels="end"
        ),
        f"gradual/{args.stages} shrink each stage": PruneSchedule(
            kind="gradual", stages=args.stages, ramp=1.0, channels="stage"
        ),
        f"gradual/{args.stages} ramp 0.5, shrink at end": PruneSchedule(
            kind="gradual", stages=args.stages, ramp=0.5, channels="end"
        ),
        f"gradual/{args.stages} ramp 0.5, shrink each stage": PruneSchedule(
            kind="gradual", stages=args.stages, ramp=0.5, channels="stage"
        ),
    }
    print("| schedule | test accuracy | params after | fine-tuning s |")
    print("|---|---|---|---|")
    for name, schedule in arms.items():
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        out, rep = prune_and_train(model, specs, make_train_fn(), schedule=schedule, budget=budget)
        seconds = time.perf_counter() - t0
        shapes = {f: tuple(out.get_submodule(f).weight.shape[:2]) for f in args.ops}
        print(
            f"| {name} | {evaluate(out):.4f} | {rep.params[1]:,} | {seconds:.1f} |  {shapes}",
            flush=True,
        )
        del out


if __name__ == "__main__":
    main()
