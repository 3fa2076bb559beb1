"""Run logging: :class:`MlflowTracker`, a tuning callback that records a study as one
parent run (per study, shared by its workers) and one nested run per trial.

MLflow is imported on first use (``on_start``). Params, tags and metrics go out in
batches (MLflow's limits: 100 params+tags, 1000 metrics per call); the per-trial history
of the parent is logged once, in ``on_end``, since every sqlite commit costs ~20 ms.
The best model and its registration: :mod:`autoquant.tracking._models`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoquant.errors import ConfigError
from autoquant.storage import mask_url
from autoquant.tracking import _models

# Imported under their old private names: the moved bodies below stay as they were.
from autoquant.tracking._values import MAX_TAG as _MAX_TAG
from autoquant.tracking._values import TRUNCATED as _TRUNCATED
from autoquant.tracking._values import finite as _finite
from autoquant.tracking._values import flatten as _flatten
from autoquant.tracking._values import jsonable as _jsonable
from autoquant.tracking._values import metric_dict as _metric_dict
from autoquant.tracking._values import params as _params
from autoquant.tracking._values import text as _text
from autoquant.tracking._values import trial_params
from autoquant.tracking._values import yaml_text as _yaml
from autoquant.tracking.base import Tracker
from autoquant.tracking.config import TrackingConfig

if TYPE_CHECKING:
    from autoquant.tuning import Metrics, SearchSpace, TrialRecord, TuningResult

__all__ = ["MlflowTracker"]

log = logging.getLogger("autoquant.tracking")

_BATCH = 100  # params/tags per log_batch call (MLflow's limit)
_PARENT_ATTR = "autoquant:mlflow_parent"  # study user attr: the parent run of all workers
_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# What the experiment is, for MLflow 3's UI (its kind selector; UIs that choose their view
# by it open the model-training view, runs table and metric charts, not the GenAI one).
# MLflow 3.17's UI chooses its view from a global setting instead: the CLI prints the
# run's link with ?workflowType=machine_learning. Values (3.17): genai_development,
# custom_model_development, finetuning, forecasting, classification.
_KIND_TAG, _KIND = "mlflow.experimentKind", "custom_model_development"


def _resolve_uri(uri: str) -> str:
    """Relative sqlite paths made absolute (so a later chdir cannot move the store)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("file:"):
            return "sqlite:///" + os.path.abspath(path)
    return uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


def _run_status(state: str) -> str:
    return {"error": "FAILED", "pruned": "KILLED"}.get(state, "FINISHED")


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _quiet_urls() -> Iterator[None]:
    """Stop MLflow printing "View run ... at: <url>" (and fetching the run for it) when
    a run ends on a tracking server; the parent run still prints its link (unless its
    URL holds a password)."""
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


# -- the MLflow tracker ----------------------------------------------------------------


class MlflowTracker(Tracker):
    """Records a study in MLflow; see the module docstring for what goes where.

    Attributes set as the run goes: ``run_id`` (parent run, from ``on_start``),
    ``experiment_id``, ``model_uri`` (registered version), ``overhead_s`` (seconds each
    ``on_trial`` spent logging).
    """

    def __init__(
        self,
        config: TrackingConfig,
        *,
        study_name: str,
        run_config: Mapping[str, Any],
        model_factory: str | None = None,
    ) -> None:
        self.config = config
        self.study_name = study_name
        self.run_config = dict(run_config)
        self.model_factory = model_factory
        self.tracking_uri = _resolve_uri(config.uri)
        self.experiment = config.experiment or study_name
        self.registered_model = config.registered_model or self.experiment
        self.run_id = None
        self.experiment_id = None
        self.model_uri = None
        self.model_version: str | None = None
        self.model_flavor: str | None = None
        self.overhead_s: list[float] = []
        self._history: list[tuple[int, int, TrialRecord | None, int]] = []
        self._client: Any = None
        self._baseline: Metrics | None = None
        self._tuning: Any = None
        self._status: str | None = None  # the parent run's final status once ended
        self._started = False
        self._joined = False  # logging under a parent run that another worker created
        self._final = True  # False once on_end saw other workers' trials still running

    def __repr__(self) -> str:
        return (
            f"MlflowTracker(uri={mask_url(self.tracking_uri)!r}, experiment={self.experiment!r}, "
            f"run_id={self.run_id!r})"
        )

    # -- MLflow plumbing -----------------------------------------------------------------
    def _connect(self) -> Any:
        from mlflow import MlflowClient

        path = _sqlite_path(self.tracking_uri)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # The first call on a fresh sqlite store creates its schema (1-7 s, once).
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            location = None
            db = _sqlite_path(self.tracking_uri)
            if db is not None:
                # Next to the database rather than in ./mlruns of whatever the working
                # directory is: `mlflow ui --backend-store-uri sqlite:///...` finds both.
                slug = re.sub(r"[^\w.-]+", "_", self.experiment).strip("._")[:60] or "exp"
                digest = hashlib.sha1(self.experiment.encode("utf-8")).hexdigest()[:8]
                location = (db.parent / "mlartifacts" / f"{slug}-{digest}").as_uri()
            try:
                return client.create_experiment(
                    self.experiment, artifact_location=location, tags={_KIND_TAG: _KIND}
                )
            except MlflowException as exc:  # another process created it meanwhile
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise exc from None
        if exp.lifecycle_stage != "active":
            raise ConfigError(
                f"MLflow experiment {self.experiment!r} at {mask_url(self.tracking_uri)} is deleted; "
                "restore it (`mlflow experiments restore`) or choose another "
                "TrackingConfig.experiment."
            )
        if _KIND_TAG not in exp.tags:  # made before autoquant set it, or by someone else
            client.set_experiment_tag(exp.experiment_id, _KIND_TAG, _KIND)
        return exp.experiment_id

    def _log_batch(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        ts = _now_ms()
        m = [Metric(k, float(v), ts, step) for k, v in (metrics or {}).items() if _finite(v)]
        p = [Param(k, v) for k, v in (params or {}).items()]
        t = [RunTag(k, _text(v, _MAX_TAG)) for k, v in (tags or {}).items()]
        while m or p or t:
            # At most 100 params+tags and 1000 metrics per call.
            n_p = min(len(p), _BATCH)
            n_t = min(len(t), _BATCH - n_p)
            self._client.log_batch(run_id, metrics=m[:1000], params=p[:n_p], tags=t[:n_t])
            m, p, t = m[1000:], p[n_p:], t[n_t:]

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError(
                "the tracker has no MLflow run yet: pass it to autoquant.tune(callbacks=[...]) "
                "first (the parent run starts in on_start)."
            )
        return self.run_id

    # -- TuningCallback ------------------------------------------------------------------
    def on_start(
        self, *, space: SearchSpace, baseline: Metrics, config: Any, study: Any, **_: Any
    ) -> None:
        if self._started:
            raise RuntimeError("an MlflowTracker records one study; make a new one per tune().")
        self._started = True
        self._client = self._connect()
        self.experiment_id = self._experiment_id()
        self._baseline, self._tuning = baseline, config
        import getpass
        import sys

        tags = {
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": os.path.basename(sys.argv[0] or "python") or "python",
            "autoquant.study": self.study_name,
            "autoquant.role": "study",
            "strategy": getattr(config, "strategy", ""),
            "objective": getattr(config, "objective", ""),
        }
        with contextlib.suppress(Exception):
            tags["mlflow.user"] = getpass.getuser()
        if self.model_factory:
            tags["autoquant.model_factory"] = self.model_factory
        shared = getattr(config, "storage", None) is not None
        if shared and self._join_parent(study):
            return  # another worker (or an earlier run) of this study made the parent
        run = self._client.create_run(self.experiment_id, run_name=self.study_name, tags=tags)
        self.run_id = run.info.run_id
        if shared:
            study.set_user_attr(
                _PARENT_ATTR, {"tracking_uri": mask_url(self.tracking_uri), "run_id": self.run_id}
            )
        params = _flatten(self.run_config)
        if hasattr(config, "to_dict"):  # TuningConfig: every setting by its flat name
            for k, v in config.to_dict().items():
                params.setdefault(f"tuner.{k}", list(v) if isinstance(v, tuple) else v)
        if params.get("tuner.storage"):
            params["tuner.storage"] = mask_url(params["tuner.storage"])  # never a password
        params.setdefault("space.units", len(space))
        params.setdefault("space.log10_size", round(space.log10_size, 2))
        params.setdefault("space.tie", space.tie)
        safe = _params(params)
        truncated = [k for k, v in safe.items() if v.endswith(_TRUNCATED)]
        self._log_batch(
            self.run_id,
            params=safe,
            metrics={f"baseline.{k}": v for k, v in _metric_dict(baseline, None).items()},
            tags={"autoquant.truncated_params": ",".join(truncated)} if truncated else None,
        )
        self._log_texts(
            self.run_id,
            {
                "run_config.yaml": _yaml(self.run_config),
                "search_space.txt": space.describe() + "\n",
            },
        )

    def _join_parent(self, study: Any) -> bool:
        """Attach to the study's parent run if one exists in this tracking store.

        All workers of a study (and every restart of it) log their trials under one
        parent: the first to start creates it and records its id in the study. The
        study's worker that prepares it (see tune) starts first, so workers don't race.
        """
        known = study.user_attrs.get(_PARENT_ATTR)
        if not known or known.get("tracking_uri") != mask_url(self.tracking_uri):
            return False
        try:
            run = self._client.get_run(known["run_id"])
        except Exception:  # noqa: BLE001 - deleted or from a wiped store: make a new one
            return False
        if run.info.lifecycle_stage != "active":
            return False
        self.run_id = run.info.run_id
        self._joined = True
        return True

    def on_trial(self, record: TrialRecord, *, evaluations: int, best: TrialRecord | None) -> None:
        t0 = time.perf_counter()
        parent = self._require_run()
        total = record.timings.get("total_s")
        start = _now_ms() - (int(total * 1000) if _finite(total) else 0)
        tags = {
            "mlflow.parentRunId": parent,
            "autoquant.study": self.study_name,
            "autoquant.role": "trial",
            "state": record.state,
            "passed": str(bool(record.passed)).lower(),
            "strategy": getattr(self._tuning, "strategy", ""),
            "trial": str(record.number),
        }
        if record.cached_from is not None:
            tags["cached_from"] = str(record.cached_from)
        if record.error:
            tags["error"] = record.error
        if record.metrics is not None and record.metrics.simulated_ops:
            tags["simulated_ops"] = ",".join(record.metrics.simulated_ops)
        run = self._client.create_run(
            self.experiment_id,
            start_time=start,
            run_name=f"trial-{record.number:03d}",
            tags={k: _text(v, _MAX_TAG) for k, v in tags.items()},
        )
        child = run.info.run_id
        status = _run_status(record.state)
        try:
            metrics: dict[str, float] = {}
            if record.metrics is not None:
                metrics.update(_metric_dict(record.metrics, self._baseline))
            if record.cached_from is None:
                names = {"total_s": "trial_time_s", "build_s": "build_s"}
                names |= {"eval_s": "eval_s", "measure_s": "measure_s"}
                # QAT trials: fine-tuning time (autoquant.tuning._qat)
                names |= {"train_s": "train_time_s", "prepare_s": "qat_prepare_s"}
                for k, v in record.timings.items():
                    if k in names:
                        metrics[names[k]] = v
            self._log_batch(
                child, params=_params(trial_params(record)), metrics=metrics, step=record.number
            )
            self._client.log_text(child, record.plan.to_yaml(), "plan.yaml")
        except BaseException:
            status = "FAILED"
            raise
        finally:
            with _quiet_urls():  # else MLflow prints two lines per trial for http stores
                self._client.set_terminated(child, status=status)
        # The parent's per-trial history (best so far) is logged in on_end, in one call:
        # each sqlite commit costs ~20 ms.
        self._history.append((record.number, evaluations, best, _now_ms()))
        self.overhead_s.append(time.perf_counter() - t0)

    def on_end(self, result: TuningResult) -> None:
        parent = self._require_run()
        client = self._client
        problems: list[str] = []
        states = Counter(t.state for t in result.trials)
        metrics = {f"best.{k}": v for k, v in _metric_dict(result.best, result.baseline).items()}
        metrics |= {
            "met": float(result.met),
            "n_trials": float(len(result.trials)),
            "n_evaluations": float(result.n_evaluations),
            "elapsed_s": float(result.elapsed_s),
            "calibration_passes": float(result.calibration_passes),
            "best_trial": float(result.best_trial),
            "goal.target": float(result.config.target(result.baseline.accuracy)),
        }
        metrics |= {f"trials.{k}": float(v) for k, v in states.items()}
        report = getattr(result.best_model, "autoquant_pruning", None)
        if report is not None:
            # Per-op sparsity of the best plan (share of weights zeroed or removed).
            metrics |= {
                f"best.sparsity.{f or 'root'}": float(op["sparsity"])
                for f, op in report.ops.items()
            }
            metrics["best.params_after_pruning"] = float(report.params[1])
        if result.float_baselines is not None:
            fb = result.float_baselines
            for key, value in fb.to_dict().items():
                if value is not None:
                    metrics[f"float.{key}"] = float(value)
            metrics["speedup_vs_fastest_float"] = float(result.speedup)
        for v in result.verified:
            metrics[f"verified.trial_{v.trial}.predicted_ms"] = float(v.predicted_ms)
            metrics[f"verified.trial_{v.trial}.measured_ms"] = float(v.measured_ms)
        if self.overhead_s:
            metrics["tracking.overhead_s_per_trial"] = sum(self.overhead_s) / len(self.overhead_s)
        summary = result.summary()
        tags = {
            "met": str(result.met).lower(),
            "stopped_because": result.stopped_because,
            "best_trial": str(result.best_trial),
            "best_plan_hash": result.best_plan.hash,
            "mlflow.note.content": f"```\n{summary}\n```",
        }
        self._log_batch(parent, metrics=metrics, tags=tags)
        self._log_history(parent)
        trials = [t.to_dict() for t in result.trials]
        self._log_texts(
            parent,
            {
                "summary.txt": summary + "\n",
                "best_plan.yaml": result.best_plan.to_yaml(),
                "trials.json": json.dumps(_jsonable(trials), indent=1) + "\n",
                "tuning_config.json": json.dumps(_jsonable(result.config.to_dict()), indent=1),
            },
        )
        if self.config.plots:
            try:
                from autoquant.tracking.plots import write_plots

                with tempfile.TemporaryDirectory(prefix="autoquant-plots-") as tmp:
                    _, skipped = write_plots(result, tmp)
                    problems += [f"plot {name}: {why}" for name, why in skipped]
                    if any(Path(tmp).iterdir()):
                        client.log_artifacts(parent, tmp, "plots")
            except Exception as exc:  # noqa: BLE001 - plots must not lose the result
                problems.append(f"plots: {type(exc).__name__}: {exc}")
        # With several workers, each logs its view of the study when it stops; the one
        # that stops last (no trial left running) logs and registers the model and ends
        # the parent run, so the registry gets one version per study, not per worker.
        self._final = result.finished_study
        if not self._final:
            self._log_batch(parent, tags={"autoquant.model": "logged by the last worker"})
        if self.config.log_model and self._final:
            try:
                self._log_best_model(result, summary)
            except Exception as exc:  # noqa: BLE001 - neither may the registry
                problems.append(f"model: {type(exc).__name__}: {exc}")
        if problems:
            text = "; ".join(problems)
            warnings.warn(f"MLflow tracking: {text}", RuntimeWarning, stacklevel=2)
            log.warning("MLflow tracking: %s", text)
            self._log_batch(parent, tags={"autoquant.tracking_errors": text})
        self._end("FINISHED")

    def _log_history(self, parent: str) -> None:
        """Per trial (step = trial number): evaluations so far and the best passing model."""
        from mlflow.entities import Metric

        history = []
        for number, evaluations, best, ts in self._history:
            values = {"search.evaluations": float(evaluations)}
            if best is not None and best.metrics is not None:
                for k, v in _metric_dict(best.metrics, self._baseline).items():
                    values[f"best_so_far.{k}"] = v
            history += [Metric(k, v, ts, number) for k, v in values.items() if _finite(v)]
        for i in range(0, len(history), 1000):
            self._client.log_batch(parent, metrics=history[i : i + 1000])

    # -- the best model ------------------------------------------------------------------
    def _log_best_model(self, result: TuningResult, summary: str) -> None:
        parent = self._require_run()
        self.model_flavor = _models.log_best_model(
            self._client,
            parent,
            result,
            study_name=self.study_name,
            model_factory=self.model_factory,
        )
        name = self.registered_model
        version = _models.register_version(
            self._client,
            parent,
            result,
            summary,
            name=name,
            experiment=self.experiment,
            study_name=self.study_name,
            flavor=self.model_flavor,
        )
        self.model_version = version
        self.model_uri = f"models:/{name}/{version}"
        _models.move_alias(self._client, name, version, result=result)

    # -- artifacts and the end -----------------------------------------------------------
    def _log_texts(self, run_id: str, files: Mapping[str, str]) -> None:
        """Several small text files in one upload."""
        with tempfile.TemporaryDirectory(prefix="autoquant-mlflow-") as tmp:
            for name, text in files.items():
                Path(tmp, name).write_text(text)
            self._client.log_artifacts(run_id, tmp)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        run_id = self._require_run()
        path = Path(local_dir)
        if path.is_dir():
            self._client.log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            self._client.log_artifact(run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"nothing to log at {local_dir!r}")

    def _end(self, status: str) -> None:
        if self.run_id is None:
            return
        if not self._final:
            self._status = status  # other workers still log under the parent: leave it open
            return
        # MLflow prints the parent's link when it ends; not when the URL holds a password.
        quiet = _quiet_urls() if mask_url(self.tracking_uri) != self.tracking_uri else None
        with quiet or contextlib.nullcontext():
            self._client.set_terminated(self.run_id, status=status)
        self._status = status

    def close(self, status: str = "FINISHED") -> None:
        if status not in _RUN_STATUSES:
            raise ValueError(f"status must be one of {list(_RUN_STATUSES)}, but got {status!r}.")
        if self.run_id is None or self._status == status:
            return
        if self._status is None or status != "FINISHED":
            # Open: end it. Already ended by on_end but something failed afterwards
            # (saving, logging the saved model): the run says so.
            self._end(status)
