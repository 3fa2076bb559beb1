"""Quantization plans: which config each op of a model gets.

A :class:`Plan` is plain, immutable data: an ordered mapping from each quantizable op's
fully qualified name (FQN) to its :class:`~autoquant.config.OpConfig`, or ``None`` to
keep the op in float. It has a stable content hash, and round-trips through dicts and
YAML.

:func:`resolve_plan` turns user *rules* into a Plan, once. A rule key is one of

* an exact FQN, e.g. ``"fc1"`` or ``"layer1.0.conv1"``;
* a glob over FQNs, any key containing ``*``, ``?`` or ``[``. It must match the *whole*
  name (:func:`fnmatch.fnmatchcase`): ``"fc1"`` never matches ``fc10``, ``"fc?"``
  matches ``fc1`` and ``fc2`` but not ``fc10``, ``"layer.*"`` matches ``layer.0.conv``;
* an op type name: ``Linear``, ``Conv1d``, ``Conv2d``, ``Embedding``, ``LSTM``, ``GRU``;
* ``default``, for every op no other rule matches.

Values are an ``OpConfig``, a dict of its fields, or ``None`` (keep float).

Precedence, per op: **exact > glob > type > default**. When several globs match an op,
the one that comes *last* in the rules (dict order) wins, so a general glob followed by a
more specific one reads top to bottom like an override. An op that no rule matches stays
float. ``default`` and the op type names are reserved: they are always read as the
default / type rule, even if a module happens to have that name (address such a module
with a glob, e.g. ``"[d]efault"``).

Mistakes are reported, not ignored: a key naming a module that is not quantizable (a
BatchNorm, a container, a subclass of Linear) or a non-quantizable type raises
:class:`~autoquant.errors.PlanError`; a key that matches no op at all warns with
:class:`PlanWarning` and the nearest op names (typos like ``fc_1``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

import yaml
from torch import nn

from autoquant.config import OpConfig
from autoquant.discovery import QUANTIZABLE_TYPES, OpInfo, discover
from autoquant.errors import ConfigError, PlanError

__all__ = ["PLAN_VERSION", "OP_TYPES", "Plan", "PlanWarning", "resolve_plan"]

PLAN_VERSION = 1
OP_TYPES: tuple[str, ...] = tuple(QUANTIZABLE_TYPES.values())
_GLOB_CHARS = "*?["
_DEFAULT = "default"


class PlanWarning(UserWarning):
    """A plan rule matched no op of the model (usually a typo in an op name)."""


def _canonical(value: Any) -> Any:
    """JSON-ready copy where equal configs serialize identically.

    ``OpConfig`` equality treats ``percentile=100`` and ``100.0`` as equal, so integral
    floats become ints here; otherwise equal plans could get different hashes.
    """
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _as_config(value: Any, where: str) -> OpConfig | None:
    """An OpConfig (or None) from an OpConfig, a dict of its fields, or None."""
    if value is None or isinstance(value, OpConfig):
        return value
    if not isinstance(value, Mapping):
        raise PlanError(
            f"{where} must be an OpConfig, a dict of its fields or None (keep float), "
            f"but got {type(value).__name__}: {value!r}."
        )
    try:
        return OpConfig.from_dict(value)
    except ConfigError as exc:
        raise PlanError(f"{where}: {exc}") from exc


def _nearest(name: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


class Plan(Mapping[str, "OpConfig | None"]):
    """Immutable mapping ``fqn -> OpConfig | None`` (None = keep float), in model order.

    Args:
        configs: config of every op, in model order; values may also be dicts of
            ``OpConfig`` fields.
        op_types: op type of every op (same FQNs as ``configs``), e.g. ``"Linear"``.

    Build one with :func:`resolve_plan`, :meth:`Plan.float`, :meth:`Plan.from_dict` or
    :meth:`Plan.from_yaml`; derive new ones with :meth:`replace` / :meth:`with_configs`.
    """

    __slots__ = ("_configs", "_op_types", "_hash")

    def __init__(
        self,
        configs: Mapping[str, OpConfig | Mapping[str, Any] | None],
        op_types: Mapping[str, str],
    ) -> None:
        if not isinstance(configs, Mapping):
            raise PlanError(
                f"configs must be a mapping fqn -> OpConfig | None, but got {type(configs).__name__}."
            )
        if not isinstance(op_types, Mapping):
            raise PlanError(
                f"op_types must be a mapping fqn -> op type, but got {type(op_types).__name__}."
            )
        missing = [f for f in configs if f not in op_types]
        extra = [f for f in op_types if f not in configs]
        if missing or extra:
            raise PlanError(
                "configs and op_types must name the same ops, but "
                f"op_types lacks {missing} and configs lacks {extra}."
            )
        checked: dict[str, OpConfig | None] = {}
        types: dict[str, str] = {}
        for fqn, cfg in configs.items():
            if not isinstance(fqn, str):
                raise PlanError(f"op names must be strings, but got {fqn!r}.")
            op_type = op_types[fqn]
            if op_type not in OP_TYPES:
                raise PlanError(
                    f"op {fqn!r} type must be one of {list(OP_TYPES)}, but got {op_type!r}."
                )
            checked[fqn] = _as_config(cfg, f"config of op {fqn!r}")
            types[fqn] = op_type
        canonical = json.dumps(
            _canonical({f: None if c is None else c.to_dict() for f, c in checked.items()}),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
        object.__setattr__(self, "_configs", checked)
        object.__setattr__(self, "_op_types", types)
        object.__setattr__(self, "_hash", hashlib.sha256(canonical.encode("ascii")).hexdigest())

    # -- immutability --------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Plan is immutable; use plan.replace(...) or plan.with_configs(...).")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Plan is immutable.")

    def __reduce__(self) -> tuple[Any, ...]:
        # Slots + a blocking __setattr__ defeat default pickling; rebuild via __init__.
        return (Plan, (dict(self._configs), dict(self._op_types)))

    # -- Mapping -------------------------------------------------------------------------
    def __getitem__(self, fqn: str) -> OpConfig | None:
        return self._configs[fqn]

    def __iter__(self) -> Iterator[str]:
        return iter(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self._configs == other._configs and self._op_types == other._op_types

    def __hash__(self) -> int:
        return int(self._hash[:16], 16)

    # -- views ---------------------------------------------------------------------------
    @property
    def op_types(self) -> Mapping[str, str]:
        """``fqn -> op type`` (read-only view), in model order."""
        return MappingProxyType(self._op_types)

    @property
    def quantized(self) -> list[str]:
        """FQNs of the ops that get a config (not float), in model order."""
        return [f for f, c in self._configs.items() if c is not None]

    @property
    def hash(self) -> str:
        """Hex sha256 of the canonical JSON of ``fqn -> config dict | None``.

        Stable across processes and Python versions (it never uses ``hash()``), and
        independent of how the plan was written (rule order, dict vs OpConfig values).
        """
        return self._hash

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def float(cls, ops: Sequence[OpInfo] | nn.Module) -> Plan:
        """The plan that keeps every op of ``ops`` (a list of OpInfo or a model) in float."""
        op_list = _as_ops(ops)
        return cls({op.fqn: None for op in op_list}, {op.fqn: op.op_type for op in op_list})

    def replace(self, **configs: OpConfig | Mapping[str, Any] | None) -> Plan:
        """A new plan with the given ops' configs replaced, e.g. ``plan.replace(fc1=None)``.

        FQNs with dots need ``plan.replace(**{"layer.0.conv": None})`` or
        :meth:`with_configs`.
        """
        return self.with_configs(configs)

    def with_configs(self, configs: Mapping[str, OpConfig | Mapping[str, Any] | None]) -> Plan:
        """A new plan with ``configs`` (fqn -> OpConfig | dict | None) replacing those ops'."""
        if not isinstance(configs, Mapping):
            raise PlanError(
                f"configs must be a mapping fqn -> OpConfig | None, but got {type(configs).__name__}."
            )
        unknown = [f for f in configs if f not in self._configs]
        if unknown:
            hints = {f: _nearest(str(f), list(self._configs)) for f in unknown}
            raise PlanError(
                f"cannot replace config of {unknown}: not ops of this plan "
                f"(nearest op names: {hints})."
            )
        merged = dict(self._configs)
        for fqn, cfg in configs.items():
            merged[fqn] = _as_config(cfg, f"config of op {fqn!r}")
        return Plan(merged, self._op_types)

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"version": 1, "ops": {fqn: {"type": op_type, "config": dict | None}}}``."""
        return {
            "version": PLAN_VERSION,
            "ops": {
                fqn: {"type": self._op_types[fqn], "config": None if c is None else c.to_dict()}
                for fqn, c in self._configs.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; raises PlanError naming the offending key."""
        if not isinstance(data, Mapping):
            raise PlanError(
                "a plan must be a mapping with keys 'version' and 'ops', "
                f"but got {type(data).__name__}."
            )
        unknown = sorted(str(k) for k in data if k not in ("version", "ops"))
        if unknown:
            raise PlanError(
                f"plan has unknown key(s) {unknown}; allowed keys are ['ops', 'version']."
            )
        for key in ("version", "ops"):
            if key not in data:
                raise PlanError(f"plan is missing key {key!r}.")
        if data["version"] != PLAN_VERSION or isinstance(data["version"], bool):
            raise PlanError(
                f"plan key 'version' must be {PLAN_VERSION}, but got {data['version']!r}."
            )
        ops = data["ops"]
        if not isinstance(ops, Mapping):
            raise PlanError(
                "plan key 'ops' must be a mapping fqn -> {type, config}, "
                f"but got {type(ops).__name__}."
            )
        configs: dict[str, OpConfig | None] = {}
        types: dict[str, str] = {}
        for fqn, entry in ops.items():
            where = f"plan key ops[{fqn!r}]"
            if not isinstance(fqn, str):
                raise PlanError(f"{where}: op names must be strings, but got {type(fqn).__name__}.")
            if not isinstance(entry, Mapping):
                raise PlanError(
                    f"{where} must be a mapping with keys 'type' and 'config', "
                    f"but got {type(entry).__name__}: {entry!r}."
                )
            keys = set(entry)
            if keys != {"type", "config"}:
                raise PlanError(
                    f"{where} must have exactly the keys ['config', 'type'], "
                    f"but got {sorted(str(k) for k in keys)}."
                )
            if entry["type"] not in OP_TYPES:
                raise PlanError(
                    f"{where}.type must be one of {list(OP_TYPES)}, but got {entry['type']!r}."
                )
            types[fqn] = entry["type"]
            configs[fqn] = _as_config(entry["config"], f"{where}.config")
        return cls(configs, types)

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict` (op order kept)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_yaml(cls, text: str) -> Plan:
        """Parse :meth:`to_yaml` output (``yaml.safe_load``; no arbitrary objects)."""
        if not isinstance(text, str):
            raise PlanError(f"plan YAML must be a str, but got {type(text).__name__}.")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PlanError(f"plan YAML could not be parsed: {exc}") from exc
        return cls.from_dict(data)

    # -- display -------------------------------------------------------------------------
    def __str__(self) -> str:
        rows = [("fqn", "type", "config")] + [
            (fqn or "(root)", self._op_types[fqn], "fp32" if c is None else c.short())
            for fqn, c in self._configs.items()
        ]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{a.ljust(w0)} | {b.ljust(w1)} | {c}" for a, b, c in rows]
        lines.insert(1, f"{'-' * w0}-+-{'-' * w1}-+-{'-' * 6}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Plan({len(self)} ops, {len(self.quantized)} quantized, hash={self._hash[:12]})"


def _as_ops(ops: Sequence[OpInfo] | nn.Module) -> list[OpInfo]:
    if isinstance(ops, nn.Module):
        return discover(ops)
    if isinstance(ops, (str, bytes)) or not isinstance(ops, Sequence):
        raise TypeError(
            f"ops must be a list of OpInfo or a torch.nn.Module, but got {type(ops).__name__}."
        )
    seen: set[str] = set()
    for op in ops:
        if not isinstance(op, OpInfo):
            raise TypeError(
                f"ops must be a list of OpInfo, but got an item of type {type(op).__name__}."
            )
        if op.fqn in seen:
            raise PlanError(f"ops must have unique names, but {op.fqn!r} appears twice.")
        seen.add(op.fqn)
    return list(ops)


def _not_quantizable_error(
    key: str, op_list: list[OpInfo], model: nn.Module | None
) -> PlanError | None:
    """A PlanError when ``key`` names a module or type that exists but is not quantizable."""
    fqns = [op.fqn for op in op_list]
    inside = [f for f in fqns if key == "" or f.startswith(key + ".")]
    if inside:
        glob = "*" if key == "" else f"{key}.*"
        shown = inside[:5] + (["..."] if len(inside) > 5 else [])
        return PlanError(
            f"rule {key!r}: {key!r} is a container module, not a quantizable op. To "
            f"configure the ops inside it use the glob {glob!r} (ops inside: {shown})."
        )
    if model is not None:
        modules = dict(model.named_modules())
        if key in modules:
            names = list(modules)
            pos = names.index(key)
            quantizable = set(fqns)
            before = [n for n in names[:pos] if n in quantizable][-1:]
            after = [n for n in names[pos + 1 :] if n in quantizable][:1]
            nearby = list(dict.fromkeys(before + after + _nearest(key, fqns)))
            return PlanError(
                f"rule {key!r}: module {key!r} ({type(modules[key]).__name__}) is not "
                f"quantizable; quantizable ops are exact instances of {list(OP_TYPES)}. "
                f"Nearby quantizable ops: {nearby}."
            )
    cls = getattr(nn, key, None)
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return PlanError(
            f"rule {key!r}: op type {key} is not quantizable; quantizable op types are "
            f"{list(OP_TYPES)}."
        )
    return None


def resolve_plan(
    rules: Mapping[str, OpConfig | Mapping[str, Any] | None] | Plan | None,
    ops: Sequence[OpInfo] | nn.Module,
    *,
    warn: bool = True,
) -> Plan:
    """Resolve ``rules`` against ``ops`` into a :class:`Plan` (see the module docstring).

    Args:
        rules: mapping rule key -> ``OpConfig`` | dict of its fields | ``None`` (float);
            keys are exact FQNs, globs, op type names or ``default``. A :class:`Plan` is
            returned as is after checking it covers exactly these ops.
        ops: the model's ops (from :func:`~autoquant.discovery.discover`) or the model
            itself. With the model, keys naming non-quantizable modules are detected.
        warn: emit a :class:`PlanWarning` for every key that matches no op.

    Raises:
        PlanError: ``rules`` is None or not a mapping, a value is not a valid config
            (the message names the rule key), a key names a non-quantizable module or
            type, or a Plan does not cover these ops.
    """
    model = ops if isinstance(ops, nn.Module) else None
    op_list = _as_ops(ops)
    if rules is None:
        raise PlanError(
            "rules must be a mapping of rule keys (fqn, glob, op type or 'default') to "
            "OpConfig | dict | None, or a Plan, but got None. Use {} to keep every op float."
        )
    if isinstance(rules, Plan):
        return _check_covers(rules, op_list)
    if not isinstance(rules, Mapping):
        raise PlanError(
            "rules must be a mapping of rule keys (fqn, glob, op type or 'default') to "
            f"OpConfig | dict | None, or a Plan, but got {type(rules).__name__}."
        )

    fqns = [op.fqn for op in op_list]
    fqn_set = set(fqns)
    present_types = {op.op_type for op in op_list}
    exact: dict[str, OpConfig | None] = {}
    globs: list[tuple[str, OpConfig | None]] = []
    by_type: dict[str, OpConfig | None] = {}
    default: tuple[OpConfig | None] | None = None  # 1-tuple so "None config" != "no rule"
    unmatched: list[str] = []

    for key, value in rules.items():
        if not isinstance(key, str):
            raise PlanError(
                f"rule keys must be strings (fqn, glob, op type or 'default'), "
                f"but got {type(key).__name__}: {key!r}."
            )
        cfg = _as_config(value, f"rule {key!r}")
        if key == _DEFAULT:
            default = (cfg,)
        elif key in OP_TYPES:
            by_type[key] = cfg
            if key not in present_types:
                unmatched.append(key)
        elif key in fqn_set:
            exact[key] = cfg
        elif any(c in key for c in _GLOB_CHARS):
            globs.append((key, cfg))
            if not any(fnmatchcase(f, key) for f in fqns):
                unmatched.append(key)
        else:
            error = _not_quantizable_error(key, op_list, model)
            if error is not None:
                raise error
            unmatched.append(key)

    # Warn only after every key validated, so a PlanError is not preceded by noise.
    if warn:
        for key in unmatched:
            _warn_unmatched(key, fqns, present_types)

    configs: dict[str, OpConfig | None] = {}
    for op in op_list:
        if op.fqn in exact:
            configs[op.fqn] = exact[op.fqn]
            continue
        hit: tuple[OpConfig | None] | None = None
        for pattern, cfg in globs:
            if fnmatchcase(op.fqn, pattern):
                hit = (cfg,)  # keep looping: the last matching glob wins
        if hit is None and op.op_type in by_type:
            hit = (by_type[op.op_type],)
        if hit is None:
            hit = default
        configs[op.fqn] = None if hit is None else hit[0]
    return Plan(configs, {op.fqn: op.op_type for op in op_list})


def _warn_unmatched(key: str, fqns: list[str], present_types: set[str]) -> None:
    if key in OP_TYPES:
        msg = (
            f"rule {key!r} matches no op: the model has no {key} op "
            f"(its op types are {sorted(present_types)})."
        )
    else:
        near = _nearest(key, fqns + [t for t in OP_TYPES if t in present_types])
        hint = (
            f"nearest names: {near}"
            if near
            else f"op names are {fqns[:10]}" + (" ..." if len(fqns) > 10 else "")
        )
        msg = f"rule {key!r} matches no op of the model; {hint}."
    warnings.warn(msg, PlanWarning, stacklevel=3)


def _check_covers(plan: Plan, op_list: list[OpInfo]) -> Plan:
    expected = {op.fqn: op.op_type for op in op_list}
    missing = [f for f in expected if f not in plan]
    extra = [f for f in plan if f not in expected]
    wrong = [f for f in expected if f in plan and plan.op_types[f] != expected[f]]
    if missing or extra or wrong:
        raise PlanError(
            "the given Plan must cover exactly the model's quantizable ops, but it "
            f"lacks {missing}, has extra {extra} and differs in op type for {wrong}."
        )
    return plan
