"""Deployed latency, side by side: float baselines, torchao PT2E, and what tune() returns.

For all-MiniLM-L6-v2 (goal: 1 % relative on the mean cosine of its embeddings to the
fp32 ones) and the Fashion-MNIST CNN (static int8, goal: 1 % relative top-1 accuracy),
in one run, 1 thread, medians of interleaved rounds, batch 1 and 64:

* fp32 eager, fp32 compiled, bf16 compiled (the float baselines the tuner compares with);
* torchao PT2E + ``X86InductorQuantizer`` (default static config: every Linear/Conv
  int8) + ``torch.compile`` (freezing), calibrated on the same data as autoquant;
* the model ``autoquant.tune`` hands back (``latency_mode="deployed"``), in the deployed
  mode (``autoquant._deploy_mode.deployed``), with its metric and whether it meets the
  goal; for MiniLM also at a 0.1 % goal.

It also reports the per-op latency table's prediction error (predicted vs measured
deployed latency of every verified plan) on MiniLM, the Fashion-MNIST CNN and the digits
CNN, and the tune wall time on MiniLM with the table (deployed mode) vs the eager mode
(every candidate timed eagerly) plus an estimate of compiling every candidate.

    python scripts/bench_deploy.py            # full (tens of minutes on a loaded CPU)
    python scripts/bench_deploy.py --quick    # fewer trials, texts, images and repeats
    python scripts/bench_deploy.py --workloads fashion digits

Writes experiments/deploy/results.json and the tables to experiments/deploy/README.md
(with ``uptime`` and the CPU flags; numbers from a loaded machine: compare ratios).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoquant._deploy_mode import bf16_model, deployed, release
from autoquant.measure import compare_latency, measure_deployed_latency
from autoquant.tuning import TuningConfig, tune

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "deploy"
SEQ = 32  # MiniLM inputs are padded / truncated to 32 tokens: one shape per batch size
BATCHES = (1, 64)


# ----------------------------------------------------------------------------- workloads


def _minilm(quick: bool) -> dict[str, Any]:
    from autoquant.examples import minilm

    model, tok = minilm.load_model(), minilm.load_tokenizer()
    sentences = minilm.background_sentences()

    def enc(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
        )

    n_eval = 128 if quick else 512
    eval_batches = [enc(sentences[100 + i : 100 + i + 64]) for i in range(0, n_eval, 64)]
    with torch.inference_mode():
        reference = [model(**b).float() for b in eval_batches]

    def mean_cosine(m: nn.Module) -> float:
        with torch.inference_mode():
            cos = [
                nn.functional.cosine_similarity(m(**b).float(), ref, dim=1)
                for b, ref in zip(eval_batches, reference, strict=True)
            ]
        return float(torch.cat(cos).mean())

    pool = sentences[-200:]
    return {
        "name": "MiniLM",
        "metric": "mean cosine to fp32",
        "model": model,
        "eval": mean_cosine,
        "calib": [enc(sentences[i : i + 20]) for i in range(0, 100, 20)],
        "tune_example": enc(pool[:8]),
        "inputs": {b: enc(pool[:b]) for b in BATCHES},
        "space": {"approaches": ("dynamic",), "search": ("granularity", "reduce_range")},
        "trials": 8 if quick else 40,
        "kwargs": True,
    }


def _fashion(quick: bool) -> dict[str, Any]:
    from autoquant.examples import fashion_mnist as fm

    model = fm.trained_model(threads=1)
    test = fm._test_set()
    n = 1000 if quick else 4000
    x, y = test["x_test"][:n], test["y_test"][:n]
    train = fm.load_data(2000)["x_train"]

    def acc(m: nn.Module) -> float:
        return fm.accuracy(m, x, y, batch_size=250)

    return {
        "name": "Fashion-MNIST CNN",
        "metric": "top-1 accuracy",
        "model": model,
        "eval": acc,
        "calib": list(train[:512].split(64)),
        "tune_example": train[:64],
        "inputs": {b: x[:b].contiguous() for b in BATCHES},
        "space": {"approaches": ("static",), "observers": ("minmax", "percentile")},
        "trials": 8 if quick else 30,
        "kwargs": False,
    }


def _digits(quick: bool) -> dict[str, Any]:
    from autoquant.examples import digits

    model = digits.trained_model()
    data = digits.load_data()
    x, y = data["x_test"], data["y_test"]

    def acc(m: nn.Module) -> float:
        with torch.inference_mode():
            return float((m(x).argmax(1) == y).float().mean())

    return {
        "name": "digits CNN",
        "metric": "top-1 accuracy",
        "model": model,
        "eval": acc,
        "calib": list(data["x_train"][:256].split(64)),
        "tune_example": data["x_train"][:64],
        "inputs": {},
        "space": {"approaches": ("static",), "observers": ("minmax", "percentile")},
        "trials": 6 if quick else 15,
        "kwargs": False,
    }


# ----------------------------------------------------------------------------- models


def _pt2e(work: dict[str, Any]) -> nn.Module:
    """torchao PT2E with the X86 Inductor quantizer's default (static, every Linear/Conv)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, calib = work["model"], work["calib"]
    first = calib[0]
    batch = torch.export.Dim("batch", min=1, max=1024)
    if work["kwargs"]:
        ep = torch.export.export(
            model, (), dict(first), dynamic_shapes={k: {0: batch} for k in first}
        )
    else:
        ep = torch.export.export(model, (first,), dynamic_shapes=({0: batch},))
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for b in calib:
            prepared(**b) if work["kwargs"] else prepared(b)
    return convert_pt2e(prepared)


def _tune(work: dict[str, Any], goal: float, mode: str, quick: bool) -> Any:
    config = TuningConfig(
        tolerable_loss=goal,
        strategy="sensitivity",
        max_trials=work["trials"],
        latency_mode=mode,
        latency_verify_top=3,
        latency_repeats=5 if quick else 10,
        latency_warmup=2,
        calib_samples=256,
        **work["space"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tune(
            work["model"],
            work["eval"],
            calib_data=work["calib"],
            config=config,
            example_inputs=work["tune_example"],
        )


def _side_by_side(
    models: dict[str, nn.Module], work: dict[str, Any], quick: bool
) -> dict[str, dict[int, float]]:
    """Median ms per model and batch: every model compiled for the batch first, then
    interleaved rounds (compare_latency)."""
    table: dict[str, dict[int, float]] = {name: {} for name in models}
    for b, x in work["inputs"].items():
        run = {}
        for name, m in models.items():
            run[name] = m if name == "fp32 eager" else deployed(m)
            with torch.inference_mode():
                run[name](**x) if work["kwargs"] else run[name](x)  # compile here
        repeats = (3 if b > 8 else 10) if quick else (10 if b > 8 else 30)
        lat = compare_latency(run, {b: x}, threads=1, rounds=2 if quick else 3, repeats=repeats)
        for (name, _), ms in lat.items():
            table[name][b] = ms
        run = {}
        release()
    return table


# ----------------------------------------------------------------------------- report


def _verified(result: Any) -> list[dict[str, Any]]:
    return [v.to_dict() | {"error": v.error} for v in result.verified]


def _run_workload(work: dict[str, Any], quick: bool, extra_goals: bool) -> dict[str, Any]:
    log = logging.getLogger("bench_deploy")
    name = work["name"]
    out: dict[str, Any] = {"name": name, "metric": work["metric"]}
    fp32_metric = work["eval"](work["model"])
    t0 = time.monotonic()
    tuned = _tune(work, 0.01, "deployed", quick)
    out["tune_deployed_s"] = time.monotonic() - t0
    log.info("%s tuned (1%%): %s", name, tuned.summary())
    out["verified_1pct"] = _verified(tuned)
    out["float_baselines"] = tuned.float_baselines.to_dict()
    out["tuned_1pct"] = {
        "met": tuned.met,
        "metric": tuned.best.accuracy,
        "fp32_ops": sum(c is None for c in tuned.best_plan.values()),
        "ops": len(tuned.best_plan),
        "evaluations": tuned.n_evaluations,
    }
    if not work["inputs"]:  # digits: the predictor's error only
        return out
    models: dict[str, nn.Module] = {
        "fp32 eager": work["model"],
        "fp32 compiled": work["model"],
        "bf16 compiled": bf16_model(work["model"]),
    }
    metrics = {"fp32 eager": fp32_metric, "fp32 compiled": fp32_metric}
    metrics["bf16 compiled"] = work["eval"](models["bf16 compiled"])
    try:
        pt2e = _pt2e(work)
        models["PT2E X86Inductor int8 compiled"] = pt2e
        metrics["PT2E X86Inductor int8 compiled"] = work["eval"](pt2e)
    except Exception as exc:  # noqa: BLE001 - report it, keep the other rows
        out["pt2e_error"] = f"{type(exc).__name__}: {exc}"[:500]
    models["autoquant tune 1% (deployed)"] = tuned.best_model
    metrics["autoquant tune 1% (deployed)"] = tuned.best.accuracy
    if extra_goals:
        tight = _tune(work, 0.001, "deployed", quick)
        log.info("%s tuned (0.1%%): %s", name, tight.summary())
        out["verified_0.1pct"] = _verified(tight)
        out["tuned_0.1pct"] = {
            "met": tight.met,
            "metric": tight.best.accuracy,
            "fp32_ops": sum(c is None for c in tight.best_plan.values()),
            "ops": len(tight.best_plan),
        }
        models["autoquant tune 0.1% (deployed)"] = tight.best_model
        metrics["autoquant tune 0.1% (deployed)"] = tight.best.accuracy
        # Tune wall time: the eager mode times every candidate as built (no table, no
        # compile); compiling every candidate instead is estimated from one plan's cost.
        t0 = time.monotonic()
        eager = _tune(work, 0.01, "eager", quick)
        out["tune_eager_s"] = time.monotonic() - t0
        out["tune_eager_evaluations"] = eager.n_evaluations
        t0 = time.monotonic()
        measure_deployed_latency(
            tuned.best_model, work["tune_example"], threads=1, warmup=2, repeats=10
        )
        out["one_deployed_timing_s"] = time.monotonic() - t0
    out["metrics"] = metrics
    out["fp32_metric"] = fp32_metric
    out["latency_ms"] = _side_by_side(models, work, quick)
    return out


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _cpu_flags() -> str:
    flags = set()
    model = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
    keep = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")))
    return f"{model}; {' '.join(keep)}"


def _markdown(
    results: list[dict[str, Any]], args: argparse.Namespace, load: tuple[str, str]
) -> str:
    lines = [
        "# Deployed latency: float baselines, torchao PT2E and autoquant's tuned model",
        "",
        f"`python scripts/bench_deploy.py{' --quick' if args.quick else ''}` "
        f"(torch {torch.__version__}, 1 thread, medians of interleaved rounds, every model "
        "but fp32 eager compiled with Inductor + freezing and timed after its compile).",
        "",
        f"- CPU: {_cpu_flags()}",
        f"- load before: `{load[0]}`",
        f"- load after: `{load[1]}`",
        "",
        "The machine is shared: compare ratios within a row block, not milliseconds across runs.",
        "",
    ]
    for r in results:
        lines.append(f"## {r['name']} ({r['metric']}, goal 1 % relative)")
        lines.append("")
        if "latency_ms" in r:
            goal = 0.99 * r["fp32_metric"]
            lines.append("| model | metric | meets 1 % | batch 1 ms | batch 64 ms |")
            lines.append("|---|---|---|---|---|")
            for name, lat in r["latency_ms"].items():
                m = r["metrics"].get(name)
                meets = "–" if m is None else ("yes" if m >= goal else "**no**")
                cells = " | ".join(f"{lat.get(b, float('nan')):.2f}" for b in BATCHES)
                lines.append(f"| {name} | {m:.4f} | {meets} | {cells} |")
            if "pt2e_error" in r:
                lines.append(f"\nPT2E failed: `{r['pt2e_error']}`")
            t = r["tuned_1pct"]
            lines.append("")
            lines.append(
                f"Tuned at 1 %: {t['ops'] - t['fp32_ops']} of {t['ops']} ops quantized, "
                f"{t['evaluations']} evaluations, goal {'met' if t['met'] else 'NOT met'}."
            )
            if "tuned_0.1pct" in r:
                t = r["tuned_0.1pct"]
                lat = r["latency_ms"]
                fastest = {
                    b: min(lat[k][b] for k in ("fp32 eager", "fp32 compiled", "bf16 compiled"))
                    for b in BATCHES
                }
                tight = lat["autoquant tune 0.1% (deployed)"]
                lines.append(
                    f"Tuned at 0.1 %: {t['ops'] - t['fp32_ops']} of {t['ops']} ops quantized, "
                    f"goal {'met' if t['met'] else 'NOT met'}; speedup over the fastest float: "
                    + ", ".join(f"batch {b} {fastest[b] / tight[b]:.2f}x" for b in BATCHES)
                    + "."
                )
            if "tune_eager_s" in r:
                est = r["one_deployed_timing_s"] * r["tuned_1pct"]["evaluations"]
                lines.append(
                    f"Tune wall time at 1 % ({r['tuned_1pct']['evaluations']} evaluations): "
                    f"deployed mode with the latency table {r['tune_deployed_s']:.0f} s; eager "
                    f"mode (each candidate timed eagerly, no table, not the deployed latency) "
                    f"{r['tune_eager_s']:.0f} s ({r['tune_eager_evaluations']} evaluations); "
                    f"compiling and timing every candidate instead of the table would add "
                    f"about {est:.0f} s ({r['one_deployed_timing_s']:.1f} s per plan)."
                )
            lines.append("")
        fb = r["float_baselines"]
        lines.append(
            "Float baselines inside tune() (its latency inputs): "
            + ", ".join(f"{k} {v:.3f}" for k, v in fb.items() if v is not None)
        )
        lines.append("")
        for key, title in (("verified_1pct", "1 %"), ("verified_0.1pct", "0.1 %")):
            if r.get(key):
                lines.append(f"Predictor, verified plans at {title} (tune's latency inputs):")
                lines.append("")
                lines.append("| trial | predicted ms | measured ms | error | whole model ran |")
                lines.append("|---|---|---|---|---|")
                for v in r[key]:
                    ran = "compiled" if v.get("compile_error") is None else "eager (no compile)"
                    lines.append(
                        f"| {v['trial']} | {v['predicted_ms']:.3f} | {v['measured_ms']:.3f} "
                        f"| {v['error']:+.1%} | {ran} |"
                    )
                lines.append("")
    return "\n".join(lines) + "\n"


_NOTES = "<!-- notes: kept when the tables above are regenerated -->"


def _write_readme(path: Path, tables: str) -> None:
    """The generated tables, then the hand-written notes of the previous README (from
    the ``_NOTES`` marker on), so a rerun refreshes the numbers and keeps the analysis."""
    notes = ""
    if path.exists():
        old = path.read_text()
        if _NOTES in old:
            notes = old[old.index(_NOTES) :]
    path.write_text(tables + ("\n" + notes if notes else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, data and repeats")
    parser.add_argument(
        "--workloads", nargs="+", default=["fashion", "digits", "minilm"],
        choices=["minilm", "fashion", "digits"],
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("torch", "torch._dynamo", "torch._inductor"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    load_before = _uptime()
    factories = {"minilm": _minilm, "fashion": _fashion, "digits": _digits}
    results = []
    for name in args.workloads:
        work = factories[name](args.quick)
        results.append(_run_workload(work, args.quick, extra_goals=name == "minilm"))
        # Written after every workload: a long run that stops early keeps what it measured.
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        text = _markdown(results, args, (load_before, _uptime()))
        _write_readme(args.out / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
