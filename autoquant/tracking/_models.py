"""The best model in MLflow: logged under the parent run's ``model/`` artifacts,
registered as a new version, and the alias ``best`` moved to it when the goal was met.

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

__all__ = ["ALIAS", "log_best_model", "move_alias", "register_version"]

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
        },
        description=summary,
    )
    return str(version.version)


def move_alias(client: Any, name: str, version: str, *, met: bool) -> None:
    """Point the alias ``best`` at ``version`` when it met the goal; otherwise leave the
    alias where it is (a model that missed the goal must not become the one served)."""
    if met:
        client.set_registered_model_alias(name, ALIAS, version)
    else:
        log.warning(
            "model version %s of %r did not meet the accuracy goal: alias %r not moved",
            version,
            name,
            ALIAS,
        )
