"""The one tracked tune() most tracking tests read back.

Creating the schema of a fresh MLflow sqlite database takes ~7 s here (alembic
migrations), so all sqlite tests share the store the ``tracked`` fixture creates (once
per session), and the server test serves that same store.
"""

from __future__ import annotations

import json
import types

import pytest
from tuning._helpers import train_cancer

import autoquant
from autoquant.tracking import TrackingConfig, make_tracker

from ._helpers import FACTORY, RUN_CONFIG, STUDY, tracked_config


@pytest.fixture(scope="session")
def task():
    return train_cancer()


@pytest.fixture(scope="session")
def tracked(tmp_path_factory, task):
    """One tracked tune() into a fresh sqlite store (its directory does not exist yet),
    used the way the CLI does (log_artifacts, close)."""
    root = tmp_path_factory.mktemp("tracked")
    store = root / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    cwd = root / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # nothing may land in the working directory
        tracker = make_tracker(
            TrackingConfig(uri=uri), study_name=STUDY, run_config=RUN_CONFIG, model_factory=FACTORY
        )
        result = autoquant.tune(
            task.model,
            task.accuracy,
            calib_data=task.calib,
            config=tracked_config(),
            callbacks=[tracker],
        )
        summary = root / "summary.json"
        summary.write_text(json.dumps({"met": result.met}))
        tracker.log_artifacts(str(summary))
        autoquant.save(result.best_model, root / "model", model_factory=FACTORY)
        tracker.log_artifacts(str(root / "model"), "autoquant_model")
        tracker.close("FINISHED")
        tracker.close("FINISHED")  # idempotent
    return types.SimpleNamespace(
        tracker=tracker, result=result, uri=uri, store=store, cwd=cwd, task=task
    )
