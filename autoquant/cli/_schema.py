"""Structured configs of the command line: the schema every conf/ file is checked against.

Hydra composes conf/*.yaml on top of these dataclasses, so a misspelt key or a value of
the wrong type fails at composition, before any model is loaded. The model and data
groups hold user objects (``_target_`` factories with free arguments), so only their
fixed keys are typed; their factories are checked when the job starts.

The tuning settings are not written here a second time: :data:`CONF_KEYS` says where each
``TuningConfig`` setting lives in conf/, and the schema nodes for them are derived from
the sections of :mod:`autoquant.tuning.config` (names, types, defaults). OmegaConf makes a
frozen dataclass node read-only, which Hydra cannot merge conf files into, so each node is
a plain dataclass with the section's fields; the values are validated by the sections
themselves when :func:`tuning_config` builds the ``TuningConfig``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from autoquant.tuning import config as tc

__all__ = ["CONF_KEYS", "JobConfig", "register_schemas", "train_fn", "tuning_config"]

# conf key -> TuningConfig setting (flat name). study.name and tuning.seed are adjusted in
# tuning_config (the study name matters only with a storage; each worker its own seed).
CONF_KEYS: dict[str, str] = {
    "tuning.criterion": "criterion",
    "tuning.tolerable_loss": "tolerable_loss",
    "tuning.objective": "objective",
    "tuning.max_trials": "max_trials",
    "tuning.timeout": "timeout",
    "tuning.stop_on_first_pass": "stop_on_first_pass",
    "tuning.max_failure_rate": "max_failure_rate",
    "tuning.calib_samples": "calib_samples",
    "tuning.seed": "seed",
    "tuning.latency.threads": "latency_threads",
    "tuning.latency.repeats": "latency_repeats",
    "tuning.latency.warmup": "latency_warmup",
    "tuning.latency.min_gain": "min_latency_gain",
    "tuning.latency.mode": "latency_mode",
    "tuning.latency.verify_top": "latency_verify_top",
    "data.metric.higher_is_better": "higher_is_better",
    "data.metric.bounds": "metric_bounds",
    "space.search": "search",
    "space.approaches": "approaches",
    "space.observers": "observers",
    "space.tie": "tie",
    "space.include_simulated": "include_simulated",
    "space.prune_patterns": "prune_patterns",
    "space.prune_ratios": "prune_ratios",
    "space.prune_schedule": "prune_schedule",
    "space.prune_stages": "prune_stages",
    "space.prune_ramp": "prune_ramp",
    "space.prune_epochs": "prune_epochs",
    "space.prune_lr_scales": "prune_lr_scales",
    "strategy.name": "strategy",
    "backend.name": "backend",
    "storage.url": "storage",
    "storage.heartbeat_interval": "heartbeat_interval",
    "study.name": "study_name",
    "train.qat.epochs": "qat_epochs",
    "train.qat.lr_scales": "qat_lr_scales",
    "train.qat.steps": "qat_steps",
    "train.qat.trials": "qat_trials",
    "train.qat.learn_scales": "qat_learn_scales",
    "train.qat.freeze_bn_at": "qat_freeze_bn_at",
}


def _setting(flat: str) -> tuple[Any, Any]:
    """(type, default) of a TuningConfig setting, read from its section."""
    section, name = tc.FLAT[flat]
    if not section:  # the backend name
        return str, "x86"
    cls = tc._SECTIONS[section]
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return typing.get_type_hints(cls)[name], f.default


def _node(
    name: str,
    prefix: str,
    first: tuple[tuple[str, Any, Any], ...] = (),
    last: tuple[tuple[str, Any, Any], ...] = (),
) -> type:
    """A schema node holding the settings under ``prefix`` in :data:`CONF_KEYS`, between
    the node's own ``first`` and ``last`` fields."""
    fields: list[tuple[str, Any, Any]] = list(first)
    for key, flat in CONF_KEYS.items():
        parent, _, leaf = key.rpartition(".")
        if parent != prefix:
            continue
        kind, default = _setting(flat)
        if isinstance(default, tuple):  # lists in YAML; the section makes them tuples
            fields.append((leaf, kind, field(default_factory=lambda d=default: list(d))))
        else:
            fields.append((leaf, kind, field(default=default)))
    node = dataclasses.make_dataclass(name, fields + list(last))
    node.__module__ = __name__  # (make_dataclass's module= needs Python 3.12)
    return node


@dataclass
class ModelConfig:
    name: str = MISSING  # used in the study name
    factory: Any = MISSING  # {_target_: package.module.fn, ...}: returns the float nn.Module


MetricConfig = _node("MetricConfig", "data.metric", (("name", str, field(default="accuracy")),))
SpaceConfig = _node("SpaceConfig", "space")
StrategyConfig = _node("StrategyConfig", "strategy")
LatencyConfig = _node("LatencyConfig", "tuning.latency")
TuningSection = _node(
    "TuningSection",
    "tuning",
    last=(("latency", LatencyConfig, field(default_factory=LatencyConfig)),),
)
BackendConfig = _node("BackendConfig", "backend")
TrainQATConfig = _node("TrainQATConfig", "train.qat")
StorageConfig = _node("StorageConfig", "storage")


@dataclass
class DataConfig:
    calib: Any = MISSING  # {_target_: ...}: an iterable of model inputs (calibration)
    eval_fn: Any = MISSING  # {_target_: ...}: returns eval_fn(model) -> float
    example_inputs: Any = None  # {_target_: ...}: inputs for latency (default: first calib batch)
    # {_target_: ..., _partial_: true}: train(batch_size) -> (input, target) batches, the
    # fine-tuning data of train=sgd (QAT)
    train: Any = None
    metric: MetricConfig = field(default_factory=MetricConfig)  # type: ignore[valid-type]


@dataclass
class TrainConfig:
    """QAT fine-tuning (the ``train`` group): ``none``, or ``sgd``, a built-in loop
    (:class:`autoquant.qat.train.TrainLoop`) over ``data``; ``factory`` instead names
    the user's own ``train_fn`` factory. ``qat``: the QAT trials' search settings."""

    name: str = "none"
    factory: Any = None  # {_target_: ...}: returns train_fn(model) or train_fn(model, budget)
    data: Any = None  # {_target_: ..., _partial_: true}: data(batch_size) -> batches
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 64
    loss: str = "cross_entropy"  # cross_entropy | mse
    qat: TrainQATConfig = field(default_factory=TrainQATConfig)  # type: ignore[valid-type]


@dataclass
class TrackingSection:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None
    log_model: bool = True
    registered_model: str | None = None
    plots: bool = True


@dataclass
class StudyNode:
    name: str = "${model.name}-${strategy.name}"
    # This worker's index: its sampler seed is tuning.seed + worker, so workers on one
    # study propose different plans (launch.workers=N numbers its workers from here).
    worker: int = 0


@dataclass
class LaunchConfig:
    # >1: this job starts that many worker processes on this machine, all on one study
    # (needs a shared storage, e.g. storage=journal), and waits for them.
    workers: int = 1


@dataclass
class OutputConfig:
    save_model: bool = True
    progress: str = "auto"  # auto | bar | log | off


@dataclass
class JobConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    space: SpaceConfig = MISSING  # type: ignore[valid-type]
    strategy: StrategyConfig = MISSING  # type: ignore[valid-type]
    tuning: TuningSection = MISSING  # type: ignore[valid-type]
    backend: BackendConfig = MISSING  # type: ignore[valid-type]
    tracking: TrackingSection = MISSING
    storage: StorageConfig = MISSING  # type: ignore[valid-type]
    train: TrainConfig = field(default_factory=TrainConfig)
    study: StudyNode = field(default_factory=StudyNode)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def tuning_config(cfg: Any) -> tc.TuningConfig:
    """The ``TuningConfig`` a composed job config describes (validated by its sections)."""
    from omegaconf import OmegaConf

    settings = {}
    for key, flat in CONF_KEYS.items():
        value = OmegaConf.select(cfg, key)
        settings[flat] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    # Workers of one study need different seeds, or they propose the same plans.
    settings["seed"] = int(settings["seed"]) + int(cfg.study.worker)
    if settings["storage"] is None:
        settings["study_name"] = None  # an in-memory study has no name to find it by
    else:
        settings["study_name"] = str(settings["study_name"])
    return tc.TuningConfig(**settings)


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (group files declare them as their base)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="job_schema", node=JobConfig)
    for group, node in (
        ("model", ModelConfig),
        ("data", DataConfig),
        ("space", SpaceConfig),
        ("strategy", StrategyConfig),
        ("tuning", TuningSection),
        ("backend", BackendConfig),
        ("tracking", TrackingSection),
        ("storage", StorageConfig),
        ("train", TrainConfig),
    ):
        cs.store(group=group, name=f"{group}_schema", node=node)


def train_fn(cfg: Any) -> Any:
    """The ``train_fn`` the ``train`` group describes, or None (``train=none``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = cfg.get("train")
    if node is None or node.name == "none":
        return None
    if node.factory is not None:
        return instantiate(node.factory, _convert_="all")
    if node.data is None:
        raise SystemExit(
            f"autoquant: train={node.name} needs train.data (a factory "
            "{_target_: ..., _partial_: true} returning (input, target) batches for a batch "
            "size) or train.factory (your own train_fn); data.train supplies it for the "
            "bundled examples."
        )
    from autoquant.qat.train import TrainLoop

    fields = OmegaConf.to_container(node, resolve=True)
    for key in ("name", "factory", "data", "qat"):
        fields.pop(key)
    return TrainLoop(data=instantiate(node.data, _convert_="all"), **fields)
