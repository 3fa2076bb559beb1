"""Save and load quantized models without pickle.

A saved model is a directory:

* ``plan.yaml``: the resolved plan (``Plan.to_yaml``), readable and diffable;
* ``tensors.safetensors``: every tensor of the model's state, exactly the tensors
  :func:`autoquant.measure.iter_state_tensors` yields (integers at their storage width);
* ``meta.json``: format version, backend, build mode, the tree that puts the tensors
  back into a ``state_dict`` (quantized tensors, packed tuples, dtypes), the plan hash,
  the sha256 and byte length of the tensors file, and optionally a model factory.

Loading rebuilds the quantized skeleton from the float architecture and the plan (the
backend's own ``build``), then loads the saved state into it; nothing is unpickled and
no code is run but the float model's constructor. Truncated or altered files fail the
checksum with :class:`~autoquant.errors.SerializationError`.

The float architecture comes from ``model`` (a module or a zero-argument callable) or
from the ``model_factory`` import path (``"package.module:function"``) given at save.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoquant.errors import SerializationError

__all__ = ["save", "load", "split_factory", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FORMAT = "autoquant-model"
_PLAN, _TENSORS, _META = "plan.yaml", "tensors.safetensors", "meta.json"

_QSCHEMES = {
    str(q): q
    for q in (
        torch.per_tensor_affine,
        torch.per_tensor_symmetric,
        torch.per_channel_affine,
        torch.per_channel_symmetric,
    )
}
_QDTYPES = {str(d): d for d in (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2)}
_DTYPES = {
    str(d): d
    for d in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int32,
        torch.int64,
    )
} | _QDTYPES


def _flatten(value: Any, name: str, out: dict[str, torch.Tensor]) -> Any:
    """Describe ``value`` as JSON, moving its tensors into ``out`` (names as in measure)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if not t.is_quantized:
            out[name] = t.contiguous()
            return {"kind": "tensor", "name": name}
        out[f"{name}.int_repr"] = t.int_repr().contiguous()
        node: dict[str, Any] = {
            "kind": "qtensor",
            "name": name,
            "dtype": str(t.dtype),
            "qscheme": str(t.qscheme()),
        }
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            out[f"{name}.scale"] = torch.tensor(t.q_scale(), dtype=torch.float64)
            out[f"{name}.zero_point"] = torch.tensor(t.q_zero_point(), dtype=torch.int64)
        else:
            out[f"{name}.scale"] = t.q_per_channel_scales().contiguous()
            out[f"{name}.zero_point"] = t.q_per_channel_zero_points().contiguous()
            node["axis"] = t.q_per_channel_axis()
        return node
    if isinstance(value, (tuple, list)):
        return {
            "kind": type(value).__name__,
            "items": [_flatten(v, f"{name}.{i}", out) for i, v in enumerate(value)],
        }
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"kind": "scalar", "value": value}
    if isinstance(value, torch.dtype):
        return {"kind": "dtype", "value": str(value)}
    if isinstance(value, torch.ScriptObject):
        return _flatten_script(value, name, out)
    raise SerializationError(
        f"cannot save state entry {name!r} of type {type(value).__name__}: only tensors, "
        "quantized tensors, tuples/lists of them and scalars are stored (no pickle)."
    )


# torch's quantized RNNs keep their weights in TorchScript objects. Two kinds are known
# and rebuilt from their tensors with torch's own constructors; anything else is refused.
_LINEAR_PACKED = "LinearPackedParamsBase"
_CELL_PARAMS = "CellParamsBase"


def _flatten_script(obj: torch.ScriptObject, name: str, out: dict[str, torch.Tensor]) -> Any:
    kind = obj._type().qualified_name().rsplit(".", 1)[-1]
    if kind == _LINEAR_PACKED:
        weight, bias = torch.ops.quantized.linear_unpack(obj)
        return {"kind": kind, "items": _flatten((weight, bias), name, out)}
    if kind == _CELL_PARAMS:
        (cell_type, biases, doubles, longs, packed), _ = obj.__getstate__()
        if cell_type == "quantized_dynamic" and len(packed) == 2 and not doubles:
            return {
                "kind": kind,
                "biases": _flatten(tuple(biases), f"{name}.bias", out),
                "reduce_range": bool(longs[0]) if longs else False,
                "packed": _flatten(tuple(packed), f"{name}.packed", out),
            }
    raise SerializationError(
        f"cannot save state entry {name!r}: TorchScript object {kind!r} is not a known "
        "quantized parameter pack (no pickle fallback)."
    )


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    kind = node.get("kind") if isinstance(node, dict) else None
    if kind == "tensor":
        return tensors[node["name"]]
    if kind == "qtensor":
        name = node["name"]
        ints, scale, zp = (tensors[f"{name}.{p}"] for p in ("int_repr", "scale", "zero_point"))
        qscheme = _QSCHEMES[node["qscheme"]]
        if qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            return torch._make_per_tensor_quantized_tensor(ints, float(scale), int(zp))
        return torch._make_per_channel_quantized_tensor(ints, scale, zp, int(node["axis"]))
    if kind in ("tuple", "list"):
        items = [_unflatten(n, tensors) for n in node["items"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "scalar":
        return node["value"]
    if kind == "dtype":
        return _DTYPES[node["value"]]
    if kind == _LINEAR_PACKED:
        weight, bias = _unflatten(node["items"], tensors)
        return torch.ops.quantized.linear_prepack(weight, bias)
    if kind == _CELL_PARAMS:
        b_ih, b_hh = _unflatten(node["biases"], tensors)
        packed_ih, packed_hh = _unflatten(node["packed"], tensors)
        return torch.ops.quantized.make_quantized_cell_params_dynamic(
            packed_ih, packed_hh, b_ih, b_hh, bool(node["reduce_range"])
        )
    raise SerializationError(f"meta.json has an unknown state entry {node!r}.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(
    qmodel: nn.Module, directory: str | os.PathLike[str], *, model_factory: str | None = None
) -> Path:
    """Write ``qmodel`` (built by :func:`autoquant.quantize`) to ``directory``.

    ``model_factory`` (``"package.module:callable"`` returning the float model) lets
    :func:`load` rebuild the model without being handed the architecture.
    """
    from safetensors.torch import save_file

    from autoquant.quantizer import quant_info

    info = quant_info(qmodel)
    tensors: dict[str, torch.Tensor] = {}
    state = qmodel.state_dict()
    tree = {k: _flatten(v, k, tensors) for k, v in state.items()}
    # Module versions steer torch's own _load_from_state_dict (old vs new key layouts).
    versions = {
        prefix: {"version": m["version"]}
        for prefix, m in getattr(state, "_metadata", {}).items()
        if isinstance(m, dict) and isinstance(m.get("version"), int)
    }
    # safetensors refuses tensors sharing memory; every entry is written on its own.
    tensors = {k: v.clone() for k, v in tensors.items()}
    if model_factory is not None:
        _split_factory(model_factory)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors_path = out / _TENSORS
    save_file(tensors, str(tensors_path))
    (out / _PLAN).write_text(info.plan.to_yaml())
    meta = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "torch": torch.__version__,
        "backend": info.backend,
        "mode": info.mode,
        "stat_keys": list(info.stat_keys),
        "plan_hash": info.plan.hash,
        "kernels": info.kernels,
        "simulated": list(info.simulated),
        "model_factory": model_factory,
        "tensors_sha256": _sha256(tensors_path),
        "tensors_bytes": tensors_path.stat().st_size,
        "state": tree,
        "state_versions": versions,
    }
    (out / _META).write_text(json.dumps(meta, indent=1))
    return out


def _split_factory(path: str) -> tuple[str, str]:
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise SerializationError(
            f"model_factory must look like 'package.module:callable', but got {path!r}."
        )
    return module, attr


def split_factory(path: str) -> tuple[str, str]:
    """``(module, attribute)`` of a ``"package.module:callable"`` model factory path, as
    :func:`save` stores it; :class:`~autoquant.errors.SerializationError` when ``path``
    does not have that form. Nothing is imported: use it to check a path early."""
    return _split_factory(path)


def _float_model(
    model: nn.Module | Callable[[], nn.Module] | None, factory: str | None
) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if callable(model):
        built = model()
    elif factory:
        module, attr = _split_factory(factory)
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise SerializationError(
                f"cannot import the saved model_factory {factory!r}: {exc}. Pass model= to load()."
            ) from exc
        built = fn()
    else:
        raise SerializationError(
            "load() needs the float architecture: pass model= (a module or a zero-argument "
            "callable), or save with model_factory='package.module:callable'."
        )
    if not isinstance(built, nn.Module):
        raise SerializationError(
            f"the model factory returned {type(built).__name__}, not a torch.nn.Module."
        )
    return built


def _placeholder_stats(meta: dict[str, Any]) -> Any:
    """Statistics that only make ``build`` produce the right structure.

    Every qparam they lead to is overwritten by the saved state right after.
    """
    from autoquant.calibration import CalibrationStats
    from autoquant.stats import TensorStats

    keys = meta["stat_keys"]
    if not keys:
        return None
    filler = TensorStats.from_tensor(torch.linspace(-1.0, 1.0, 4096))
    return CalibrationStats(
        mode="graph" if meta["mode"] == "graph" else "module",
        stats={k: copy.deepcopy(filler) for k in keys},
        n_samples=1,
        n_batches=1,
        backend=meta["backend"],
    )


def load(
    directory: str | os.PathLike[str],
    model: nn.Module | Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save`; its outputs equal the saved model's."""
    from safetensors.torch import load_file

    from autoquant.backends.base import get_backend
    from autoquant.plan import Plan, resolve_plan

    src = Path(directory)
    try:
        meta = json.loads((src / _META).read_text())
        plan_text = (src / _PLAN).read_text()
    except FileNotFoundError as exc:
        raise SerializationError(
            f"{src} is not a saved autoquant model: {exc.filename} is missing."
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{src / _META} is corrupt: {exc}") from exc
    if meta.get("format") != _FORMAT or meta.get("version") != FORMAT_VERSION:
        raise SerializationError(
            f"{src} holds format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this autoquant reads {_FORMAT!r} version {FORMAT_VERSION}."
        )
    tensors_path = src / _TENSORS
    if not tensors_path.exists():
        raise SerializationError(f"{tensors_path} is missing.")
    size = tensors_path.stat().st_size
    if size != meta["tensors_bytes"] or _sha256(tensors_path) != meta["tensors_sha256"]:
        raise SerializationError(
            f"{tensors_path} is truncated or was modified after saving "
            f"({size} bytes, {meta['tensors_bytes']} expected; checksum mismatch)."
        )
    plan = Plan.from_yaml(plan_text)
    if plan.hash != meta["plan_hash"]:
        raise SerializationError(f"{src / _PLAN} was modified after saving (plan hash mismatch).")
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise SerializationError(f"cannot read {tensors_path}: {exc}") from exc
    state = OrderedDict((k, _unflatten(node, tensors)) for k, node in meta["state"].items())
    state._metadata = OrderedDict(  # type: ignore[attr-defined]
        (prefix, dict(v)) for prefix, v in meta.get("state_versions", {}).items()
    )
    float_model = _float_model(model, meta.get("model_factory"))
    plan = resolve_plan(plan, float_model)  # PlanError if the architecture differs
    backend = get_backend(meta["backend"])
    qmodel = backend.build(float_model, plan, _placeholder_stats(meta))
    try:
        qmodel.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise SerializationError(
            f"the saved state does not fit the model rebuilt from the given architecture: {exc}"
        ) from exc
    return qmodel
