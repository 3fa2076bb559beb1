"""GPU benchmark of the cuda backend: bf16 vs int8 vs fp8 vs int4 weight-only, one table.

Run from the repository root on a machine with an NVIDIA GPU (scripts/gpu_check.sh does)::

    python scripts/gpu_bench.py                  # Linear 4096x4096 + MiniLM, eager + compiled
    python scripts/gpu_bench.py --skip-minilm    # Linear only
    python scripts/gpu_bench.py --json out.json  # also write the numbers

Workloads: ``Linear 4096x4096`` (no bias) at batch 1/16/256 rows, and all-MiniLM-L6-v2
end to end (batch 1 and 64 sentences, the example's tokenizer). Every variant is built
by the cuda backend itself (``CudaBackend().build`` with one config for every Linear):

* bf16: the float plan (the GPU baseline);
* int8: dynamic, per-token int8 activations x per-channel int8 weights (``_int_mm``);
* fp8: dynamic fp8 e4m3, row-wise scales (``_scaled_mm``; needs compute capability 8.9);
* int4: weight-only, per-group (group 128), bf16 activations (tinygemm).

Modes: ``eager`` and ``compiled`` (``torch.compile(mode="reduce-overhead")``: inductor
plus CUDA graphs). Inputs live on the GPU (no host copies in the timing). Timing:
CUDA events around each call after warm-up and a synchronize
(:func:`autoquant.backends._cuda_modules.cuda_latency`); the variants of one cell are
timed in interleaved rounds with a rotating start and the median of the round medians
is reported. Speed-ups are bf16 time / variant time from the same run.

Without CUDA it prints "no CUDA" and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("bf16", "int8", "fp8", "int4")


def _configs() -> dict[str, Any]:
    from autoquant.config import OpConfig, QuantSpec, weight_only

    fp8 = QuantSpec(dtype="fp8_e4m3", granularity="per_channel")
    return {
        "bf16": None,
        "int8": OpConfig(
            approach="dynamic",
            weight=QuantSpec(dtype="int8", granularity="per_channel"),
            activation=QuantSpec(dtype="int8", granularity="per_channel"),
        ),
        "fp8": OpConfig(approach="dynamic", weight=fp8, activation=fp8),
        "int4": weight_only("int4", group_size=128),
    }


def _build_all(model: nn.Module, cc: tuple[int, int]) -> dict[str, nn.Module | str]:
    """Each variant built by the cuda backend, or the reason it is not available."""
    from autoquant.backends.cuda import CudaBackend
    from autoquant.plan import resolve_plan

    backend = CudaBackend()
    out: dict[str, nn.Module | str] = {}
    for name, cfg in _configs().items():
        if name == "fp8" and cc < (8, 9):
            out[name] = f"n/a (sm{cc[0]}{cc[1]} < sm89)"
            continue
        plan = resolve_plan({"Linear": cfg}, model, warn=False)
        try:
            out[name] = backend.build(model, plan, None)
        except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the rest
            out[name] = f"build failed: {type(exc).__name__}: {str(exc)[:80]}"
    return out


def _call(fn: Any, inputs: Any) -> Any:
    return fn(**inputs) if isinstance(inputs, dict) else fn(inputs)


def _time_cell(
    fns: dict[str, Any], *, rounds: int, repeats: int, warmup: int
) -> dict[str, float | str]:
    """Median ms per variant, interleaved rounds with a rotating start."""
    from autoquant.backends._cuda_modules import cuda_latency

    runnable = {k: f for k, f in fns.items() if callable(f)}
    samples: dict[str, list[float]] = {k: [] for k in runnable}
    names = list(runnable)
    for name in names:  # warm-up (compilation, CUDA graph capture) outside the rounds
        try:
            cuda_latency(runnable[name], warmup=warmup, repeats=1)
        except Exception as exc:  # noqa: BLE001
            samples.pop(name)
            fns[name] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
    names = [n for n in names if n in samples]
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for name in order:
            t = cuda_latency(runnable[name], warmup=1, repeats=repeats)
            samples[name].append(t["median_ms"])
    result: dict[str, float | str] = {}
    for name, f in fns.items():
        result[name] = statistics.median(samples[name]) if name in samples else str(f)
    return result


def _cells_for(
    label: str,
    batch: int,
    models: dict[str, nn.Module | str],
    inputs: Any,
    modes: list[str],
    args: argparse.Namespace,
    deadline: float,
) -> list[dict[str, Any]]:
    rows = []
    for mode in modes:
        if time.monotonic() > deadline:
            rows.append({"workload": label, "batch": batch, "mode": mode, "skipped": "time budget"})
            continue
        fns: dict[str, Any] = {}
        for name, model in models.items():
            if isinstance(model, str):
                fns[name] = model
                continue
            # forward itself: inputs are on the GPU already, the host I/O hooks are not timed
            fwd = model.forward
            runner = torch.compile(fwd, mode="reduce-overhead") if mode == "compiled" else fwd
            fns[name] = lambda runner=runner: _call(runner, inputs)
        with torch.inference_mode():
            ms = _time_cell(fns, rounds=args.rounds, repeats=args.repeats, warmup=args.warmup)
        rows.append({"workload": label, "batch": batch, "mode": mode, "ms": ms})
        torch._dynamo.reset()
    return rows


def _fmt(row: dict[str, Any]) -> str:
    head = f"| {row['workload']} | {row['batch']} | {row['mode']} |"
    if "skipped" in row:
        return head + f" skipped ({row['skipped']}) | | | |"
    ms = row["ms"]
    base = ms["bf16"]
    cells = [f"{base:.4f}" if isinstance(base, float) else str(base)]
    for name in VARIANTS[1:]:
        v = ms[name]
        if isinstance(v, float) and isinstance(base, float):
            cells.append(f"{base / v:.2f}x ({v:.4f})")
        else:
            cells.append(str(v))
    return head + " " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip cells after this")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            f"gpu_bench: no CUDA (torch {torch.__version__}, torch.cuda.is_available() is "
            "False); nothing measured."
        )
        return 2
    modes = [m for m in args.modes.split(",") if m]
    start = time.monotonic()
    deadline = start + args.budget_s
    cc = tuple(torch.cuda.get_device_capability())
    device = torch.cuda.get_device_name()
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []

    linear = nn.Sequential(nn.Linear(4096, 4096, bias=False)).eval()
    models = _build_all(linear, cc)
    for batch in (1, 16, 256):
        x = torch.randn(batch, 4096, device="cuda", dtype=torch.bfloat16)
        rows += _cells_for("Linear 4096x4096", batch, models, x, modes, args, deadline)
    del models

    minilm_note = ""
    if args.skip_minilm:
        minilm_note = "MiniLM: skipped (--skip-minilm)"
    else:
        try:
            from autoquant.examples import minilm

            float_model = minilm.load_model()
            models = _build_all(float_model, cc)
            for batch in (1, 64):
                inputs = {k: v.cuda() for k, v in minilm.latency_inputs(batch_size=batch).items()}
                rows += _cells_for(
                    "MiniLM-L6 end to end", batch, models, inputs, modes, args, deadline
                )
        except Exception as exc:  # noqa: BLE001 - the Linear table still stands
            minilm_note = f"MiniLM: not measured ({type(exc).__name__}: {str(exc)[:120]})"

    print(
        f"\n{device} (sm{cc[0]}{cc[1]}), torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"median ms of {args.rounds} interleaved rounds x {args.repeats} calls (CUDA events); "
        "speed-up = bf16 ms / variant ms, same run; inputs on the GPU\n"
    )
    print(
        "| workload | batch | mode | bf16 ms | int8 dyn (x, ms) | fp8 row-wise (x, ms) | int4 wo g128 (x, ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(_fmt(row))
    if minilm_note:
        print(f"\n{minilm_note}")
    # The target on Hopper: int8 and fp8 >= 1.5x bf16 on Linear 4096^2, batch >= 16.
    checks = []
    for row in rows:
        if row["workload"].startswith("Linear") and row["batch"] >= 16 and "ms" in row:
            for name in ("int8", "fp8"):
                v, b = row["ms"][name], row["ms"]["bf16"]
                if isinstance(v, float) and isinstance(b, float):
                    checks.append(f"{name} b{row['batch']} {row['mode']}: {b / v:.2f}x")
    print("\ntarget int8/fp8 >= 1.5x bf16 at batch >= 16: " + "; ".join(checks))
    print(f"bench wall time {time.monotonic() - start:.0f} s")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"device": device, "cc": cc, "torch": torch.__version__, "rows": rows}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
