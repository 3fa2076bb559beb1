"""TrackingConfig, make_tracker's checks, and a disabled tracker (no mlflow, no files)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoquant.errors import ConfigError, SerializationError
from autoquant.tracking import TrackingConfig, make_tracker


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enabled", "yes"),
        ("uri", ""),
        ("uri", "mlruns"),
        ("uri", "file:///tmp/mlruns"),
        ("uri", "C:\\mlruns"),
        ("experiment", ""),
        ("log_model", 1),
        ("registered_model", 3),
        ("plots", None),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"TrackingConfig\.{field} "):
        TrackingConfig(**{field: value})


def test_config_accepts_tracking_uris():
    for uri in (
        "sqlite:///mlflow.db",
        "http://127.0.0.1:5000",
        "postgresql://u@h/db",
        "databricks",
    ):
        assert TrackingConfig(uri=uri).uri == uri
    with pytest.raises(TypeError):
        make_tracker(TrackingConfig(), study_name="s", run_config=[])
    with pytest.raises(ValueError, match="study_name"):
        make_tracker(TrackingConfig(), study_name="", run_config={})


def test_disabled_tracker_imports_no_mlflow_and_writes_nothing(tmp_path):
    """In a fresh process: a disabled tracker follows a real tune() without importing
    mlflow or creating a file; an enabled one imports mlflow only when the run starts."""
    code = textwrap.dedent(
        """
        import os, sys, warnings
        warnings.simplefilter("ignore")
        import torch, autoquant
        from autoquant.tracking import TrackingConfig, make_tracker

        tracker = make_tracker(TrackingConfig(enabled=False), study_name="s", run_config={"a": 1})
        model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
        calib = [torch.randn(4, 8) for _ in range(2)]
        config = autoquant.TuningConfig(
            max_trials=2, latency_repeats=1, latency_warmup=0, calib_samples=8
        )
        autoquant.tune(model, lambda m: 1.0, calib_data=calib, config=config, callbacks=[tracker])
        tracker.log_artifacts("summary.json")
        tracker.close("FAILED")
        assert tracker.run_id is None and tracker.tracking_uri is None, tracker
        enabled = make_tracker(TrackingConfig(uri="sqlite:///x.db"), study_name="s", run_config={})
        assert enabled.run_id is None
        enabled.close()  # never started: nothing to end
        print(sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")))
        print(sorted(os.listdir(".")))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    modules, files = out.stdout.strip().splitlines()[-2:]
    assert modules == "[]"
    assert files == "[]"
    assert list(tmp_path.iterdir()) == []


def test_a_bad_model_factory_fails_before_the_search():
    """make_tracker checks the factory path with serialize's public split_factory, so a
    typo fails now rather than when the best model is saved after the whole search."""
    from autoquant.serialize import split_factory

    assert split_factory("pkg.mod:build") == ("pkg.mod", "build")
    for bad in ("pkg.mod.build", ":build", "pkg.mod:"):
        with pytest.raises(SerializationError, match="package.module:callable"):
            make_tracker(
                TrackingConfig(enabled=False), study_name="s", run_config={}, model_factory=bad
            )
