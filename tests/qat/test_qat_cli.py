"""The ``train`` config group: the installed ``autoquant`` command runs QAT trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

AUTOQUANT = Path(sys.executable).with_name("autoquant")
FAST = ["tuning.latency.repeats=3", "tuning.latency.warmup=1", "output.progress=log"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [str(AUTOQUANT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_train_sgd_runs_qat_trials_recorded_in_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    import autoquant
    from autoquant.examples.digits import load_data

    run_dir = tmp_path / "run"
    out = _run(
        [
            *FAST,
            "model=digits",  # the model with a train data factory (data/digits.yaml)
            "space.approaches=[qat]",
            "train=sgd",
            "train.qat.trials=1",
            "train.qat.steps=5",
            "tuning.tolerable_loss=0.05",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["met"] is True and summary["n_trials"] == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if r.data.tags.get("autoquant.role") == "trial"
    ]
    (trial,) = runs
    assert trial.data.params["approach"] == "qat"
    assert trial.data.params["qat_budget"] == "epochs=1 lr_x1 steps<=5"
    assert trial.data.metrics["train_time_s"] > 0
    # the trained, converted model was saved and reloads on real kernels
    loaded = autoquant.load(summary["model_path"], trust_factory=summary["model_factory"])
    assert not autoquant.quant_info(loaded).simulated
    x, y = load_data()["x_test"], load_data()["y_test"]
    with torch.inference_mode():
        acc = float((loaded(x).argmax(1) == y).float().mean())
    assert abs(acc - summary["best"]["accuracy"]) < 1e-6  # float32 mean vs float64


def test_qat_without_a_train_group_is_refused(tmp_path: Path) -> None:
    out = _run([*FAST, "space.approaches=[static,qat]", "tracking=off"], tmp_path)
    assert out.returncode != 0
    assert "train_fn" in out.stderr + out.stdout
