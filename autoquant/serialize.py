"""Save and load quantized models without pickle, and without running code the files name.

A saved model is a directory:

* ``plan.yaml``: the resolved plan (``Plan.to_yaml``), readable and diffable;
* ``tensors.safetensors``: every tensor of the model's state, exactly the tensors
  :func:`autoquant.measure.iter_state_tensors` yields (integers at their storage width);
* ``meta.json``: format version, backend, build mode, the tree that puts the tensors
  back into a ``state_dict`` (quantized tensors, packed tuples, dtypes), the plan hash,
  and optionally a model factory (``"package.module:callable"``);
* ``checksums.sha256``: the sha256 of the three files above (``sha256sum -c`` format).

Loading rebuilds the quantized skeleton from the float architecture and the plan (the
backend's own ``build``), then loads the saved state into it; nothing is unpickled.

Trust rule: :func:`load` never imports or calls anything named in the files unless the
caller says so. The float architecture comes from ``model=`` (a module or a
zero-argument callable), or from the recorded ``model_factory`` only with
``trust_factory=True`` or an allow-list (``trust_factory=("mypkg",)``). Everything else
in the files is data and is validated before use: format version, backend and mode
names, the plan (its ops must be the architecture's), and every state entry's kind,
dtype, quantization scheme, axis and shape must equal those of the rebuilt model;
scales must be finite and positive, zero points inside their integer range. Anything
else, and any file that fails its checksum, is refused with a
:class:`~autoquant.errors.SerializationError` naming the file and the entry.

Directories written before the checksum file existed (format version 1: only the
tensors were checksummed) still load, with a warning to re-save them.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoquant import _saved_format as fmt
from autoquant.errors import AutoQuantError, SerializationError

__all__ = ["save", "load", "split_factory", "FORMAT_VERSION"]

FORMAT_VERSION = fmt.FORMAT_VERSION
_FORMAT = fmt.FORMAT
_PLAN, _TENSORS, _META = fmt.PLAN, fmt.TENSORS, fmt.META

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


def save(
    qmodel: nn.Module, directory: str | os.PathLike[str], *, model_factory: str | None = None
) -> Path:
    """Write ``qmodel`` (built by :func:`autoquant.quantize`) to ``directory``.

    ``model_factory`` (``"package.module:callable"`` returning the float model) is
    recorded so that whoever loads the directory *and trusts it* can rebuild the model
    without passing the architecture (``load(dir, trust_factory=...)``).
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
    from autoquant.pruning._stored import compress

    tensors, sparse = compress(tensors)  # zero-heavy (pruned) tensors as bitmask + values
    if model_factory is not None:
        split_factory(model_factory)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # Written last: until it is, a directory being (over)written fails its checksums.
    (out / fmt.CHECKSUMS).unlink(missing_ok=True)
    save_file(tensors, str(out / _TENSORS))
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
        "execution": info.execution,
        "model_factory": model_factory,
        "state": tree,
        "state_versions": versions,
    }
    if sparse:
        meta["sparse"] = sparse
    pruning = getattr(qmodel, "autoquant_pruning", None)
    if pruning is not None:
        meta["pruning"] = pruning.to_dict()
    (out / _META).write_text(json.dumps(meta, indent=1))
    fmt.write_checksums(out)
    return out


TrustFactory = bool | str | Iterable[str]


class _UntrustedFactory(SerializationError):
    """The directory records a model factory the caller did not allow to be imported."""

    def __init__(self, message: str, factory: str) -> None:
        super().__init__(message)
        self.factory = factory


def split_factory(path: str) -> tuple[str, str]:
    """``(module, attribute)`` of a ``"package.module:callable"`` model factory path, as
    :func:`save` stores it; :class:`~autoquant.errors.SerializationError` when ``path``
    does not have that form. Nothing is imported: use it to check a path early."""
    return fmt.split_factory(path)


def _float_model(
    model: nn.Module | Callable[[], nn.Module] | None,
    factory: str | None,
    trust: bool | tuple[str, ...],
    src: Path,
) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if callable(model):
        built = model()
    elif factory and fmt.factory_allowed(factory, trust):
        module, attr = fmt.split_factory(factory)
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise SerializationError(
                f"cannot import the saved model_factory {factory!r}: {exc}. Pass model= to load()."
            ) from exc
        if not callable(fn):
            raise SerializationError(
                f"the saved model_factory {factory!r} is a {type(fn).__name__}, not a callable."
            )
        built = fn()
    elif factory:
        module, _ = fmt.split_factory(factory)
        given = "" if trust is False else f" (trust_factory={list(trust)!r} does not cover it)"
        raise _UntrustedFactory(
            f"{src} records the model factory {factory!r}; load() does not import or call "
            f"code named in a saved file unless you say so{given}. Either pass the float "
            "architecture, load(path, model=MyModel) (a module or a zero-argument "
            "callable), or, if you trust whoever wrote this directory, let load() import "
            f"and call it: load(path, trust_factory=[{module!r}]) (module prefixes or "
            "'module:callable' names) or load(path, trust_factory=True).",
            factory,
        )
    else:
        raise SerializationError(
            "load() needs the float architecture: pass model= (a module or a zero-argument "
            "callable); this directory records no model_factory."
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
    from autoquant.stats import CalibrationStats, TensorStats

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


def _read_meta(src: Path) -> tuple[dict[str, Any], str]:
    import autoquant.backends  # noqa: F401 - registers the built-in backends
    from autoquant.backends.registry import available_backends

    checked = fmt.verify_checksums(src)
    try:
        raw = (src / _META).read_text()
        plan_text = (src / _PLAN).read_text()
    except FileNotFoundError as exc:
        raise SerializationError(
            f"{src} is not a saved autoquant model: {exc.filename} is missing."
        ) from exc
    except UnicodeDecodeError as exc:
        raise SerializationError(f"{src} holds a file that is not UTF-8 text: {exc}") from exc
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SerializationError(f"{src / _META} is corrupt: {exc}") from exc
    meta = fmt.validate_meta(meta, src, available_backends())
    if checked and meta["version"] == 1:
        raise SerializationError(
            f"{src / _META} says format version 1, which has no {fmt.CHECKSUMS}; the "
            "directory mixes two saves. Re-save the model."
        )
    if not checked:
        if meta["version"] != 1:
            raise SerializationError(
                f"{src} is not a complete saved autoquant model: {src / fmt.CHECKSUMS} is "
                "missing (the save did not finish, or the file was removed)."
            )
        tensors_path = src / _TENSORS
        if not tensors_path.exists():
            raise SerializationError(f"{tensors_path} is missing.")
        size = tensors_path.stat().st_size
        if size != meta["tensors_bytes"] or fmt.sha256(tensors_path) != meta["tensors_sha256"]:
            raise SerializationError(
                f"{tensors_path} is truncated or was modified after saving "
                f"({size} bytes, {meta['tensors_bytes']} expected; checksum mismatch)."
            )
        warnings.warn(
            f"{src} was saved by an older autoquant (format version 1): its {_META} and "
            f"{_PLAN} have no checksum. Re-save it to add one: "
            "autoquant.save(autoquant.load(path, ...), path).",
            UserWarning,
            stacklevel=3,
        )
    return meta, plan_text


def load(
    directory: str | os.PathLike[str],
    model: nn.Module | Callable[[], nn.Module] | None = None,
    *,
    trust_factory: TrustFactory = False,
    compile: bool | None = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save`; its outputs equal the saved model's.

    Args:
        directory: a directory written by :func:`save`.
        model: the float architecture: a module (its weights do not matter; every value
            comes from the files) or a zero-argument callable returning one.
        trust_factory: whether the ``model_factory`` recorded in the directory may be
            imported and called when ``model`` is not given. ``False`` (default): never;
            the error names the recorded factory. ``True``: whatever it names, for
            directories you wrote yourself or whose author you trust. A string or an
            iterable of strings: an allow-list, each entry a module prefix (``"mypkg"``
            allows ``mypkg.models:build``, not ``mypkg_x:build``) or an exact
            ``"module:callable"``. Ignored when ``model`` is given.
        compile: run the loaded model compiled (:func:`autoquant.deploy`: Inductor,
            frozen weights, recompiled here from the plan and tensors, never loaded as
            code). None (default): as it ran when saved (``quant_info().execution``).

    Raises:
        SerializationError: a file is missing, fails its checksum or holds anything but
            what :func:`save` writes (wrong types, unknown names, dtypes, shapes or
            ops the architecture lacks), or the recorded factory is not trusted.
    """
    from safetensors.torch import load_file

    from autoquant.backends.registry import get_backend
    from autoquant.plan import Plan, resolve_plan

    trust = fmt.normalize_trust(trust_factory)
    if model is not None and not (isinstance(model, nn.Module) or callable(model)):
        raise TypeError(
            "model must be a torch.nn.Module or a zero-argument callable returning one, but "
            f"got {type(model).__name__}: {model!r}. To use a recorded factory, pass "
            "trust_factory= instead."
        )
    src = Path(directory)
    meta, plan_text = _read_meta(src)
    try:
        plan = Plan.from_yaml(plan_text)
    except AutoQuantError as exc:
        raise SerializationError(f"{src / _PLAN} is not a valid plan: {exc}") from exc
    if plan.hash != meta["plan_hash"]:
        raise SerializationError(f"{src / _PLAN} was modified after saving (plan hash mismatch).")
    tensors_path = src / _TENSORS
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise SerializationError(f"cannot read {tensors_path}: {exc}") from exc
    if "sparse" in meta:
        from autoquant.pruning._stored import decompress

        tensors = decompress(tensors, meta["sparse"], src)
    float_model = _float_model(model, meta["model_factory"], trust, src)
    pruning = None
    if "pruning" in meta:
        from autoquant.pruning.apply import PruneReport, resize_to

        try:
            pruning = PruneReport.from_dict(meta["pruning"])
            # The layers a pruned model lost channels in are cut to the saved sizes.
            float_model = resize_to(float_model, pruning.shapes)
        except (AutoQuantError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SerializationError(
                f"{src / _META}: 'pruning' does not fit the float architecture: {exc}"
            ) from exc
    try:
        plan = resolve_plan(plan, float_model)
    except AutoQuantError as exc:
        raise SerializationError(
            f"{src / _PLAN} does not fit the float architecture given to load(): {exc}"
        ) from exc
    try:
        qmodel = get_backend(meta["backend"]).build(float_model, plan, _placeholder_stats(meta))
    except Exception as exc:  # noqa: BLE001 - the files are data; say which one misled
        raise SerializationError(
            f"cannot rebuild the quantized model from {src / _PLAN} and {src / _META} "
            f"(backend {meta['backend']!r}): {type(exc).__name__}: {exc}"
        ) from exc
    # The rebuilt skeleton says what the state must look like: the same entries, kinds,
    # dtypes, schemes, axes and tensor shapes. Only values come from the files.
    ref_state = qmodel.state_dict()
    ref_tensors: dict[str, torch.Tensor] = {}
    ref_tree = {k: _flatten(v, k, ref_tensors) for k, v in ref_state.items()}
    diff = fmt.first_difference(meta["state"], ref_tree, "state")
    if diff:
        raise SerializationError(f"{src / _META}: {diff}. Re-save the model.")
    fmt.check_tensors(tensors, ref_tensors, src)
    fmt.check_qparams(meta["state"], tensors, src)
    fmt.check_plain_qparams(fmt.qparam_rules(qmodel), meta["state"], tensors, src)
    ref_versions = getattr(ref_state, "_metadata", {})
    fmt.check_versions(meta["state_versions"], ref_versions, src)
    try:
        state = OrderedDict((k, _unflatten(node, tensors)) for k, node in meta["state"].items())
    except Exception as exc:  # noqa: BLE001 - torch's constructors on values that passed the checks
        raise SerializationError(f"cannot rebuild the saved state from {src}: {exc}") from exc
    state._metadata = OrderedDict(  # type: ignore[attr-defined]
        (prefix, dict(v)) for prefix, v in meta["state_versions"].items()
    )
    try:
        qmodel.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, KeyError, ...
        raise SerializationError(
            f"the saved state does not fit the model rebuilt from the given architecture: {exc}"
        ) from exc
    if pruning is not None:
        qmodel.autoquant_pruning = pruning
    if compile is None:
        compile = meta.get("execution", "eager") != "eager"
    if compile:
        from autoquant.quantizer import deploy

        deploy(qmodel)
    return qmodel
