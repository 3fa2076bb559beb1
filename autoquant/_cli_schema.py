"""Structured configs of the command line: the schema every conf/ file is checked against.

Hydra composes conf/*.yaml on top of these dataclasses, so a misspelt key or a value of
the wrong type fails at composition, before any model is loaded. The model and data
groups hold user objects (``_target_`` factories with free arguments), so only their
fixed keys are typed; their factories are checked when the job starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

__all__ = ["JobConfig", "register_schemas"]


@dataclass
class ModelConfig:
    name: str = MISSING  # used in the study name
    factory: Any = MISSING  # {_target_: package.module.fn, ...}: returns the float nn.Module


@dataclass
class MetricConfig:
    name: str = "accuracy"
    higher_is_better: bool = True
    # best value a mean-over-samples metric can reach (1.0 for accuracy); enables pruning
    bounds: float | None = None


@dataclass
class DataConfig:
    calib: Any = MISSING  # {_target_: ...}: an iterable of model inputs (calibration)
    eval_fn: Any = MISSING  # {_target_: ...}: returns eval_fn(model) -> float
    example_inputs: Any = None  # {_target_: ...}: inputs for latency (default: first calib batch)
    metric: MetricConfig = field(default_factory=MetricConfig)


@dataclass
class SpaceConfig:
    search: list[str] = field(default_factory=lambda: ["approach", "scheme", "observer"])
    approaches: list[str] = field(default_factory=lambda: ["static", "dynamic", "weight_only"])
    observers: list[str] = field(default_factory=lambda: ["minmax", "kl", "percentile", "mse"])
    tie: str = "op"
    include_simulated: bool = False


@dataclass
class StrategyConfig:
    name: str = "basic"


@dataclass
class LatencyConfig:
    threads: int = 1
    repeats: int = 20
    warmup: int = 3
    min_gain: float = 0.03


@dataclass
class TuningSection:
    criterion: str = "relative"
    tolerable_loss: float = 0.01
    objective: str = "latency"
    max_trials: int = 100
    timeout: float | None = None
    stop_on_first_pass: bool = False
    max_failure_rate: float = 0.5
    calib_samples: int = 100
    seed: int = 1978
    latency: LatencyConfig = field(default_factory=LatencyConfig)


@dataclass
class BackendConfig:
    name: str = "x86"


@dataclass
class TrackingSection:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None
    log_model: bool = True
    registered_model: str | None = None
    plots: bool = True


@dataclass
class StorageConfig:
    # Optuna storage; None keeps the study in memory (one process). journal:///abs.log for
    # workers on one machine, postgresql://user@host/db for workers on several.
    url: str | None = None
    heartbeat_interval: int = 10  # seconds; a worker silent for 3 intervals is dead


@dataclass
class StudyConfig:
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
    space: SpaceConfig = MISSING
    strategy: StrategyConfig = MISSING
    tuning: TuningSection = MISSING
    backend: BackendConfig = MISSING
    tracking: TrackingSection = MISSING
    storage: StorageConfig = MISSING
    study: StudyConfig = field(default_factory=StudyConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


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
    ):
        cs.store(group=group, name=f"{group}_schema", node=node)
