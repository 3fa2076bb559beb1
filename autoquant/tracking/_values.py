"""What a tuning run's values become in MLflow: valid keys, params cut to the oldest
server's limits, finite metrics, and the op-type-level params of one trial."""

from __future__ import annotations

import json
import logging
import math
import posixpath
import re
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoquant.tuning import Metrics, TrialRecord

__all__ = ["trial_params"]

log = logging.getLogger("autoquant.tracking")

# Older MLflow servers cap a param value at 500 characters (newer ones at 6000): values
# are cut to fit the oldest limit; the full run config is logged as run_config.yaml.
MAX_PARAM = 500
MAX_TAG = 5000
_MAX_KEY = 250
TRUNCATED = "...[truncated]"
_FP32 = "fp32"


def key(name: str) -> str | None:
    """``name`` made a valid MLflow param/metric key (None if it cannot be)."""
    out = re.sub(r"[^/\w.\- ]", "_", str(name))
    if posixpath.normpath(out) != out or out.startswith("/"):
        out = out.replace("/", "_")
    if not out or len(out) > _MAX_KEY or posixpath.normpath(out) != out:
        return None
    return out


def text(value: Any, limit: int = MAX_PARAM) -> str:
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
        s = s[: limit - len(TRUNCATED)] + TRUNCATED
    return s


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; leaves (lists included) kept as they are."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = dict(v) if isinstance(v, Mapping) else v
    return out


def params(values: Mapping[str, Any]) -> dict[str, str]:
    """MLflow-safe params: keys sanitised (invalid ones dropped), values cut to 500."""
    out: dict[str, str] = {}
    for k, v in values.items():
        safe = key(k)
        if safe is None:
            log.debug("param %r skipped: not a valid MLflow key", k)
            continue
        out[safe] = text(v)
    return out


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def yaml_text(value: Any) -> str:
    import yaml

    try:
        return yaml.safe_dump(jsonable(value), sort_keys=False, default_flow_style=False)
    except yaml.YAMLError:
        return json.dumps(value, default=str, indent=1)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_dict(m: Metrics, baseline: Metrics | None) -> dict[str, float]:
    out = {
        "accuracy": float(m.accuracy),
        "loss": float(m.loss),
        "latency_ms": float(m.latency_ms),
        "latency_p90_ms": float(m.latency_p90_ms),
        "size_bytes": float(m.size_bytes),
    }
    # Deployed latency mode: the per-op table's prediction, and the end-to-end measurement
    # of the plans timed before the final choice.
    if m.predicted_latency_ms is not None:
        out["predicted_latency_ms"] = float(m.predicted_latency_ms)
    if m.deployed_latency_ms is not None:
        out["deployed_latency_ms"] = float(m.deployed_latency_ms)
    if baseline is not None:
        if m.latency_ms > 0:
            out["speedup"] = baseline.latency_ms / m.latency_ms
        if m.size_bytes > 0:
            out["size_reduction"] = baseline.size_bytes / m.size_bytes
    return {k: v for k, v in out.items() if finite(v)}


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
    if "qat_budget" in record.params:  # a QAT trial: its fine-tuning budget
        params["approach"] = "qat"
        params["qat_budget"] = record.params["qat_budget"]
    tuned = {c.prune.fine_tune for c in plan.values() if c is not None and c.prune is not None}
    tuned.discard(None)
    if tuned:  # a pruned plan fine-tuned with train_fn: its budget and schedule
        params["prune_fine_tune"] = ",".join(sorted(tuned))  # type: ignore[arg-type]
    for op_type, labels in by_type.items():
        # most_common keeps first-seen order on ties: the earliest op's choice wins.
        params[f"op_type.{op_type}"] = Counter(labels).most_common(1)[0][0]
        params[f"fp32_ops.{op_type}"] = labels.count(_FP32)
    return params
