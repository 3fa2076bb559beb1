"""The best model in MLflow: logged under the parent run's ``model/`` artifacts,
registered as a new version, and the alias ``best`` pointed at the best passing version
for the same goal (:func:`move_alias`).

Format: ``mlflow.pytorch`` (pickle) when the model pickles and the pickle loads back;
otherwise (torch.fx GraphModules) autoquant's pickle-free format (:func:`autoquant.save`)
inside a ``python_function`` model whose loader is :mod:`autoquant.tracking.pyfunc`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoquant.tracking.pyfunc import LOADER_MODULE

if TYPE_CHECKING:
    from autoquant.tuning import TuningResult

__all__ = ["ALIAS", "goal_tag", "log_best_model", "move_alias", "register_version"]

log = logging.getLogger("autoquant.tracking")

ALIAS = "best"


def log_best_model(
    client: Any,
    run_id: str,
    result: TuningResult,
    *,
    study_name: str,
    model_factory: str | None,
) -> str:
    """Log ``result.best_model`` under ``model/`` of ``run_id``; returns the flavour
    (``"pytorch"`` or ``"autoquant"``)."""
    import mlflow.pyfunc
    import mlflow.pytorch
    import torch

    reqs = [f"torch=={torch.__version__}", "autoquant"]
    meta = {
        "autoquant_plan_hash": result.best_plan.hash,
        "autoquant_study": study_name,
        "autoquant_goal_met": bool(result.met),
    }
    with tempfile.TemporaryDirectory(prefix="autoquant-model-") as tmp:
        path = os.path.join(tmp, "model")
        plan_file = os.path.join(tmp, "plan.yaml")
        Path(plan_file).write_text(result.best_plan.to_yaml())
        mlflow_log = logging.getLogger("mlflow.pytorch")
        level = mlflow_log.level
        try:
            if _has_graph_module(result.best_model):
                # torch.fx GraphModules do not pickle (torch.package's importer fails on
                # their generated code): straight to autoquant's format, nothing to report.
                raise _NotPicklable
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
            flavor = "pytorch"
        except Exception as exc:  # noqa: BLE001 - e.g. GraphModule pickling, quantized ops
            mlflow_log.setLevel(level)
            if not isinstance(exc, _NotPicklable):
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
                model_factory=model_factory,
            )
            mlflow.pyfunc.save_model(
                path,
                loader_module=LOADER_MODULE,
                data_path=str(saved),
                pip_requirements=reqs,
                metadata=meta | {"autoquant_format": "autoquant-model"},
            )
            flavor = "autoquant"
        finally:
            mlflow_log.setLevel(level)
        client.log_artifacts(run_id, path, "model")
    return flavor


class _NotPicklable(Exception):
    """The model is known not to pickle: use autoquant's format."""


def _has_graph_module(model: Any) -> bool:
    import torch.fx

    return any(isinstance(m, torch.fx.GraphModule) for m in model.modules())


def register_version(
    client: Any,
    run_id: str,
    result: TuningResult,
    summary: str,
    *,
    name: str,
    experiment: str,
    study_name: str,
    flavor: str | None,
) -> str:
    """A new version of registered model ``name`` (created if missing) from the
    ``model/`` artifacts of ``run_id``; returns the version number."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description=f"autoquant best models of experiment {experiment!r}"
        )
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
    version = client.create_model_version(
        name,
        source,
        run_id=run_id,
        tags={
            "study": study_name,
            "plan_hash": result.best_plan.hash,
            "goal_met": str(result.met).lower(),
            "flavor": flavor or "",
            "accuracy": f"{result.best.accuracy:.6g}",
            "latency_ms": f"{result.best.latency_ms:.6g}",
            "size_bytes": str(int(result.best.size_bytes)),
            "goal": goal_tag(result.config),
            "objective": result.config.objective,
        },
        description=summary,
    )
    return str(version.version)


def goal_tag(config: Any) -> str:
    """The goal a version was tuned for, as its ``goal`` tag: versions compare only with
    versions of the same goal (e.g. ``relative loss <= 0.01, higher is better``)."""
    direction = "higher" if config.higher_is_better else "lower"
    return f"{config.criterion} loss <= {config.tolerable_loss:g}, {direction} is better"


def _rank(versions: list[Any], objective: str, margin: float) -> Any:
    """The best of passing versions, by the tuner's own rule (autoquant.tuning.objective
    .best): for latency, versions within ``margin`` of the fastest count as equally fast
    and the smallest of them wins; for size, the smallest. Ties: the older version."""

    def num(v: Any, key: str) -> float:
        return float(v.tags.get(key, "inf"))

    order = sorted(versions, key=lambda v: int(v.version))
    if objective == "size":
        return min(order, key=lambda v: (num(v, "size_bytes"), num(v, "latency_ms")))
    fastest = min(num(v, "latency_ms") for v in order)
    close = [v for v in order if num(v, "latency_ms") <= fastest * (1 + margin)]
    return min(close, key=lambda v: (num(v, "size_bytes"), num(v, "latency_ms")))


def move_alias(client: Any, name: str, version: str, *, result: TuningResult) -> str | None:
    """Point the alias ``best`` at the best passing version of ``name`` registered for the
    same goal (:func:`goal_tag`) and objective as ``version``; returns the version it
    points at, or None when nothing passes. A version that missed the goal never becomes
    ``best``; one that met it becomes ``best`` only if it beats the versions before it,
    so a later, worse run of a sweep does not take the alias."""
    config = result.config
    if not result.met:
        log.warning(
            "model version %s of %r did not meet the accuracy goal: alias %r not moved",
            version,
            name,
            ALIAS,
        )
        return None
    goal = goal_tag(config)
    quoted = name.replace("'", "\\'")
    candidates = [
        v
        for v in client.search_model_versions(f"name='{quoted}'")
        if v.tags.get("goal_met") == "true"
        and v.tags.get("goal") == goal
        and v.tags.get("objective") == config.objective
    ]
    if not any(str(v.version) == str(version) for v in candidates):
        candidates.append(client.get_model_version(name, version))
    margin = 0.0 if config.objective == "size" else config.min_latency_gain
    chosen = str(_rank(candidates, config.objective, margin).version)
    client.set_registered_model_alias(name, ALIAS, chosen)
    if chosen != str(version):
        log.info(
            "model version %s of %r met the goal; alias %r stays at version %s (better %s, "
            "same goal: %s)",
            version,
            name,
            ALIAS,
            chosen,
            config.objective,
            goal,
        )
    return chosen
