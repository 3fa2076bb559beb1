"""``autoquant``: the main job, a Hydra app over conf/.

``autoquant`` with no arguments tunes the embedded default (an MLP on scikit-learn's
breast-cancer data, static/dynamic int8, at most 1% relative accuracy loss, the goal
binding on its input layer), records every trial in MLflow and writes ``summary.json``
and the best model into the Hydra run directory. Everything is a config group
(``model``, ``data``, ``space``, ``strategy``, ``tuning``, ``backend``, ``tracking``,
``storage``); ``autoquant -m tuning.tolerable_loss=0.005,0.01 strategy=basic,tpe`` sweeps.

Start-up stays fast: torch, optuna and mlflow are imported only once the job runs.
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from autoquant.cli._noise import quiet_foreign_warnings
from autoquant.cli._schema import register_schemas, tuning_config
from autoquant.tuning.callbacks import TuningCallback

__all__ = ["main", "run_job"]

log = logging.getLogger("autoquant")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


# -- checking the command line before anything heavy ----------------------------------------
def _explain(exc: Exception, overrides: list[str]) -> str:
    """A message naming the key, what was given and what is allowed."""
    from hydra import compose, initialize_config_dir

    cause = exc.__cause__ or exc.__context__
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if cause is not None:
        lines += [ln.strip() for ln in str(cause).strip().splitlines()[:2] if ln.strip()]
    text = " ".join(dict.fromkeys(lines)).split(" Config search path:")[0]
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose("config")
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if node is None and parent:
            groups = sorted(k for k in base.keys())
            return (
                f"autoquant: unknown config key {key!r} ({text}). Top-level keys: "
                f"{', '.join(groups)}."
            )
        if isinstance(node, DictConfig) and leaf not in node:
            allowed = sorted(str(k) for k in node.keys())
            close = difflib.get_close_matches(leaf, allowed, n=1)
            hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
            where = f"under {parent!r}" if parent else "at the top level"
            return (
                f"autoquant: unknown config key {key!r}. Allowed keys {where}: "
                f"{', '.join(allowed)}.{hint}"
            )
    return f"autoquant: invalid configuration: {text}"


class _Refused(Exception):
    """A command line autoquant refuses, with the message to print."""


def _groups() -> dict[str, list[str]]:
    """Config group -> its choices (conf/<group>/*.yaml; the ``*_schema`` entries that
    Hydra's ConfigStore adds are what choices are checked against, not choices)."""
    return {
        d.name: sorted(f.stem for f in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir() and any(d.glob("*.yaml"))
    }


def _refuse_schemas(parsed: list[Any]) -> None:
    groups = _groups()
    for o in parsed:
        group = o.key_or_group.lstrip("+~")
        if group not in groups:
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            if isinstance(value, str) and value.endswith("_schema"):
                raise _Refused(
                    f"autoquant: {group}={value} is not a choice: {value!r} is the schema "
                    f"that {group} configs are checked against. Choose one of: "
                    f"{', '.join(groups[group])}."
                )


def _variants(parsed: list[Any], limit: int = 32) -> list[list[str]]:
    """Override lists to check a sweep with: every sweep at its first value, then each
    other value of each sweep in turn (so ``tuning.tolerable_loss=0.01,-1`` fails too)."""
    firsts: list[str] = []
    sweeps: list[tuple[int, str, list[str]]] = []
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            key = o.get_key_element()
            firsts.append(f"{key}={values[0]}")
            sweeps.append((i, key, values[1:]))
        else:
            firsts.append(o.input_line)
    out = [firsts]
    for i, key, rest in sweeps:
        for value in rest:
            if len(out) >= limit:
                return out
            out.append([*firsts[:i], f"{key}={value}", *firsts[i + 1 :]])
    return out


def _check_values(cfg: DictConfig) -> None:
    """The value checks the job makes before loading anything (same code, same messages)."""
    from autoquant.tracking import TrackingConfig

    _check_workers(cfg)
    tuning_config(cfg)
    TrackingConfig(**OmegaConf.to_container(cfg.tracking, resolve=True))
    if cfg.output.progress not in ("auto", "bar", "log", "off"):
        raise _Refused(
            "autoquant: output.progress must be one of auto, bar, log, off, but got "
            f"{cfg.output.progress!r}."
        )


def _check_overrides(argv: list[str]) -> None:
    """Compose the config with the given overrides (each value of a sweep) and check its
    values, before Hydra makes a run directory; exit 2 with a clear message."""
    overrides = [
        a for a in argv if not a.startswith("-") and "=" in a and not a.startswith("hydra")
    ]
    if not overrides:
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from autoquant.errors import AutoQuantError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        _refuse_schemas(parsed)
        for variant in _variants(parsed):
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose("config", overrides=variant, return_hydra_config=True)
            # conf values may interpolate ${hydra:runtime.cwd}: resolve them as a job would
            HydraConfig.instance().set_config(cfg)
            try:
                _check_values(cfg)
            except AutoQuantError as exc:
                raise _Refused(f"autoquant: {exc}") from None
            except SystemExit as exc:
                raise _Refused(str(exc.code)) from None
    except _Refused as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # noqa: BLE001 - any composition error is reported the same way
        print(_explain(exc, overrides), file=sys.stderr)
        raise SystemExit(2) from None


# -- the job ------------------------------------------------------------------------------------
def _check_workers(cfg: DictConfig) -> None:
    workers, worker = int(cfg.launch.workers), int(cfg.study.worker)
    if workers < 1 or worker < 0:
        raise SystemExit(
            f"autoquant: launch.workers must be >= 1 and study.worker >= 0, but got "
            f"launch.workers={workers}, study.worker={worker}."
        )
    if cfg.storage.url is None and (workers > 1 or worker > 0):
        raise SystemExit(
            f"autoquant: {workers} workers (study.worker={worker}) cannot share an in-memory "
            "study. Use storage=journal (workers on this machine) or "
            "storage.url=postgresql://user@host/db (workers on several machines)."
        )


def _factory_path(node: Any) -> str | None:
    """``package.module:function`` when the factory takes no arguments (so load() can use it)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    if any(k != "_target_" for k in node.keys()):
        return None
    module, _, attr = str(node._target_).rpartition(".")
    return f"{module}:{attr}"


def _instantiate(node: Any, what: str) -> Any:
    from hydra.utils import instantiate

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise SystemExit(
            f"autoquant: {what} must be a mapping with a '_target_' (a factory), got {node!r}."
        )
    return instantiate(node, _convert_="all")


def run_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Tune as configured; write summary.json and the best model into ``run_dir``."""
    import warnings

    from autoquant.tuning.strategies import get_strategy

    started = time.monotonic()
    _check_workers(cfg)
    config = tuning_config(cfg)  # fails on a bad value before any model is loaded
    get_strategy(config.strategy)  # and on an unknown strategy (strategy.name=...)
    from autoquant.backends import get_backend

    get_backend(config.backend).prepare()  # and on a missing device (backend=cuda, no GPU)

    import torch

    import autoquant
    from autoquant.cli._progress import Progress
    from autoquant.storage import mask_url
    from autoquant.tracking import TrackingConfig, make_tracker

    if config.storage is not None:
        from autoquant.storage import open_storage

        open_storage(config.storage)  # a bad URL or a down database: fail before loading
    tracking = TrackingConfig(**OmegaConf.to_container(cfg.tracking, resolve=True))
    study_name = str(cfg.study.name)
    torch.manual_seed(config.seed)

    log.info("loading model %s", cfg.model.name)
    model = _instantiate(cfg.model.factory, "model.factory")
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(
            f"autoquant: model.factory returned {type(model).__name__}, not a torch.nn.Module."
        )
    eval_fn = _instantiate(cfg.data.eval_fn, "data.eval_fn")
    calib = _instantiate(cfg.data.calib, "data.calib")
    example = (
        None
        if cfg.data.example_inputs is None
        else _instantiate(cfg.data.example_inputs, "data.example_inputs")
    )
    factory = _factory_path(cfg.model.factory)
    from autoquant.cli._schema import train_fn as _train_fn

    train_fn = _train_fn(cfg)  # train=none: None (and "qat" in space.approaches is refused)

    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config["storage"]["url"] = mask_url(cfg.storage.url)  # never log a password
    run_config["tracking"]["uri"] = mask_url(cfg.tracking.uri)
    tracker = make_tracker(
        tracking, study_name=study_name, run_config=run_config, model_factory=factory
    )
    progress = Progress(mode=cfg.output.progress, max_trials=config.max_trials)
    best_so_far = _BestSoFar(run_dir, save_model=bool(cfg.output.save_model), model_factory=factory)
    status = "FAILED"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            quiet_foreign_warnings()
            result = autoquant.tune(
                model,
                eval_fn,
                calib_data=calib,
                config=config,
                example_inputs=example,
                callbacks=[progress, tracker, best_so_far],
                train_fn=train_fn,
            )
        progress.close()
        model_dir = run_dir / "model"
        plan_path = run_dir / "best_plan.yaml"
        plan_path.write_text(result.best_plan.to_yaml())
        if cfg.output.save_model:
            autoquant.save(result.best_model, model_dir, model_factory=factory)
        summary = _summary(
            result,
            cfg,
            study_name,
            plan_path,
            model_dir if cfg.output.save_model else None,
            tracker,
            started,
        )
        summary_path = run_dir / "summary.json"
        summary_path.write_text(json.dumps(summary, indent=2))
        tracker.log_artifacts(str(summary_path))
        if cfg.output.save_model:
            tracker.log_artifacts(str(model_dir), "autoquant_model")
        status = "FINISHED"
    finally:
        progress.close()  # idempotent; also on errors, so the trial log is back on
        tracker.close(status)
    _print_report(result, summary, run_dir, tracking)
    return summary


class _BestSoFar(TuningCallback):
    """Keeps the best passing model found so far on disk while the search runs
    (``best_so_far/``: plan, metrics, model), so a study killed at any point leaves its
    best result behind. Overwritten (atomically) only when the best trial changes."""

    def __init__(self, run_dir: Path, *, save_model: bool, model_factory: str | None) -> None:
        self.dir = run_dir / "best_so_far"
        self.save_model, self.model_factory = save_model, model_factory
        self.number: int | None = None
        self.build: Any = None

    def on_start(self, *, build: Any, **_: Any) -> None:
        self.build = build  # from the study's calibration statistics: no recalibration

    def on_trial(self, record: Any, *, evaluations: int, best: Any) -> None:
        import shutil
        import tempfile

        import autoquant

        if best is None or best.number == self.number:
            return
        self.number = best.number
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".best_so_far-", dir=self.dir.parent))
        info = {
            "trial": best.number,
            "evaluations_so_far": evaluations,
            "plan_hash": best.plan_hash,
            "metrics": best.metrics.to_dict(),
        }
        (tmp / "best.json").write_text(json.dumps(info, indent=2))
        (tmp / "best_plan.yaml").write_text(best.plan.to_yaml())
        if self.save_model and "qat_budget" not in best.params:
            # Rebuilt from its plan (trial candidates are freed after each trial); a QAT
            # trial's model was trained, not built: the final result saves it.
            autoquant.save(self.build(best.plan), tmp / "model", model_factory=self.model_factory)
        old = self.dir.with_name(".best_so_far-old")
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.exists():
            self.dir.rename(old)
        tmp.rename(self.dir)
        shutil.rmtree(old, ignore_errors=True)


def _summary(
    result: Any,
    cfg: DictConfig,
    study: str,
    plan_path: Path,
    model_dir: Path | None,
    tracker: Any,
    started: float,
) -> dict[str, Any]:
    states: dict[str, int] = {}
    for t in result.trials:
        states[t.state] = states.get(t.state, 0) + 1
    return {
        "study": study,
        "met": result.met,
        "strategy": cfg.strategy.name,
        "goal": {
            "criterion": result.config.criterion,
            "tolerable_loss": result.config.tolerable_loss,
            "higher_is_better": result.config.higher_is_better,
            "target": result.config.target(result.baseline.accuracy),
        },
        "baseline": result.baseline.to_dict(),
        "best": result.best.to_dict(),
        "speedup": result.speedup,
        "size_reduction": result.size_reduction,
        "n_trials": len(result.trials),
        "n_evaluations": result.n_evaluations,
        "trial_states": states,
        "stopped_because": result.stopped_because,
        "fp32_ops": [f for f, c in result.best_plan.items() if c is None],
        "best_trial": result.best_trial,
        "best_plan_hash": result.best_plan.hash,
        "best_plan_path": str(plan_path),
        "model_path": None if model_dir is None else str(model_dir),
        "model_factory": _factory_path(cfg.model.factory),
        "storage": _masked(cfg.storage.url),
        "worker": int(cfg.study.worker),
        "calibration_passes": result.calibration_passes,
        "sizes": _sizes(result, model_dir),
        "pruning": _pruning(result, model_dir),
        "mlflow_run_id": tracker.run_id,
        "mlflow_experiment_id": getattr(tracker, "experiment_id", None),
        "mlflow_tracking_uri": _masked(tracker.tracking_uri),
        # Two durations: tune() (calibration, baseline and search: what the report prints
        # and MLflow's elapsed_s metric holds) and the whole job (loading the model and
        # data, training the model on first use, included).
        "elapsed_s": result.elapsed_s,
        "job_elapsed_s": time.monotonic() - started,
    }


def _sizes(result: Any, model_dir: Path | None) -> dict[str, int | None]:
    """In-memory sizes (dense) and, when saved, the bytes of the model's files."""
    saved = None
    if model_dir is not None and model_dir.is_dir():
        saved = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    return {
        "baseline_bytes": result.baseline.size_bytes,
        "best_bytes": result.best.size_bytes,
        "saved_model_bytes": saved,
    }


def _pruning(result: Any, model_dir: Path | None) -> dict[str, Any] | None:
    """Per-op sparsity of the best plan (None when it prunes nothing)."""
    from autoquant.pruning.apply import pruning_summary

    saved = str(model_dir) if model_dir is not None and model_dir.is_dir() else None
    return pruning_summary(result.best_model, saved)


def _masked(url: str | None) -> str | None:
    from autoquant.storage import mask_url

    return mask_url(url)


def _print_report(result: Any, summary: dict[str, Any], run_dir: Path, tracking: Any) -> None:
    print()
    print(result.summary())
    print(
        f"job: {summary['job_elapsed_s']:.1f} s in all, {summary['elapsed_s']:.1f} s of it "
        "tuning (the rest: loading the model and data, or training the model on first use)"
    )
    print(f"\nrun directory: {run_dir}")
    _print_outputs(summary, run_dir)
    if summary["mlflow_run_id"] and tracking.uri.startswith("sqlite:"):
        print(f"  open it with: mlflow ui --backend-store-uri {tracking.uri}")
        print(f"  then: http://127.0.0.1:5000/{_run_page(summary)}")
    elif summary["mlflow_run_id"] and tracking.uri.startswith(("http://", "https://")):
        print(f"  in the UI: {_masked(tracking.uri).rstrip('/')}/{_run_page(summary)}")


def _run_page(summary: dict[str, Any]) -> str:
    """The parent run's page in MLflow's UI. MLflow 3.17's UI picks its GenAI or
    model-training view from a global setting (default GenAI), not from the experiment's
    kind tag; this parameter opens the model-training view."""
    return (
        f"#/experiments/{summary['mlflow_experiment_id']}/runs/{summary['mlflow_run_id']}"
        "?workflowType=machine_learning"
    )


def _print_outputs(summary: dict[str, Any], run_dir: Path) -> None:
    """Where a run's results are: summary, best plan, model, MLflow run."""
    print(f"  summary:    {run_dir / 'summary.json'}")
    print(f"  best plan:  {summary['best_plan_path']}")
    if summary["model_path"]:
        # load() imports a recorded factory only when told to: this run wrote the
        # directory, so the hint names exactly the factory it recorded.
        factory = summary.get("model_factory")
        how = f"trust_factory={factory!r}" if factory else "model=<the float model>"
        print(f"  model:      {summary['model_path']}  (autoquant.load(path, {how}))")
    if summary["mlflow_run_id"]:
        print(f"MLflow run {summary['mlflow_run_id']} in {summary['mlflow_tracking_uri']}")


def _run_workers(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """``launch.workers=N``: N worker processes on one study (see autoquant/cli/_workers.py)."""
    from autoquant.cli._workers import supervise

    _check_workers(cfg)
    summary = supervise(cfg, run_dir)
    log.info(
        f"study {summary['study']}: goal {'MET' if summary['met'] else 'NOT MET'}, "
        f"{summary['n_evaluations']} evaluations by {len(summary['workers'])} workers, "
        f"best trial {summary['best_trial']}: speedup {summary['speedup']:.2f}x, "
        f"{summary['size_reduction']:.2f}x smaller, accuracy {summary['best']['accuracy']:.5g} "
        f"(fp32 {summary['baseline']['accuracy']:.5g})"
    )
    _print_outputs(summary, run_dir)
    return summary


def _drop_if_empty(run_dir: Path, cwd: Path) -> None:
    """Remove a run directory a refused job leaves with nothing in it but Hydra's copy of
    the config and an empty log (and the date folders above it, if they are left empty)."""
    import shutil

    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.name == ".hydra" or (entry.suffix == ".log" and entry.stat().st_size == 0):
            continue
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    while parent != cwd and cwd in parent.parents:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            return
        parent = parent.parent


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autoquant.errors import AutoQuantError

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        if int(cfg.launch.workers) > 1:
            summary = _run_workers(cfg, run_dir)
        else:
            summary = run_job(cfg, run_dir)
    except AutoQuantError as exc:
        # Bad configuration (a storage that cannot be opened, a study made for another
        # model, ...): the message says what to change; a traceback would bury it.
        print(f"autoquant: {exc}", file=sys.stderr)
        _drop_if_empty(run_dir, Path(hc.runtime.cwd))
        raise SystemExit(2) from None
    except SystemExit:
        _drop_if_empty(run_dir, Path(hc.runtime.cwd))
        raise
    # Returned to Hydra: a sweeper can optimise over it.
    return float(summary["best"]["latency_ms"])


def main() -> None:
    """Console entry point: check the overrides, then hand over to Hydra."""
    quiet_foreign_warnings()
    register_schemas()
    _check_overrides(sys.argv[1:])
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        _help()
    else:
        _app()


def _help() -> None:
    """Hydra's --help without the ``*_schema`` entries in the group lists: those are what a
    group's configs are checked against (ConfigStore entries), not choices."""
    import contextlib
    import io
    import re

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            _app()
    finally:
        text = buffer.getvalue()
        text = re.sub(r"(?:, )?\b\w+_schema\b(?=,|$)", "", text, flags=re.M)
        sys.stdout.write(re.sub(r"^(\w[\w/]*): , ", r"\1: ", text, flags=re.M))
