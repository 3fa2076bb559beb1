"""Per-op quantization configs: :class:`QuantSpec` and :class:`OpConfig`.

Both are frozen, keyword-only, hashable dataclasses validated on construction. They
round-trip through plain dicts (``to_dict`` / ``from_dict``), which is also their YAML
form. Whether a *backend* can run a config is a separate question answered by the
backend's capability table (:mod:`autoquant.backends`); this module only rejects
configs that are meaningless everywhere (e.g. an activation spec on a weight-only op).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoquant.approaches import approach_names, get_approach, register_approach
from autoquant.errors import ConfigError
from autoquant.pruning.spec import PruneSpec

__all__ = [
    "DTYPES",
    "FLOAT_DTYPES",
    "SCHEMES",
    "GRANULARITIES",
    "OBSERVERS",
    "APPROACHES",  # noqa: F822 - module __getattr__ (the approach registry)
    "QuantSpec",
    "OpConfig",
    "static_int8",
    "dynamic_int8",
    "weight_only",
    "bf16",
    "SCALED_FLOAT_DTYPES",
    "RUN_IN_FLOAT_DTYPES",
    "prune_only",
    "FLOAT",
]

#: The approach of an op that is pruned but stays float: ``OpConfig(approach="float",
#: prune=PruneSpec(...))`` (or :func:`prune_only`). It carries no quantization specs.
FLOAT = "float"

# Name -> (bits, signed). The integer range follows from these (see qparams.quant_range).
DTYPES: dict[str, tuple[int, bool]] = {
    "int8": (8, True),
    "uint8": (8, False),
    "int4": (4, True),
    "uint4": (4, False),
}
# Float types next to the integer DTYPES (same (bits, signed) form), kept apart because
# quant_range, the integer observers and the simulated rows read DTYPES only.
# - fp8_e4m3: a *scaled* float format (torch.float8_e4m3fn, one scale per tensor/row,
#   values clamped to +-448, no zero point), run by the cuda backend's fp8 rows.
# - bf16: the type an op runs in instead of an integer type (approach="bf16"), no scale.
SCALED_FLOAT_DTYPES: dict[str, tuple[int, bool]] = {"fp8_e4m3": (8, True)}
RUN_IN_FLOAT_DTYPES: dict[str, tuple[int, bool]] = {"bf16": (16, True)}
FLOAT_DTYPES: dict[str, tuple[int, bool]] = {**SCALED_FLOAT_DTYPES, **RUN_IN_FLOAT_DTYPES}
SCHEMES = ("sym", "asym")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "kl")


def __getattr__(name: str) -> Any:
    # APPROACHES is read from the approach registry (autoquant.approaches) when asked for,
    # so an approach registered later is accepted everywhere the name is checked.
    if name == "APPROACHES":
        return approach_names()
    raise AttributeError(f"module 'autoquant.config' has no attribute {name!r}")


def _choice(owner: str, field: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{owner}.{field} must be one of {list(allowed)}, but got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How one tensor (a weight or an activation) is mapped to integers.

    Args:
        dtype: integer type, one of ``int8``, ``uint8``, ``int4``, ``uint4``, or the
            scaled float format ``fp8_e4m3`` (``scheme='sym'`` only; run by the ``cuda``
            backend on compute capability >= 8.9).
        scheme: ``sym`` (scale only, fixed zero point) or ``asym`` (scale and zero point).
        granularity: ``per_tensor``, ``per_channel`` (one scale per slice along ``axis``)
            or ``per_group`` (one scale per ``group_size`` consecutive elements of the
            reduction dimension; weights only).
        axis: channel axis for ``per_channel`` (0 = output channels of a weight).
        group_size: group length for ``per_group``; required there, forbidden elsewhere.
        observer: how the float range is chosen from calibration statistics:
            ``minmax``, ``moving_average``, ``percentile``, ``mse`` or ``kl``.
        reduce_range: use one bit less of the integer range (7-bit int8). Needed on CPUs
            without VNNI, whose int8 dot products accumulate pairs in 16 bits and can
            saturate.
        percentile: upper percentile kept by the ``percentile`` observer (0 < p <= 100).
        averaging_constant: weight of each new batch in the ``moving_average`` observer.
    """

    dtype: str = "int8"
    scheme: str = "sym"
    granularity: str = "per_tensor"
    axis: int = 0
    group_size: int | None = None
    observer: str = "minmax"
    reduce_range: bool = False
    percentile: float = 99.99
    averaging_constant: float = 0.01

    def __post_init__(self) -> None:
        _choice("QuantSpec", "dtype", self.dtype, [*DTYPES, *FLOAT_DTYPES])
        _choice("QuantSpec", "scheme", self.scheme, SCHEMES)
        _choice("QuantSpec", "granularity", self.granularity, GRANULARITIES)
        _choice("QuantSpec", "observer", self.observer, OBSERVERS)
        if not isinstance(self.reduce_range, bool):
            raise ConfigError(
                f"QuantSpec.reduce_range must be a bool, but got {self.reduce_range!r}."
            )
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ConfigError(f"QuantSpec.axis must be an int, but got {self.axis!r}.")
        if self.granularity == "per_group":
            if (
                not isinstance(self.group_size, int)
                or isinstance(self.group_size, bool)
                or self.group_size < 2
            ):
                raise ConfigError(
                    "QuantSpec.group_size must be an int >= 2 when granularity='per_group', "
                    f"but got {self.group_size!r}. Typical values: 32, 64, 128."
                )
        elif self.group_size is not None:
            raise ConfigError(
                f"QuantSpec.group_size is only meaningful with granularity='per_group', but "
                f"got group_size={self.group_size!r} with granularity={self.granularity!r}. "
                "Drop group_size or set granularity='per_group'."
            )
        if self.dtype in SCALED_FLOAT_DTYPES and (self.scheme != "sym" or self.reduce_range):
            raise ConfigError(
                f"QuantSpec.dtype={self.dtype!r} is a scaled float format: it needs "
                f"scheme='sym' and reduce_range=False, but got scheme={self.scheme!r}, "
                f"reduce_range={self.reduce_range!r}."
            )
        for field, lo, hi in (("percentile", 0.0, 100.0), ("averaging_constant", 0.0, 1.0)):
            value = getattr(self, field)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not lo < value <= hi
            ):
                raise ConfigError(
                    f"QuantSpec.{field} must be a number in ({lo:g}, {hi:g}], but got {value!r}."
                )
            object.__setattr__(self, field, float(value))

    @property
    def bits(self) -> int:
        return {**DTYPES, **FLOAT_DTYPES}[self.dtype][0]

    @property
    def signed(self) -> bool:
        return {**DTYPES, **FLOAT_DTYPES}[self.dtype][1]

    def replace(self, **changes: Any) -> QuantSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (stable key order), the YAML form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | QuantSpec) -> QuantSpec:
        if isinstance(data, QuantSpec):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"A QuantSpec must be given as a mapping of its fields, but got {type(data).__name__}."
            )
        _reject_unknown("QuantSpec", data, {f.name for f in dataclasses.fields(cls)})
        return cls(**dict(data))

    def short(self) -> str:
        """Compact human label, e.g. ``int8/sym/per_channel/minmax``."""
        gran = self.granularity
        if gran == "per_group":
            gran = f"g{self.group_size}"
        label = f"{self.dtype}/{self.scheme}/{gran}/{self.observer}"
        return label + ("/rr" if self.reduce_range else "")


@dataclass(frozen=True, kw_only=True)
class OpConfig:
    """How one op is quantized.

    Args:
        approach: ``static`` (activation ranges from calibration), ``dynamic`` (activation
            ranges measured at run time), ``weight_only`` (integer weights, float
            activations), ``qat`` (quantization-aware training; fake-quant until
            converted; no backend builds it yet) or any approach registered with
            :func:`autoquant.approaches.register_approach`.
        weight: spec of the op's weight.
        activation: spec of the op's input activation; must be None for ``weight_only``
            and given for every other approach.
        prune: optional :class:`~autoquant.pruning.PruneSpec`: the op is pruned first,
            then calibrated and quantized as pruned. ``approach="float"`` (no weight or
            activation spec) prunes an op that stays float; :func:`prune_only` spells it.
    """

    approach: str
    weight: QuantSpec | None = None
    activation: QuantSpec | None = None
    prune: PruneSpec | None = None

    def __post_init__(self) -> None:
        _choice("OpConfig", "approach", self.approach, approach_names())
        if isinstance(self.prune, Mapping):
            object.__setattr__(self, "prune", PruneSpec.from_dict(self.prune))
        if self.prune is not None and not isinstance(self.prune, PruneSpec):
            raise ConfigError(
                f"OpConfig.prune must be a PruneSpec (or a dict of its fields) or None, "
                f"but got {self.prune!r}."
            )
        if self.approach == FLOAT:
            if self.weight is not None or self.activation is not None:
                raise ConfigError(
                    "OpConfig.weight and OpConfig.activation must be None when "
                    f"approach='float' (the op is not quantized), but got weight="
                    f"{self.weight!r}, activation={self.activation!r}. Use another approach "
                    "to quantize the op."
                )
            if self.prune is None:
                raise ConfigError(
                    "OpConfig.prune must be a PruneSpec when approach='float', but got None. "
                    "An op that is neither pruned nor quantized is None in a plan (keep float)."
                )
            return
        takes_activation = get_approach(self.approach).activations
        # Accept dicts for the nested specs so YAML/Hydra input works directly.
        if isinstance(self.weight, Mapping):
            object.__setattr__(self, "weight", QuantSpec.from_dict(self.weight))
        if isinstance(self.activation, Mapping):
            object.__setattr__(self, "activation", QuantSpec.from_dict(self.activation))
        if not isinstance(self.weight, QuantSpec):
            raise ConfigError(
                f"OpConfig.weight must be a QuantSpec (or a dict of its fields), "
                f"but got {self.weight!r}."
            )
        if not takes_activation:
            if self.activation is not None:
                raise ConfigError(
                    f"OpConfig.activation must be None when approach={self.approach!r} "
                    f"(activations stay float), but got {self.activation!r}."
                )
        else:
            if not isinstance(self.activation, QuantSpec):
                raise ConfigError(
                    f"OpConfig.activation must be a QuantSpec when approach={self.approach!r}, "
                    f"but got {self.activation!r}. Use approach='weight_only' to keep "
                    "activations in float."
                )
            if self.activation.granularity == "per_group":
                raise ConfigError(
                    "OpConfig.activation.granularity must be 'per_tensor' or 'per_channel', "
                    "but got 'per_group' (groups are a weight-only layout)."
                )
        if takes_activation and self.weight.granularity == "per_group":
            raise ConfigError(
                "OpConfig.weight.granularity='per_group' is only supported with "
                f"approach='weight_only', but got approach={self.approach!r}."
            )
        if (self.approach == "bf16") != (self.weight.dtype in RUN_IN_FLOAT_DTYPES):
            raise ConfigError(
                f"OpConfig.weight.dtype={self.weight.dtype!r} does not fit "
                f"approach={self.approach!r}: approach='bf16' runs the op in bfloat16 and "
                "needs weight.dtype='bf16' (use autoquant.config.bf16()); every other approach "
                f"quantizes to an integer type {list(DTYPES)} or a scaled float type "
                f"{list(SCALED_FLOAT_DTYPES)}."
            )
        if self.approach == "dynamic":
            act = self.activation
            assert act is not None
            # per_channel on a dynamic activation means per token: one scale per row of
            # the input flattened to [tokens, features] (the cuda backend's kernels).
            if act.observer != "minmax" or act.granularity not in ("per_tensor", "per_channel"):
                raise ConfigError(
                    "approach='dynamic' measures each input's min/max at run time, so "
                    "OpConfig.activation must use observer='minmax' and granularity "
                    "'per_tensor' (or 'per_channel': one scale per token), but got "
                    f"observer={act.observer!r}, "
                    f"granularity={act.granularity!r}. Use approach='static' to calibrate "
                    "activation ranges with another observer."
                )

    def replace(self, **changes: Any) -> OpConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "approach": self.approach,
            "weight": None if self.weight is None else self.weight.to_dict(),
            "activation": None if self.activation is None else self.activation.to_dict(),
        }
        if self.prune is not None:
            # Only when set, so plans without pruning keep their hashes.
            out["prune"] = self.prune.to_dict()
        return out

    @property
    def quantized(self) -> bool:
        """Whether the op is quantized (False for a pruned-but-float op)."""
        return self.approach != FLOAT

    def without_prune(self) -> OpConfig | None:
        """The quantization part alone (None for a pruned-but-float op)."""
        if self.approach == FLOAT:
            return None
        return self if self.prune is None else dataclasses.replace(self, prune=None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | OpConfig) -> OpConfig:
        if isinstance(data, OpConfig):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"An OpConfig must be given as a mapping of its fields, but got {type(data).__name__}."
            )
        _reject_unknown("OpConfig", data, {"approach", "weight", "activation", "prune"})
        if "approach" not in data or ("weight" not in data and data["approach"] != FLOAT):
            raise ConfigError(
                f"OpConfig needs at least 'approach' and 'weight', but got keys {sorted(data)}."
            )
        act = data.get("activation")
        weight = data.get("weight")
        prune = data.get("prune")
        return cls(
            approach=data["approach"],
            weight=None if weight is None else QuantSpec.from_dict(weight),
            activation=None if act is None else QuantSpec.from_dict(act),
            prune=None if prune is None else PruneSpec.from_dict(prune),
        )

    def short(self) -> str:
        """Compact human label, e.g. ``static w:int8/sym/per_channel/minmax a:uint8/...``."""
        if self.weight is None:
            label = self.approach
        else:
            label = f"{self.approach} w:{self.weight.short()}"
        if self.activation is not None:
            label += f" a:{self.activation.short()}"
        if self.prune is not None:
            label += f" prune:{self.prune.short()}"
        return label


def _reject_unknown(owner: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{owner} got unknown field(s) {unknown}; allowed fields are {sorted(known)}."
        )


# Presets. Functions rather than module-level instances so nobody is tempted to mutate a
# shared object (configs are frozen anyway, but this keeps call sites explicit).
def static_int8(
    *, observer: str = "minmax", reduce_range: bool = False, act_scheme: str = "asym"
) -> OpConfig:
    """x86 default static int8: uint8 activations, int8 symmetric per-channel weights."""
    return OpConfig(
        approach="static",
        weight=QuantSpec(dtype="int8", scheme="sym", granularity="per_channel"),
        activation=QuantSpec(
            dtype="uint8", scheme=act_scheme, observer=observer, reduce_range=reduce_range
        ),
    )


def dynamic_int8(*, reduce_range: bool = False, per_channel: bool = True) -> OpConfig:
    """Dynamic int8: weights int8 symmetric, activations uint8 measured per call."""
    return OpConfig(
        approach="dynamic",
        weight=QuantSpec(
            dtype="int8",
            scheme="sym",
            granularity="per_channel" if per_channel else "per_tensor",
        ),
        activation=QuantSpec(dtype="uint8", scheme="asym", reduce_range=reduce_range),
    )


def weight_only(
    dtype: str = "int8", *, group_size: int | None = None, scheme: str | None = None
) -> OpConfig:
    """Weight-only quantization: per-channel (group_size None) or per-group weights."""
    if scheme is None:
        # int4 groups are stored as uint4 + zero point by torch's CPU kernel; asym is natural.
        scheme = "asym" if group_size is not None else "sym"
    return OpConfig(
        approach="weight_only",
        weight=QuantSpec(
            dtype=dtype,
            scheme=scheme,
            granularity="per_group" if group_size is not None else "per_channel",
            group_size=group_size,
        ),
    )


def bf16() -> OpConfig:
    """Run the op in bfloat16 (weights and activations), a per-op alternative to fp32 on
    CPUs with native bf16 (AVX512-BF16/AMX); no integer quantization, no calibration."""
    return OpConfig(approach="bf16", weight=QuantSpec(dtype="bf16"))


# The built-in approaches (names in the order error messages list them). Backends say
# which of them they can build (autoquant.backends.capability); qat has no preset and no
# kernel yet, so OpConfig accepts it and every backend refuses it by name.
register_approach("dynamic", preset=dynamic_int8)
register_approach("static", needs_calibration=True, preset=static_int8)
register_approach("weight_only", activations=False, preset=weight_only)
register_approach("qat")
register_approach("bf16", activations=False, preset=bf16)
# Pruned, not quantized: split off before any backend sees the plan (autoquant.pruning).
register_approach(FLOAT, activations=False)


def prune_only(spec: PruneSpec | None = None, **fields: Any) -> OpConfig:
    """An op pruned by ``spec`` (or ``PruneSpec(**fields)``) that stays float."""
    if spec is None:
        spec = PruneSpec(**fields)
    elif fields:
        raise ConfigError(f"prune_only takes a PruneSpec or its fields, not both: {fields}.")
    return OpConfig(approach=FLOAT, prune=spec)
