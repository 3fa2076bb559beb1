"""Plots of a tuning result, written as PNG files (used by the MLflow tracker).

* ``accuracy_vs_latency.png``: every evaluated trial (pass / fail), the float baseline,
  the accuracy goal line (``config.target(baseline.accuracy)``), the Pareto front and the
  best trial. With ``objective="size"`` the x axis is the size; with ``latency+size`` a
  second panel shows accuracy vs size.
* ``fp32_fallback.png``: per op, the share of passing trials that kept it in fp32 (the
  tuner exposes no per-op sensitivity scores; this is what the search learnt about each
  op). Without passing trials, the share among all evaluated trials.
* ``optimization_history.png``: Optuna's ``plot_optimization_history`` (infeasible
  trials, i.e. those that miss the goal, are greyed out and never count as best; cached
  trials repeat their plan's value). For ``latency+size`` (Optuna draws no best line
  for a multi-objective study) or if Optuna cannot draw it: an equivalent plot, the
  first objective per evaluated trial and the best passing value so far.

matplotlib is imported lazily; our own figures use ``matplotlib.figure.Figure`` (no
pyplot, no global backend change). Optuna's plot needs pyplot: when pyplot has not been
imported yet the Agg backend is selected first, and the figure is closed after saving.
Cached trials (re-used plans) and the skipped all-float plan add no points.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoquant.tuning import TrialRecord, TuningResult

__all__ = ["write_plots"]

_COLORS = {"pass": "tab:green", "fail": "tab:red"}
_MAX_OPS = 60  # bars in the fallback plot


def _evaluated(result: TuningResult) -> list[TrialRecord]:
    return [t for t in result.trials if t.metrics is not None and t.cached_from is None]


def write_plots(result: TuningResult, out_dir: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Write the plots into ``out_dir``; returns (files written, [(plot, why skipped)])."""
    written: list[str] = []
    skipped: list[tuple[str, str]] = []
    plots = [
        ("accuracy_vs_latency.png", accuracy_vs_latency),
        ("fp32_fallback.png", fp32_fallback),
        ("optimization_history.png", optimization_history),
    ]
    if getattr(result.best_model, "autoquant_pruning", None) is not None:
        plots.append(("best_sparsity.png", best_sparsity))
    if result.sensitivity:
        # Only when the strategy computed scores: their absence is not a problem to report
        # (samplers skip them when the first plan passes).
        plots.insert(2, ("sensitivity.png", sensitivity))
    for name, fn in plots:
        path = os.path.join(out_dir, name)
        try:
            reason = fn(result, path)
        except Exception as exc:  # noqa: BLE001 - one broken plot must not stop the others
            reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            written.append(path)
        else:
            skipped.append((name, reason))
    return written, skipped


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def accuracy_vs_latency(result: TuningResult, path: str) -> str | None:
    points = _evaluated(result)
    if not points:
        return "no evaluated trial"
    objective = result.config.objective
    axes_spec = [("size", "size (KiB)")] if objective == "size" else [("latency", "latency (ms)")]
    if objective == "latency+size":
        axes_spec.append(("size", "size (KiB)"))
    fig = _figure(6.5 * len(axes_spec), 4.8)
    axes = fig.subplots(1, len(axes_spec), squeeze=False)[0]
    base = result.baseline
    target = result.config.target(base.accuracy)
    pareto = {t.number for t in result.pareto}

    def x_of(m: Any, kind: str) -> float:
        return m.latency_ms if kind == "latency" else m.size_bytes / 1024

    for ax, (kind, label) in zip(axes, axes_spec, strict=True):
        for state in ("pass", "fail"):
            group = [t for t in points if (t.state == "pass") == (state == "pass")]
            if group:
                ax.scatter(
                    [x_of(t.metrics, kind) for t in group],
                    [t.metrics.accuracy for t in group],
                    s=28,
                    alpha=0.75,
                    color=_COLORS[state],
                    label=f"{'passing' if state == 'pass' else 'failing'} trials ({len(group)})",
                )
        front = sorted(
            (t for t in points if t.number in pareto), key=lambda t: x_of(t.metrics, kind)
        )
        if front:
            xs = [x_of(t.metrics, kind) for t in front]
            ys = [t.metrics.accuracy for t in front]
            two_d = objective != "latency+size"
            ax.plot(
                xs,
                ys,
                linestyle="-" if two_d else "none",
                drawstyle="steps-post" if two_d else "default",
                marker="o",
                markersize=10,
                markerfacecolor="none",
                color="tab:blue",
                label=f"Pareto front ({len(front)})",
            )
        best = next((t for t in points if t.number == result.best_trial), None)
        if best is not None:
            ax.scatter(
                [x_of(best.metrics, kind)],
                [best.metrics.accuracy],
                marker="*",
                s=220,
                color="gold",
                edgecolors="black",
                zorder=5,
                label=f"best (trial {best.number})",
            )
        ax.scatter(
            [x_of(base, kind)], [base.accuracy], marker="D", s=60, color="black", label="fp32"
        )
        better = "\u2265" if result.config.higher_is_better else "\u2264"
        ax.axhline(
            target,
            linestyle="--",
            color="gray",
            label=f"goal: accuracy {better} {target:.5g}",
        )
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"accuracy vs {'/'.join(k for k, _ in axes_spec)}: {len(points)} evaluated trials "
        f"({result.config.strategy})"
    )
    fig.savefig(path, dpi=100)
    return None


def fp32_fallback(result: TuningResult, path: str) -> str | None:
    evaluated = _evaluated(result)
    passing = [t for t in evaluated if t.passed]
    basis, what = (passing, "passing") if passing else (evaluated, "evaluated (none passed)")
    if not basis:
        return "no evaluated trial"
    ops = list(result.best_plan)
    share = {op: sum(t.plan[op] is None for t in basis) / len(basis) for op in ops}
    shown = ops
    if len(ops) > _MAX_OPS:  # the most often kept in float, then model order
        keep = set(sorted(ops, key=lambda o: -share[o])[:_MAX_OPS])
        shown = [o for o in ops if o in keep]
    fig = _figure(7.5, 1.2 + 0.28 * len(shown))
    ax = fig.subplots()
    ys = range(len(shown))
    ax.barh(list(ys), [share[o] for o in shown], color="tab:orange")
    ax.set_yticks(list(ys), [f"{o or '(root)'} ({result.best_plan.op_types[o]})" for o in shown])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of {len(basis)} {what} trials with the op in fp32")
    best_fp32 = [o for o in shown if result.best_plan[o] is None]
    for i, o in enumerate(shown):
        if o in best_fp32:
            ax.text(min(share[o], 0.92) + 0.01, i, "fp32 in best", va="center", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    suffix = f", {len(shown)} of {len(ops)} ops shown" if len(shown) < len(ops) else ""
    ax.set_title(f"per-op fp32 fallback frequency{suffix}")
    fig.savefig(path, dpi=100)
    return None


def best_sparsity(result: TuningResult, path: str) -> str | None:
    """Per-op sparsity of the best plan: share of each op's weights zeroed or removed."""
    report = getattr(result.best_model, "autoquant_pruning", None)
    if report is None or not report.ops:
        return "the best plan prunes nothing"
    ops = list(report.ops)[:_MAX_OPS]
    fig = _figure(7.5, 1.2 + 0.28 * len(ops))
    ax = fig.subplots()
    ys = list(range(len(ops)))
    ax.barh(ys, [report.ops[o]["sparsity"] for o in ops], color="tab:green")
    labels = [f"{o} ({report.ops[o]['pattern']})" for o in ops]
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("sparsity (share of weights zeroed or removed)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        f"best plan: {len(report.ops)} pruned ops, params {report.params[0]} -> {report.params[1]}"
    )
    fig.savefig(path, dpi=100)
    return None


def sensitivity(result: TuningResult, path: str) -> str | None:
    """Per-unit sensitivity scores (output error with only that unit quantized)."""
    scores = result.sensitivity
    if not scores:
        return "the strategy computed no sensitivity scores (its first plan passed)"
    units = sorted(scores, key=lambda u: -scores[u])[:_MAX_OPS]
    fig = _figure(7.5, 1.2 + 0.28 * len(units))
    ax = fig.subplots()
    ys = list(range(len(units)))
    ax.barh(ys, [max(scores[u], 1e-12) for u in units], color="tab:red")
    ax.set_xscale("log")
    ax.set_yticks(ys, units)
    ax.invert_yaxis()
    ax.set_xlabel("relative output error on calibration data, only this op quantized")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"per-op sensitivity ({len(units)} of {len(scores)} most sensitive)")
    fig.savefig(path, dpi=100)
    return None


def optimization_history(result: TuningResult, path: str) -> str | None:
    if len(result.study.directions) == 1:
        try:
            return _optuna_history(result, path)
        except Exception:  # noqa: BLE001 - fall back to our own drawing
            pass
    # Multi-objective: Optuna draws no best-value line for a target; ours does.
    return _own_history(result, path)


def _objective_name(result: TuningResult) -> str:
    return "size (bytes)" if result.config.objective == "size" else "latency (ms)"


def _optuna_history(result: TuningResult, path: str) -> str | None:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history

    study = result.study
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return "no complete trial in the study"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        ax = plot_optimization_history(study, target_name=_objective_name(result))
    fig = ax.figure
    try:
        ax.set_title(
            f"optimization history ({result.config.strategy}; infeasible = missed the goal)"
        )
        fig.set_size_inches(8, 4.8)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return None


def _own_history(result: TuningResult, path: str) -> str | None:
    points = _evaluated(result)
    if not points:
        return "no evaluated trial"

    from autoquant.tuning import objective

    def value(t: TrialRecord) -> float:
        return objective.primary(result.config.objective, t.metrics)

    fig = _figure(8, 4.8)
    ax = fig.subplots()
    for state in ("pass", "fail"):
        group = [t for t in points if (t.state == "pass") == (state == "pass")]
        if group:
            ax.scatter(
                [t.number for t in group],
                [value(t) for t in group],
                color=_COLORS[state],
                label="passing" if state == "pass" else "failing (infeasible)",
            )
    # The line follows the same choice as the result (latencies within min_gain tie and
    # the smaller model wins), so it ends at the model the search returned.
    xs, ys, passing = [], [], []
    for t in sorted(points, key=lambda t: t.number):
        if t.passed:
            passing.append(t)
        if passing:
            xs.append(t.number)
            ys.append(value(objective.best(passing, result.config)))
    if xs:
        ax.step(xs, ys, where="post", color="tab:blue", label="best passing so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(_objective_name(result))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"optimization history ({result.config.strategy})")
    fig.savefig(path, dpi=100)
    return None
