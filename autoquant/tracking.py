"""MLflow tracking of a tuning run: a callback that records a study as MLflow runs.

``make_tracker(TrackingConfig(...), study_name=..., run_config=...)`` returns a
:class:`Tracker` to pass to ``autoquant.tune(callbacks=[tracker])``. With tracking on it
records, in the experiment named after the study (``TrackingConfig.experiment``):

* one **parent run** per study (run name = study name): the flattened ``run_config``
  (dotted keys) and the :class:`~autoquant.tuning.TuningConfig` (``tuner.*``) as
  params, the baseline metrics (``baseline.*``), and at the end the best metrics
  (``best.*``, ``met``, trial counts), the history ``best_so_far.*`` and
  ``search.evaluations`` (step = trial number), the summary (also as the run
  description), ``trials.json``, ``best_plan.yaml``, ``run_config.yaml``, plots
  (``plots/*.png``) and the best model (``model/``, see below). Artifacts of a sqlite
  store go to ``mlartifacts/`` next to the database file, so
  ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows everything;
* one **nested run per trial**, every trial included (``cached`` ones carry the tag
  ``cached_from`` and the metrics of the trial they reuse; the ``skipped`` all-float
  plan has no metrics): op-type-level params (``op_type.<T>``: the most common choice
  among the ops of type T, ``fp32_ops``/``fp32_ops.<T>``: ops kept in float,
  ``plan_hash``), metrics (accuracy, loss, latency median/p90, speedup and size
  reduction vs the baseline, size_bytes, trial wall time and its build/eval/measure
  parts), tags (state, passed, strategy, trial, error) and the full plan as
  ``plan.yaml``. Error trials end as FAILED runs, pruned ones as KILLED.

The best model (``log_model=True``) is logged as an MLflow Model under the parent
run's ``model/`` artifacts and registered (``registered_model``, default: the
experiment name) as a new version; the alias ``best`` moves to it when the accuracy goal
was met (a model that missed the goal is registered, tagged ``goal_met=false``, and no
alias moves). Format: ``mlflow.pytorch`` (pickle) when the model pickles; models that do
not (torch.fx GraphModules, which the x86 backend builds, fail both in pickle and in
``torch.export``) are logged in autoquant's pickle-free format (:func:`autoquant.save`)
inside a ``python_function`` model whose loader is this module (:func:`_load_pyfunc`):
``mlflow.pyfunc.load_model("models:/<name>@best")`` then rebuilds it with
:func:`autoquant.load`, which needs the ``model_factory`` given to :func:`make_tracker`
(without one, download the artifacts and call ``autoquant.load(dir, model=...)``).

``mlflow`` (about 3 s to import) is imported on first use (``on_start``), never by
``import autoquant.tracking``; a disabled tracker never imports it and writes nothing.
The parent run ends in ``on_end``; call :meth:`Tracker.close` (or use the tracker as a
context manager) so that a failed search, or a failure after it, ends it as FAILED.
Logging is synchronous: each trial costs four tracking calls (~25-110 ms with a local
sqlite store, most of it sqlite commits). Errors in ``on_start``/``on_trial`` propagate
(and stop the search); failures while drawing plots or logging the model in ``on_end``
become a RuntimeWarning and the tag ``autoquant.tracking_errors``, so the result is not
lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import posixpath
import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoquant.errors import ConfigError
from autoquant.storage import mask_url
from autoquant.tuning.callbacks import TuningCallback

if TYPE_CHECKING:
    from autoquant.tuning.result import Metrics, TrialRecord, TuningResult
    from autoquant.tuning.space import SearchSpace

__all__ = ["TrackingConfig", "Tracker", "NoopTracker", "MlflowTracker", "make_tracker"]

log = logging.getLogger("autoquant.tracking")

# Older MLflow servers cap a param value at 500 characters (newer ones at 6000): values
# are cut to fit the oldest limit; the full run config is logged as run_config.yaml.
_MAX_PARAM = 500
_MAX_TAG = 5000
_MAX_KEY = 250
_BATCH = 100  # params/tags per log_batch call (MLflow's limit)
_PARENT_ATTR = "autoquant:mlflow_parent"  # study user attr: the parent run of all workers
_TRUNCATED = "...[truncated]"
_FP32 = "fp32"
_ALIAS = "best"
_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


def _fail(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"TrackingConfig.{field} must be {allowed}, but got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where and what to track.

    enabled: False gives a tracker that does nothing (mlflow is never imported).
    uri: MLflow tracking URI: ``sqlite:///path.db`` (relative paths are resolved against
        the working directory when the tracker is made), ``http(s)://host:port``,
        ``postgresql://...``, ``mysql://...``, ``databricks``. MLflow >= 3.13 refuses the
        file store, so plain paths and ``file:`` URIs are rejected here.
    experiment: experiment name; default: the study name given to :func:`make_tracker`.
    log_model: log the best model and register it in the model registry.
    registered_model: registered model name; default: the experiment name.
    plots: accuracy vs latency, per-op fp32 fallback frequency and the optimization
        history, as PNG artifacts of the parent run.
    """

    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None
    log_model: bool = True
    registered_model: str | None = None
    plots: bool = True

    def __post_init__(self) -> None:
        for name in ("enabled", "log_model", "plots"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, getattr(self, name), "a bool")
        if not isinstance(self.uri, str) or not self.uri.strip():
            raise _fail("uri", self.uri, "a non-empty MLflow tracking URI string")
        match = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):", self.uri.strip())
        scheme = match.group(1).lower() if match else ""
        if self.uri.strip() in ("databricks", "databricks-uc"):
            pass
        elif len(scheme) < 2 or scheme == "file":  # no scheme, "C:\...", file:
            raise _fail(
                "uri",
                self.uri,
                "a tracking URI such as 'sqlite:///mlflow.db' or 'http://host:5000' (MLflow "
                ">= 3.13 refuses the file store, so local paths and file: URIs cannot be used)",
            )
        for name in ("experiment", "registered_model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise _fail(name, value, "None or a non-empty string")


# -- the no-op base --------------------------------------------------------------------


class Tracker(TuningCallback):
    """A tracker that records nothing: what :func:`make_tracker` returns when tracking is
    off. :class:`MlflowTracker` overrides every method."""

    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    model_uri: str | None = None  # "models:/<name>/<version>" once the best model is registered

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """Log a directory's files (or one file) under ``artifact_path`` of the parent run."""

    def close(self, status: str = "FINISHED") -> None:
        """End the parent run if it is still open (idempotent); ``"FAILED"`` on error."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


class NoopTracker(Tracker):
    """Tracking off: every hook does nothing."""

    def __repr__(self) -> str:
        return "NoopTracker()"


def make_tracker(
    config: TrackingConfig,
    *,
    study_name: str,
    run_config: Mapping[str, Any],
    model_factory: str | None = None,
) -> Tracker:
    """A tracker for one study: a :class:`NoopTracker` when ``config.enabled`` is False
    (mlflow is not imported, no file is created), else an :class:`MlflowTracker`.

    Args:
        config: the tracking settings.
        study_name: names the experiment (unless ``config.experiment``) and the parent run.
        run_config: the whole run configuration (nested dict), logged as params with
            dotted keys and as ``run_config.yaml``.
        model_factory: ``"package.module:callable"`` returning the float model; stored
            with the logged model so MLflow can load it without being given the
            architecture (see :func:`autoquant.save`).
    """
    if not isinstance(config, TrackingConfig):
        raise TypeError(f"config must be a TrackingConfig, but got {type(config).__name__}.")
    if not isinstance(study_name, str) or not study_name.strip():
        raise ValueError(f"study_name must be a non-empty string, but got {study_name!r}.")
    if not isinstance(run_config, Mapping):
        raise TypeError(f"run_config must be a mapping, but got {type(run_config).__name__}.")
    if model_factory is not None:
        from autoquant.serialize import _split_factory

        _split_factory(model_factory)  # SerializationError now, not after the search
    if not config.enabled:
        return NoopTracker()
    return MlflowTracker(
        config, study_name=study_name, run_config=run_config, model_factory=model_factory
    )


# -- helpers ---------------------------------------------------------------------------


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


def _key(name: str) -> str | None:
    """``name`` made a valid MLflow param/metric key (None if it cannot be)."""
    key = re.sub(r"[^/\w.\- ]", "_", str(name))
    if posixpath.normpath(key) != key or key.startswith("/"):
        key = key.replace("/", "_")
    if not key or len(key) > _MAX_KEY or posixpath.normpath(key) != key:
        return None
    return key


def _text(value: Any, limit: int = _MAX_PARAM) -> str:
    if isinstance(value, str):
        s = value
    elif isinstance(value, (list, tuple, dict)):
        try:
            s = json.dumps(value, default=str)
        except (TypeError, ValueError):
            s = str(value)
    else:
        s = str(value)
    if len(s) > limit:
        s = s[: limit - len(_TRUNCATED)] + _TRUNCATED
    return s


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; leaves (lists included) kept as they are."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = dict(v) if isinstance(v, Mapping) else v
    return out


def _params(values: Mapping[str, Any]) -> dict[str, str]:
    """MLflow-safe params: keys sanitised (invalid ones dropped), values cut to 500."""
    out: dict[str, str] = {}
    for k, v in values.items():
        key = _key(k)
        if key is None:
            log.debug("param %r skipped: not a valid MLflow key", k)
            continue
        out[key] = _text(v)
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _metric_dict(m: Metrics, baseline: Metrics | None) -> dict[str, float]:
    out = {
        "accuracy": float(m.accuracy),
        "loss": float(m.loss),
        "latency_ms": float(m.latency_ms),
        "latency_p90_ms": float(m.latency_p90_ms),
        "size_bytes": float(m.size_bytes),
    }
    if baseline is not None:
        if m.latency_ms > 0:
            out["speedup"] = baseline.latency_ms / m.latency_ms
        if m.size_bytes > 0:
            out["size_reduction"] = baseline.size_bytes / m.size_bytes
    return {k: v for k, v in out.items() if _finite(v)}


def trial_params(record: TrialRecord) -> dict[str, Any]:
    """Op-type-level params of one trial (the full plan goes to plan.yaml)."""
    plan = record.plan
    by_type: dict[str, list[str]] = {}
    fp32_names = []
    for fqn, cfg in plan.items():
        label = _FP32 if cfg is None else cfg.short()
        by_type.setdefault(plan.op_types[fqn], []).append(label)
        if cfg is None:
            fp32_names.append(fqn or "(root)")
    params: dict[str, Any] = {
        "plan_hash": record.plan_hash,
        "n_ops": len(plan),
        "fp32_ops": len(fp32_names),
        "fp32_op_names": ",".join(fp32_names) if fp32_names else "none",
    }
    for op_type, labels in by_type.items():
        # most_common keeps first-seen order on ties: the earliest op's choice wins.
        params[f"op_type.{op_type}"] = Counter(labels).most_common(1)[0][0]
        params[f"fp32_ops.{op_type}"] = labels.count(_FP32)
    return params


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
                return client.create_experiment(self.experiment, artifact_location=location)
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
                from autoquant._plots import write_plots

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
        import mlflow.pyfunc
        import mlflow.pytorch
        import torch

        parent = self._require_run()
        reqs = [f"torch=={torch.__version__}", "autoquant"]
        meta = {
            "autoquant_plan_hash": result.best_plan.hash,
            "autoquant_study": self.study_name,
            "autoquant_goal_met": bool(result.met),
        }
        with tempfile.TemporaryDirectory(prefix="autoquant-model-") as tmp:
            path = os.path.join(tmp, "model")
            plan_file = os.path.join(tmp, "plan.yaml")
            Path(plan_file).write_text(result.best_plan.to_yaml())
            mlflow_log = logging.getLogger("mlflow.pytorch")
            level = mlflow_log.level
            try:
                # Quiet: MLflow warns that pickle is unsafe before it finds out whether the
                # model pickles at all (GraphModules do not).
                mlflow_log.setLevel(logging.ERROR)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mlflow.pytorch.save_model(
                        result.best_model,
                        path,
                        serialization_format="pickle",
                        pip_requirements=reqs,
                        extra_files=[plan_file],
                        metadata=meta | {"autoquant_format": "torch-pickle"},
                    )
                    # A pickle that cannot be read back is no model: check it loads.
                    mlflow.pytorch.load_model(path)
                self.model_flavor = "pytorch"
            except Exception as exc:  # noqa: BLE001 - e.g. GraphModule pickling, quantized ops
                mlflow_log.setLevel(level)
                log.info(
                    "mlflow.pytorch cannot save the best model (%s); logging it in "
                    "autoquant's format as a python_function model",
                    exc,
                )
                shutil.rmtree(path, ignore_errors=True)
                from autoquant.serialize import save

                saved = save(
                    result.best_model,
                    os.path.join(tmp, "autoquant_model"),
                    model_factory=self.model_factory,
                )
                mlflow.pyfunc.save_model(
                    path,
                    loader_module="autoquant.tracking",
                    data_path=str(saved),
                    pip_requirements=reqs,
                    metadata=meta | {"autoquant_format": "autoquant-model"},
                )
                self.model_flavor = "autoquant"
            finally:
                mlflow_log.setLevel(level)
            self._client.log_artifacts(parent, path, "model")
        self._register(result, summary)

    def _register(self, result: TuningResult, summary: str) -> None:
        from mlflow.exceptions import MlflowException

        client, parent = self._client, self._require_run()
        name = self.registered_model
        try:
            client.create_registered_model(
                name, description=f"autoquant best models of experiment {self.experiment!r}"
            )
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        source = client.get_run(parent).info.artifact_uri.rstrip("/") + "/model"
        version = client.create_model_version(
            name,
            source,
            run_id=parent,
            tags={
                "study": self.study_name,
                "plan_hash": result.best_plan.hash,
                "goal_met": str(result.met).lower(),
                "flavor": self.model_flavor or "",
                "accuracy": f"{result.best.accuracy:.6g}",
                "latency_ms": f"{result.best.latency_ms:.6g}",
            },
            description=summary,
        )
        self.model_version = str(version.version)
        self.model_uri = f"models:/{name}/{version.version}"
        if result.met:
            client.set_registered_model_alias(name, _ALIAS, version.version)
        else:
            log.warning(
                "model version %s of %r did not meet the accuracy goal: alias %r not moved",
                version.version,
                name,
                _ALIAS,
            )

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


def _yaml(value: Any) -> str:
    import yaml

    try:
        return yaml.safe_dump(_jsonable(value), sort_keys=False, default_flow_style=False)
    except yaml.YAMLError:
        return json.dumps(value, default=str, indent=1)


# -- the python_function flavor of models saved in autoquant's format ------------------


class AutoQuantPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns the model as (``_model_impl``).

    ``predict`` takes a numpy array, a pandas DataFrame, a torch tensor, a list/tuple of
    them (positional inputs) or a dict (keyword inputs), and returns the first output
    tensor as a numpy array. ``get_raw_model()`` is the quantized ``torch.nn.Module``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_raw_model(self) -> Any:
        return self.model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import torch

        from autoquant.inputs import call_model as _call
        from autoquant.inputs import first_tensor as _first_tensor

        def tensor(x: Any) -> torch.Tensor:
            if isinstance(x, torch.Tensor):
                return x
            if hasattr(x, "to_numpy"):
                x = x.to_numpy()
            t = torch.as_tensor(x)
            return t.float() if t.dtype == torch.float64 else t

        if isinstance(model_input, Mapping):
            inputs: Any = {k: tensor(v) for k, v in model_input.items()}
        elif isinstance(model_input, (list, tuple)):
            inputs = tuple(tensor(v) for v in model_input)
        else:
            inputs = tensor(model_input)
        with torch.inference_mode():
            return _first_tensor(_call(self.model, inputs)).float().numpy()


def _load_pyfunc(data_path: str) -> AutoQuantPyfunc:
    """MLflow's loader for ``python_function`` models logged by :class:`MlflowTracker`."""
    from autoquant.serialize import load

    return AutoQuantPyfunc(load(data_path))
