"""Study storage: URLs, secrets, and a stopped study resuming without re-running trials."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from tuning._helpers import fast_config, train_cancer

import autoquant as aq
from autoquant.storage import PASSWORD_ENV, mask_url, open_storage


def test_mask_url_hides_passwords_only() -> None:
    assert (
        mask_url("postgresql://aq:s3cr3t@db.example:5432/studies")
        == "postgresql://aq:***@db.example:5432/studies"
    )
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask_url(None) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("journal://relative.log", "absolute path"),
        ("grpc://host", "grpc://host:port"),
        ("redis://localhost", "storage URL must be"),
    ],
)
def test_bad_storage_urls_fail_fast(url: str, message: str) -> None:
    with pytest.raises(aq.ConfigError, match=message):
        open_storage(url)


def test_unreachable_database_is_a_clear_error_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("psycopg2", reason="PostgreSQL driver not installed")
    monkeypatch.setenv(PASSWORD_ENV, "not-in-the-message")
    t0 = time.monotonic()
    with pytest.raises(aq.ConfigError) as exc:
        open_storage("postgresql://aq@127.0.0.1:1/none")
    assert time.monotonic() - t0 < 15
    assert "not-in-the-message" not in str(exc.value)


def test_storage_requires_a_study_name() -> None:
    with pytest.raises(aq.ConfigError, match="study_name"):
        aq.TuningConfig(storage="sqlite:///x.db")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_stopped_study_resumes_without_rerunning_finished_trials(tmp_path: Path, kind: str) -> None:
    cancer = train_cancer()
    url = (
        f"journal://{tmp_path / 'study.log'}"
        if kind == "journal"
        else f"sqlite:///{tmp_path / 'study.db'}"
    )
    calls: list[str] = []

    def eval_fn(model: torch.nn.Module) -> float:
        calls.append("eval")
        return cancer.accuracy(model)

    config = fast_config(strategy="basic", storage=url, study_name="resume-me", max_trials=3)
    first = aq.tune(cancer.model, eval_fn, calib_data=cancer.calib, config=config)
    assert first.stopped_because == "max_trials" and first.n_evaluations == 3
    first_hashes = [t.plan_hash for t in first.trials if t.evaluated]
    calls.clear()
    # "Restart" with a larger budget: the 3 finished plans are known, 3 new ones run.
    second = aq.tune(
        cancer.model, eval_fn, calib_data=cancer.calib, config=config.replace(max_trials=6)
    )
    evaluated_now = [t for t in second.trials if t.evaluated and t.plan_hash not in first_hashes]
    assert len(calls) == 1 + len(evaluated_now)  # the baseline, then only new plans
    assert len(evaluated_now) == 3
    assert second.n_evaluations == 6
    hashes = [t.plan_hash for t in second.trials if t.evaluated]
    assert len(hashes) == len(set(hashes)) == 6
    assert second.study.study_name == "resume-me"
    assert second.study.user_attrs["config"]["storage"] == url
