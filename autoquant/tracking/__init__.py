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
inside a ``python_function`` model whose loader module is ``autoquant.tracking``
(:func:`_load_pyfunc`, defined in :mod:`autoquant.tracking.pyfunc`; every logged model
names this package, so it keeps that name):
``mlflow.pyfunc.load_model("models:/<name>@best")`` then rebuilds it with
:func:`autoquant.load` from the ``model_factory`` given to :func:`make_tracker` (without
one, download the artifacts and call ``autoquant.load(dir, model=...)``). Which recorded
factories that loader imports: :mod:`autoquant.tracking.pyfunc`.

``mlflow`` (about 3 s to import) is imported on first use (``on_start``), never by
``import autoquant.tracking``; a disabled tracker never imports it and writes nothing.
The parent run ends in ``on_end``; call :meth:`Tracker.close` (or use the tracker as a
context manager) so that a failed search, or a failure after it, ends it as FAILED.
Logging is synchronous: each trial costs four tracking calls (~25-110 ms with a local
sqlite store, most of it sqlite commits). Errors in ``on_start``/``on_trial`` propagate
(and stop the search); failures while drawing plots or logging the model in ``on_end``
become a RuntimeWarning and the tag ``autoquant.tracking_errors``, so the result is not
lost.

Modules, one job each: :mod:`~autoquant.tracking.config` (:class:`TrackingConfig`),
:mod:`~autoquant.tracking.base` (:class:`Tracker`, :class:`NoopTracker`),
``_runs`` (:class:`MlflowTracker`: experiment, parent and nested runs, batching),
``_models`` (logging, registering and aliasing the best model), ``_values`` (keys,
params and metrics as MLflow takes them), :mod:`~autoquant.tracking.pyfunc` (the
``python_function`` flavour) and :mod:`~autoquant.tracking.plots` (the PNG plots).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoquant.tracking._runs import MlflowTracker
from autoquant.tracking._values import trial_params
from autoquant.tracking.base import NoopTracker, Tracker
from autoquant.tracking.config import TrackingConfig

# MLflow's entry point for python_function models logged with loader_module
# "autoquant.tracking" (every model logged in autoquant's format, old and new).
from autoquant.tracking.pyfunc import AutoQuantPyfunc, _load_pyfunc  # noqa: F401

__all__ = [
    "TrackingConfig",
    "Tracker",
    "NoopTracker",
    "MlflowTracker",
    "make_tracker",
    "trial_params",
    "AutoQuantPyfunc",
]


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
        from autoquant.serialize import split_factory

        split_factory(model_factory)  # SerializationError now, not after the search
    if not config.enabled:
        return NoopTracker()
    return MlflowTracker(
        config, study_name=study_name, run_config=run_config, model_factory=model_factory
    )
