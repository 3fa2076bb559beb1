"""``autoquant space=prune_quant``: summary.json and MLflow report the best plan's sparsity."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import FAST, _mlflow_runs, _run


def test_prune_quant_space_reports_sparsity_and_sizes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _run(
        [
            *FAST,
            "model=digits",  # its conv channels prune; the default MLP's fc1 needs fp32
            "space=prune_quant",
            "space.approaches=[static]",
            "space.search=[]",
            "tuning.max_trials=4",
            "space.prune_ratios=[0.5]",
            "tuning.objective=size",  # exact, so the pruned plan wins deterministically
            "tuning.tolerable_loss=0.05",
            "tracking.log_model=false",  # the registry: tests/test_cli.py
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    sizes = summary["sizes"]
    assert sizes["best_bytes"] < sizes["baseline_bytes"] and sizes["saved_model_bytes"] > 0
    pruning = summary["pruning"]
    assert pruning is not None, out.stdout[-2000:]
    assert pruning["params_after"] < pruning["params_before"]
    assert all(0 < s < 1 for s in pruning["sparsity"].values())
    assert "pruned ops" in out.stdout
    runs = _mlflow_runs(tmp_path / "mlflow.db")
    parent = next(r for r in runs if r.info.run_id == summary["mlflow_run_id"])
    logged = {k: v for k, v in parent.data.metrics.items() if k.startswith("best.sparsity.")}
    assert logged == {f"best.sparsity.{f}": s for f, s in pruning["sparsity"].items()}
    plots = Path(parent.info.artifact_uri.removeprefix("file://")) / "plots"
    assert (plots / "best_sparsity.png").exists()
