"""Checks on a saved model directory (see :mod:`autoquant.serialize`): checksums, the
model-factory trust rule, and validation of everything read from the files as data.

A saved directory may come from someone else, so nothing in it is trusted: every value
is checked for type and range before use, and structural facts (which state entries,
their dtypes, shapes, quantization schemes) must equal those of the model rebuilt from
the float architecture and the plan. What fails is refused with a
:class:`~autoquant.errors.SerializationError` that names the file and the entry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from autoquant.errors import SerializationError

FORMAT = "autoquant-model"
FORMAT_VERSION = 2
# 1: checksums of the tensors only (in meta.json); 2: checksums.sha256 covers every file.
READABLE_VERSIONS = (1, 2)
PLAN, TENSORS, META, CHECKSUMS = "plan.yaml", "tensors.safetensors", "meta.json", "checksums.sha256"
CHECKED_FILES = (PLAN, META, TENSORS)

MODES = ("graph", "module", "eager")
EXECUTIONS = ("eager", "compiled (torch.compile inductor, freezing)")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_RE = re.compile(rf"{_IDENT}(\.{_IDENT})*")
_FACTORY_RE = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT})")
_HEX64 = re.compile(r"[0-9a-f]{64}")


# -- checksums -------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(out: Path) -> None:
    """``checksums.sha256`` in ``sha256sum`` format (``sha256sum -c`` verifies it)."""
    lines = "".join(f"{sha256(out / name)}  {name}\n" for name in CHECKED_FILES)
    (out / CHECKSUMS).write_text(lines)


def verify_checksums(src: Path) -> bool:
    """Check every file against ``checksums.sha256``; False when there is none."""
    path = src / CHECKSUMS
    if not path.exists():
        return False
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SerializationError(f"cannot read {path}: {exc}") from exc
    recorded: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or not _HEX64.fullmatch(digest) or name not in CHECKED_FILES:
            raise SerializationError(
                f"{path} line {i} is not '<sha256>  <file>' for one of "
                f"{list(CHECKED_FILES)}: {line[:120]!r}. The file is damaged; re-save the model."
            )
        recorded[name] = digest
    missing = [n for n in CHECKED_FILES if n not in recorded]
    if missing:
        raise SerializationError(f"{path} has no checksum for {missing}; re-save the model.")
    for name in CHECKED_FILES:
        file = src / name
        if not file.exists():
            raise SerializationError(
                f"{src} is not a complete saved autoquant model: {file} is missing."
            )
        if sha256(file) != recorded[name]:
            raise SerializationError(
                f"{file} is truncated or was modified after saving (checksum mismatch "
                f"with {CHECKSUMS}, {file.stat().st_size} bytes now)."
            )
    return True


# -- the model factory -----------------------------------------------------------------


def split_factory(path: Any) -> tuple[str, str]:
    """``"package.module:callable"`` -> (module, attribute); anything else is refused."""
    m = _FACTORY_RE.fullmatch(path) if isinstance(path, str) else None
    if m is None:
        raise SerializationError(
            "model_factory must look like 'package.module:callable' (Python identifiers), "
            f"but got {path!r}."
        )
    return m.group(1), m.group(2)


def normalize_trust(trust: Any) -> bool | tuple[str, ...]:
    """``trust_factory`` as given to ``load``: a bool, or module prefixes / exact
    ``"module:callable"`` names (one string or an iterable of them)."""
    if isinstance(trust, bool):
        return trust
    entries = [trust] if isinstance(trust, str) else trust
    if not isinstance(entries, Iterable) or isinstance(entries, (bytes, Mapping)):
        raise TypeError(
            "trust_factory must be False, True, a module prefix such as 'mypkg' or an "
            f"iterable of them, but got {type(trust).__name__}: {trust!r}."
        )
    out = []
    for entry in entries:
        if not isinstance(entry, str):
            raise TypeError(f"trust_factory entries must be strings, but got {entry!r}.")
        name = entry.strip().rstrip(".")
        if not (_MODULE_RE.fullmatch(name) or _FACTORY_RE.fullmatch(name)):
            raise ValueError(
                f"trust_factory entry {entry!r} is neither a module prefix ('mypkg', "
                "'mypkg.models') nor a factory ('mypkg.models:build')."
            )
        out.append(name)
    return tuple(out)


def factory_allowed(factory: str, trust: bool | tuple[str, ...]) -> bool:
    """Entries match the factory exactly, or its module or a package above it (so
    ``'mypkg'`` allows ``mypkg.models:build`` but not ``mypkg_other:build``)."""
    if isinstance(trust, bool):
        return trust
    module, _ = split_factory(factory)
    return any(
        e == factory or (":" not in e and (module == e or module.startswith(e + ".")))
        for e in trust
    )


# -- meta.json -------------------------------------------------------------------------


def _bad(src: Path, key: str, value: Any, allowed: str) -> SerializationError:
    text = repr(value)
    if len(text) > 200:
        text = text[:200] + "..."
    return SerializationError(
        f"{src / META}: {key} must be {allowed}, but got {text}. The file is damaged or "
        "was edited; re-save the model."
    )


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def validate_meta(meta: Any, src: Path, backends: Iterable[str]) -> dict[str, Any]:
    """Refuse a ``meta.json`` whose fields are not what :func:`save` writes."""
    if not isinstance(meta, dict):
        raise _bad(src, "the file", meta, "a JSON object")
    if meta.get("format") != FORMAT:
        raise _bad(src, "'format'", meta.get("format"), repr(FORMAT))
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad(src, "'version'", version, f"an integer in {list(READABLE_VERSIONS)}")
    if version not in READABLE_VERSIONS:
        newer = " (written by a newer autoquant: upgrade it)" if version > FORMAT_VERSION else ""
        raise SerializationError(
            f"{src} holds format {FORMAT!r} version {version}{newer}; this autoquant reads "
            f"versions {list(READABLE_VERSIONS)}."
        )
    expected = {
        "format",
        "version",
        "torch",
        "backend",
        "mode",
        "stat_keys",
        "plan_hash",
        "kernels",
        "simulated",
        "model_factory",
        "state",
        "state_versions",
    } | ({"tensors_sha256", "tensors_bytes"} if version == 1 else set())
    # Written only when used: "execution" since issue 10 (how the saved model ran; older
    # version-2 files lack it), "pruning"/"sparse" for pruned models.
    optional = {"execution", "pruning", "sparse"}
    unknown = sorted(set(meta) - expected - optional)
    missing = sorted(expected - set(meta))
    if unknown or missing:
        raise SerializationError(
            f"{src / META} (version {version}) has unknown key(s) {unknown} and lacks "
            f"{missing}. The file is damaged or was edited; re-save the model."
        )
    names = sorted(backends)
    checks: list[tuple[str, bool, str]] = [
        ("'torch'", isinstance(meta["torch"], str), "a version string"),
        ("'backend'", meta["backend"] in names, f"one of {names}"),
        ("'mode'", meta["mode"] in MODES, f"one of {list(MODES)}"),
        ("'stat_keys'", _str_list(meta["stat_keys"]), "a list of strings"),
        ("'plan_hash'", isinstance(meta["plan_hash"], str) and bool(_HEX64.fullmatch(meta["plan_hash"])), "a sha256 hex digest"),
        ("'kernels'", isinstance(meta["kernels"], dict) and all(isinstance(v, str) for v in meta["kernels"].values()), "a mapping op -> kernel name"),
        ("'simulated'", _str_list(meta["simulated"]), "a list of op names"),
        ("'state'", isinstance(meta["state"], dict), "a mapping state key -> entry"),
        ("'state_versions'", isinstance(meta["state_versions"], dict) and all(
            isinstance(v, dict) and set(v) == {"version"} and type(v["version"]) is int and v["version"] >= 0
            for v in meta["state_versions"].values()
        ), "a mapping module prefix -> {'version': int}"),
    ]  # fmt: skip
    if version == 1:
        checks += [
            ("'tensors_sha256'", isinstance(meta["tensors_sha256"], str) and bool(_HEX64.fullmatch(meta["tensors_sha256"])), "a sha256 hex digest"),
            ("'tensors_bytes'", type(meta["tensors_bytes"]) is int and meta["tensors_bytes"] >= 0, "a byte count"),
        ]  # fmt: skip
    if "execution" in meta:
        checks.append(
            ("'execution'", meta["execution"] in EXECUTIONS, f"one of {list(EXECUTIONS)}")
        )
    for key, ok, allowed in checks:
        if not ok:
            raise _bad(src, key, meta[key.strip("'")], allowed)
    if meta["model_factory"] is not None:
        try:
            split_factory(meta["model_factory"])
        except SerializationError:
            raise _bad(
                src, "'model_factory'", meta["model_factory"], "null or 'package.module:callable'"
            ) from None
    return meta


# -- the state tree against the rebuilt model ------------------------------------------


def _describe(node: Any) -> str:
    text = repr(node)
    return text if len(text) <= 160 else text[:160] + "..."


def first_difference(saved: Any, ref: Any, where: str) -> str | None:
    """Where the saved JSON tree differs from the rebuilt model's, in words; None if equal.

    Iterative (no recursion limit to hit on a maliciously deep tree)."""
    stack = [(saved, ref, where)]
    while stack:
        s, r, at = stack.pop()
        if isinstance(r, dict):
            if not isinstance(s, dict):
                return f"{at} is {_describe(s)}, but the rebuilt model has {_describe(r)}"
            extra, lacking = sorted(set(s) - set(r)), sorted(set(r) - set(s))
            if extra or lacking:
                return (
                    f"{at} has unexpected key(s) {extra[:10]} and lacks {lacking[:10]} "
                    "compared with the rebuilt model"
                )
            stack += [(s[k], r[k], f"{at}[{k!r}]") for k in reversed(list(r))]
        elif isinstance(r, list):
            if not isinstance(s, list) or len(s) != len(r):
                return f"{at} is {_describe(s)}, but the rebuilt model has {_describe(r)}"
            stack += [
                (a, b, f"{at}[{i}]")
                for i, (a, b) in reversed(list(enumerate(zip(s, r, strict=True))))
            ]
        elif type(s) is not type(r) or s != r:
            return f"{at} is {_describe(s)}, but the model rebuilt from {PLAN} has {_describe(r)}"
    return None


def check_tensors(
    saved: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor], src: Path
) -> None:
    """Same tensor names, dtypes and shapes as the rebuilt model's state."""
    extra, lacking = sorted(set(saved) - set(ref)), sorted(set(ref) - set(saved))
    if extra or lacking:
        raise SerializationError(
            f"{src / TENSORS} holds unexpected tensor(s) {extra[:10]} and lacks {lacking[:10]} "
            f"compared with the model rebuilt from {PLAN}; re-save the model."
        )
    for name, r in ref.items():
        s = saved[name]
        if s.dtype != r.dtype or s.shape != r.shape:
            raise SerializationError(
                f"{src / TENSORS}: tensor {name!r} is {s.dtype} of shape {tuple(s.shape)}, but "
                f"the model rebuilt from {PLAN} needs {r.dtype} of shape {tuple(r.shape)}."
            )


_ZP_RANGE = {
    "torch.qint8": (-128, 127),
    "torch.quint8": (0, 255),
    "torch.qint32": (-(2**31), 2**31 - 1),
    "torch.quint4x2": (0, 15),
}


def check_qparams(tree: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], src: Path) -> None:
    """Scales finite and positive, zero points inside their integer type's range.

    Runs after :func:`first_difference` accepted the tree, so its shape is known."""
    stack = list(tree.values())
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack += node
        elif isinstance(node, dict):
            if node.get("kind") == "qtensor":
                name = node["name"]
                scale = tensors[f"{name}.scale"].double()
                zp = tensors[f"{name}.zero_point"]
                lo, hi = _ZP_RANGE[node["dtype"]]
                if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
                    bad = scale[~(torch.isfinite(scale) & (scale > 0))].flatten()[0].item()
                    raise SerializationError(
                        f"{src / TENSORS}: {name!r} has scale {bad}; scales must be finite "
                        "and positive. The file is damaged or was edited; re-save the model."
                    )
                if zp.numel() and (int(zp.min()) < lo or int(zp.max()) > hi):
                    raise SerializationError(
                        f"{src / TENSORS}: {name!r} has zero points in "
                        f"[{int(zp.min())}, {int(zp.max())}], outside {node['dtype']}'s "
                        f"range [{lo}, {hi}]. The file is damaged or was edited."
                    )
            else:
                stack += [v for v in node.values() if isinstance(v, (dict, list))]


def check_versions(saved: Mapping[str, Any], ref: Mapping[str, Any], src: Path) -> None:
    """Module layout versions: only prefixes the rebuilt model has, none newer than its."""
    for prefix, v in saved.items():
        r = ref.get(prefix)
        if not isinstance(r, dict) or not isinstance(r.get("version"), int):
            raise SerializationError(
                f"{src / META}: state_versions names module {prefix!r}, which the model "
                f"rebuilt from {PLAN} does not have (or it has no layout version)."
            )
        if v["version"] > r["version"]:
            raise SerializationError(
                f"{src / META}: module {prefix!r} was saved with layout version "
                f"{v['version']}, newer than this torch's {r['version']}: upgrade torch."
            )


def qparam_rules(qmodel: torch.nn.Module) -> dict[str, tuple[int, int] | None]:
    """State keys of the rebuilt model's plain-tensor qparams: ``None`` for a scale
    (must be finite and positive), ``(lo, hi)`` for a zero point's integer range.

    Known from the quantized modules themselves (autoquant's, torch's, and the
    ``quantize_per_tensor`` calls of torch.fx graphs), never from the files."""
    rules: dict[str, tuple[int, int] | None] = {}
    quint8 = _ZP_RANGE["torch.quint8"]
    for prefix, mod in qmodel.named_modules():
        at = f"{prefix}." if prefix else ""
        own = dict(mod.named_buffers(recurse=False))
        quantized = getattr(type(mod), "__module__", "").startswith(
            ("autoquant.backends", "torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")
        )
        if quantized:
            for name, buf in own.items():
                if name.endswith("scale") and buf.is_floating_point():
                    rules[at + name] = None
            ranges = {
                "weight_zero_point": (getattr(mod, "w_qmin", None), getattr(mod, "w_qmax", None)),
                "input_zero_point": (getattr(mod, "in_qmin", None), getattr(mod, "in_qmax", None)),
            }
            for name, (lo, hi) in ranges.items():
                if name in own and isinstance(lo, int) and isinstance(hi, int):
                    rules[at + name] = (lo, hi)
            if type(mod).__name__.startswith("Static") and "output_zero_point" in own:
                # uint8 hand-off to the next int8 op: a zero point of the uint8 range.
                rules[at + "output_zero_point"] = quint8
            if type(mod).__module__.startswith("torch.ao") and isinstance(
                getattr(mod, "zero_point", None), int
            ):
                rules[at + "zero_point"] = quint8  # torch's eager int8 ops: quint8 outputs
                rules[at + "scale"] = None
        if isinstance(mod, torch.fx.GraphModule):
            for node in mod.graph.nodes:
                if node.op != "call_function" or node.target is not torch.quantize_per_tensor:
                    continue
                args = list(node.args) + [None] * 4
                scale, zp, dtype = args[1], args[2], args[3]
                if isinstance(scale, torch.fx.Node) and scale.op == "get_attr":
                    rules[at + str(scale.target)] = None
                if (
                    isinstance(zp, torch.fx.Node)
                    and zp.op == "get_attr"
                    and str(dtype) in _ZP_RANGE
                ):
                    rules[at + str(zp.target)] = _ZP_RANGE[str(dtype)]
    return rules


def check_plain_qparams(
    rules: Mapping[str, tuple[int, int] | None],
    tree: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    src: Path,
) -> None:
    """The values :func:`qparam_rules` constrains, in the saved tensors."""
    for key, rule in rules.items():
        node = tree.get(key)
        if not isinstance(node, dict) or node.get("kind") != "tensor":
            continue
        t = tensors[node["name"]]
        if rule is None:
            ok = torch.isfinite(t.double()) & (t.double() > 0)
            if not bool(ok.all()):
                raise SerializationError(
                    f"{src / TENSORS}: {key!r} has scale {t.double()[~ok].flatten()[0].item()}; "
                    "scales must be finite and positive. The file is damaged or was edited; "
                    "re-save the model."
                )
        elif t.numel() and not t.is_floating_point():
            lo, hi = rule
            if int(t.min()) < lo or int(t.max()) > hi:
                raise SerializationError(
                    f"{src / TENSORS}: {key!r} has zero points in [{int(t.min())}, "
                    f"{int(t.max())}], outside the range [{lo}, {hi}] of its integer type. "
                    "The file is damaged or was edited; re-save the model."
                )
