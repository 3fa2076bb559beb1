"""save/load: no pickle, exact outputs, clear errors for damaged directories."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _models import MLP, LSTMClassifier, ResidualCNN, TinyTransformerBlock, settle_bn
from torch import nn

import autoquant as aq
from autoquant.config import OpConfig, QuantSpec


def _rnn_cfg() -> OpConfig:
    return OpConfig(
        approach="dynamic",
        weight=QuantSpec(dtype="int8"),
        activation=QuantSpec(dtype="uint8", scheme="asym", reduce_range=True),
    )


def _cases() -> dict[str, tuple]:
    torch.manual_seed(0)
    img = torch.randn(4, 1, 8, 8)
    ids = torch.randint(0, 100, (4, 12))
    return {
        "static-graph": (lambda: settle_bn(ResidualCNN(), img), {"default": aq.static_int8()}, img),
        "mixed-transformer": (
            lambda: TinyTransformerBlock().eval(),
            {
                "embed": aq.weight_only("int4", scheme="asym"),
                "[qkv]": aq.dynamic_int8(),
                "up": aq.weight_only("int4", group_size=32),
                "down": aq.static_int8(),
                "o": aq.weight_only("int8"),
            },
            ids,
        ),
        "simulated": (
            lambda: MLP().eval(),
            {
                "fc1": OpConfig(
                    approach="static",
                    weight=QuantSpec(dtype="int4"),
                    activation=QuantSpec(dtype="uint4", scheme="asym"),
                )
            },
            torch.randn(8, 64),
        ),
        "lstm": (
            lambda: LSTMClassifier().eval(),
            {"lstm": _rnn_cfg(), "fc": aq.dynamic_int8()},
            torch.randn(4, 6, 8),
        ),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_round_trip_gives_identical_outputs(case: str, tmp_path: Path) -> None:
    factory, rules, x = _cases()[case]
    torch.manual_seed(1)
    model = factory()
    qmodel = aq.quantize(model, rules, [x, x])
    aq.save(qmodel, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["checksums.sha256", "meta.json", "plan.yaml", "tensors.safetensors"]
    # A differently initialised float model of the same architecture: every value that
    # matters must come from the saved files.
    torch.manual_seed(2)
    loaded = aq.load(tmp_path / "m", model=factory)
    with torch.no_grad():
        assert torch.equal(qmodel(x), loaded(x))
    assert aq.quant_info(loaded).plan == aq.quant_info(qmodel).plan
    assert aq.quant_info(loaded).kernels == aq.quant_info(qmodel).kernels
    # What size_bytes reports is what is stored (plus the safetensors header).
    stored = (tmp_path / "m" / "tensors.safetensors").stat().st_size
    assert 0 < stored - aq.size_bytes(qmodel) < 64 * 1024


def test_saved_files_are_not_pickles(tmp_path: Path) -> None:
    qmodel = aq.quantize(MLP().eval(), {"Linear": aq.dynamic_int8()})
    aq.save(qmodel, tmp_path)
    raw = (tmp_path / "tensors.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    json.loads(raw[8 : 8 + header_len])  # safetensors: a JSON header, then raw bytes
    assert b"\x80\x04" not in raw[:2] and not raw.startswith(b"PK")


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    qmodel = aq.quantize(MLP().eval(), {"Linear": aq.dynamic_int8()})
    return aq.save(qmodel, tmp_path / "m")


def test_truncated_tensors_file_is_reported(saved: Path) -> None:
    path = saved / "tensors.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(aq.SerializationError, match="truncated or was modified"):
        aq.load(saved, model=MLP)


def test_tampered_tensor_byte_is_reported(saved: Path) -> None:
    path = saved / "tensors.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(aq.SerializationError, match="checksum mismatch"):
        aq.load(saved, model=MLP)


def test_tampered_plan_is_reported(saved: Path) -> None:
    plan = saved / "plan.yaml"
    plan.write_text(plan.read_text().replace("per_channel", "per_tensor", 1))
    with pytest.raises(aq.SerializationError, match=r"plan.yaml is truncated or was modified"):
        aq.load(saved, model=MLP)


def test_missing_and_corrupt_metadata(saved: Path) -> None:
    (saved / "meta.json").write_text("{not json")
    with pytest.raises(aq.SerializationError, match="corrupt"):
        aq.load(saved, model=MLP)
    (saved / "meta.json").unlink()
    with pytest.raises(aq.SerializationError, match="meta.json is missing"):
        aq.load(saved, model=MLP)


def test_load_without_architecture_says_how_to_fix(saved: Path) -> None:
    with pytest.raises(aq.SerializationError, match="pass model=.*records no model_factory"):
        aq.load(saved)
    # trust_factory cannot help when no factory was recorded.
    with pytest.raises(aq.SerializationError, match="pass model="):
        aq.load(saved, trust_factory=True)


def test_wrong_architecture_is_reported(saved: Path) -> None:
    with pytest.raises((aq.SerializationError, aq.PlanError)):
        aq.load(saved, model=lambda: nn.Sequential(nn.Linear(64, 10)))


def test_save_rejects_models_not_built_by_autoquant(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not built by autoquant"):
        aq.save(MLP(), tmp_path)


# -- checksums cover every file ----------------------------------------------------------


def _resign(directory: Path) -> None:
    """Recompute checksums.sha256 as a deliberate editor (the file's author) would."""
    lines = [
        f"{hashlib.sha256((directory / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ("plan.yaml", "meta.json", "tensors.safetensors")
    ]
    (directory / "checksums.sha256").write_text("".join(lines))


def _edit_meta(directory: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((directory / "meta.json").read_text())
    edit(meta)
    (directory / "meta.json").write_text(json.dumps(meta))
    _resign(directory)


def _edit_plan(directory: Path, old: str, new: str) -> None:
    path = directory / "plan.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    try:  # keep meta.json's plan_hash in step, so only the new content is judged
        digest = aq.Plan.from_yaml(path.read_text()).hash
    except aq.AutoQuantError:
        digest = None
    _edit_meta(directory, lambda m: m.update(plan_hash=digest or m["plan_hash"]))


def test_checksum_file_is_sha256sum_format(saved: Path) -> None:
    if shutil.which("sha256sum") is None:
        pytest.skip("coreutils sha256sum not installed")
    out = subprocess.run(
        ["sha256sum", "-c", "checksums.sha256"], cwd=saved, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(out.stdout.split()) == sorted(
        ["plan.yaml:", "meta.json:", "tensors.safetensors:", "OK", "OK", "OK"]
    )


@pytest.mark.parametrize("name", ["meta.json", "plan.yaml"])
def test_accidental_change_of_meta_or_plan_is_caught(saved: Path, name: str) -> None:
    path = saved / name
    path.write_text(path.read_text() + "\n")  # even a harmless-looking byte
    with pytest.raises(aq.SerializationError, match=rf"{name} is truncated or was modified"):
        aq.load(saved, model=MLP)


def test_missing_checksum_file_is_refused(saved: Path) -> None:
    (saved / "checksums.sha256").unlink()
    with pytest.raises(aq.SerializationError, match="checksums.sha256 is missing"):
        aq.load(saved, model=MLP)


def test_format_1_directory_loads_with_a_warning_to_resave(saved: Path) -> None:
    """A directory written before checksums.sha256 existed (the tensors' checksum in
    meta.json) still loads; the warning says how to add the missing checksums."""
    torch.manual_seed(0)
    x = torch.randn(3, 64)
    expected = aq.load(saved, model=MLP)(x)
    tensors = saved / "tensors.safetensors"
    meta = json.loads((saved / "meta.json").read_text())
    meta.update(
        version=1,
        tensors_sha256=hashlib.sha256(tensors.read_bytes()).hexdigest(),
        tensors_bytes=tensors.stat().st_size,
    )
    (saved / "meta.json").write_text(json.dumps(meta))
    (saved / "checksums.sha256").unlink()
    with pytest.warns(UserWarning, match=r"format version 1.*Re-save"):
        old = aq.load(saved, model=MLP)
    assert torch.equal(old(x), expected)
    aq.save(old, saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(aq.load(saved, model=MLP)(x), expected)
    # Version 1 with a checksum file is a mix of two saves.
    _edit_meta(saved, lambda m: m.update(version=1, tensors_sha256="0" * 64, tensors_bytes=1))
    with pytest.raises(aq.SerializationError, match="mixes two saves"):
        aq.load(saved, model=MLP)


# -- the model factory is only imported with the caller's opt-in -----------------------


@pytest.fixture()
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """An importable module whose import has a side effect (it writes a file), with a
    zero-argument factory of the right architecture."""
    name = f"aq_planted_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "side-effect-happened"
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / f"{name}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from _models import MLP\n"
        "def build():\n"
        "    return MLP()\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    yield SimpleNamespace(module=name, factory=f"{name}:build", marker=marker)
    sys.modules.pop(name, None)


def test_recorded_factory_is_not_imported_without_opt_in(
    saved: Path, planted: SimpleNamespace
) -> None:
    # The scenario of the report: someone edits meta.json of a directory they hand on.
    _edit_meta(saved, lambda m: m.update(model_factory=planted.factory))
    with pytest.raises(aq.SerializationError) as err:
        aq.load(saved)
    msg = str(err.value)
    assert planted.factory in msg and "model=" in msg and "trust_factory" in msg
    # An allow-list that does not cover it: refused too, saying so.
    for allow in ("mypkg", ["mypkg", f"{planted.module}x"], f"{planted.module}:other"):
        with pytest.raises(aq.SerializationError, match="does not cover it"):
            aq.load(saved, trust_factory=allow)
    assert not planted.marker.exists()
    assert planted.module not in sys.modules
    # model= wins over the recorded factory, trusted or not.
    aq.load(saved, model=MLP, trust_factory=True)
    assert not planted.marker.exists()


@pytest.mark.parametrize("trust", [True, "{module}", "{factory}", ["other", "{module}."]])
def test_opt_in_imports_the_recorded_factory(
    tmp_path: Path, planted: SimpleNamespace, trust
) -> None:
    torch.manual_seed(0)
    qmodel = aq.quantize(MLP().eval(), {"Linear": aq.weight_only("int8")})
    aq.save(qmodel, tmp_path / "m", model_factory=planted.factory)
    fill = (lambda t: t.format(**vars(planted))) if not isinstance(trust, bool) else None
    trust = (
        trust
        if fill is None
        else [fill(t) for t in trust]
        if isinstance(trust, list)
        else fill(trust)
    )
    loaded = aq.load(tmp_path / "m", trust_factory=trust)
    assert planted.marker.read_text() == "imported"
    x = torch.randn(3, 64)
    assert torch.equal(qmodel(x), loaded(x))


def test_trust_factory_argument_is_checked(saved: Path) -> None:
    with pytest.raises(TypeError, match="pass trust_factory= instead"):
        aq.load(saved, model="_models:MLP")
    with pytest.raises(TypeError, match="trust_factory"):
        aq.load(saved, model=MLP, trust_factory=1)
    with pytest.raises(ValueError, match="neither a module prefix"):
        aq.load(saved, model=MLP, trust_factory=["os; rm"])


def test_save_refuses_a_malformed_factory(tmp_path: Path) -> None:
    qmodel = aq.quantize(MLP().eval(), {"Linear": aq.dynamic_int8()})
    for bad in ("os.system", "os:system()", "a b:c", ":build"):
        with pytest.raises(aq.SerializationError, match="package.module:callable"):
            aq.save(qmodel, tmp_path, model_factory=bad)


# -- everything else in the files is data, validated -----------------------------------


@pytest.fixture()
def saved_static(tmp_path: Path) -> Path:
    """A model with quantized tensors in its state (static int8: qint8 weights, quint8
    activations' qparams)."""
    torch.manual_seed(0)
    calib = [torch.randn(8, 64) for _ in range(2)]
    qmodel = aq.quantize(MLP().eval(), {"Linear": aq.static_int8()}, calib)
    return aq.save(qmodel, tmp_path / "s")


def _tensor_node(meta: dict, key: str) -> dict:
    node = meta["state"][key]
    assert node["kind"] == "tensor", node
    return node


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(version=99), r"version 99 \(written by a newer autoquant"),
        (lambda m: m.update(version="2"), r"'version' must be an integer"),
        (lambda m: m.update(version=True), r"'version' must be an integer"),
        (lambda m: m.update(format="pickle"), r"'format' must be 'autoquant-model'"),
        (lambda m: m.update(backend="evil"), r"'backend' must be one of \["),
        (lambda m: m.update(mode=["graph"]), r"'mode' must be one of"),
        (lambda m: m.update(stat_keys="fc1"), r"'stat_keys' must be a list of strings"),
        (lambda m: m.update(model_factory="os.system"), r"'model_factory' must be null or"),
        (lambda m: m.update(extra=1), r"unknown key\(s\) \['extra'\]"),
        (lambda m: m.pop("state"), r"lacks \['state'\]"),
        (lambda m: m.update(state_versions={"fc1": {"version": "1"}}), "state_versions"),
        (lambda m: m.update(state_versions={"os": {"version": 1}}), "names module 'os'"),
        (lambda m: _tensor_node(m, "fc1.weight_int").update(name="../../etc"), r"\['name'\] is '../../etc'"),
        (lambda m: _tensor_node(m, "fc1.weight_int").update(kind="os.system"), r"\['kind'\] is 'os.system'"),
        (lambda m: m["state"].update({"fc1.weight_int": {"kind": "scalar", "value": 1}}), r"state\['fc1.weight_int'\] has unexpected key\(s\) \['value'\]"),
        (lambda m: m.update(execution="pickle"), r"'execution' must be one of"),
    ],
)  # fmt: skip
def test_edited_meta_is_refused_with_a_message(saved_static: Path, edit, message: str) -> None:
    _edit_meta(saved_static, edit)
    with pytest.raises(aq.SerializationError, match=message):
        aq.load(saved_static, model=MLP)


def test_meta_that_is_not_an_object_or_too_deep_is_refused(saved: Path) -> None:
    (saved / "meta.json").write_text("[1, 2]")
    _resign(saved)
    with pytest.raises(aq.SerializationError, match="the file must be a JSON object"):
        aq.load(saved, model=MLP)
    (saved / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    _resign(saved)
    with pytest.raises(aq.SerializationError, match="meta.json is corrupt"):
        aq.load(saved, model=MLP)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  fc2:\n", "  fc7:\n", r"does not fit the float architecture.*fc7"),  # unknown op
        ("dtype: int8", "dtype: int7", r"plan.yaml is not a valid plan.*int7"),
        ("version: 1", "version: 5", r"plan.yaml is not a valid plan.*version"),
        ("dtype: int8", "dtype: int4", r"cannot rebuild the quantized model from .*plan.yaml"),
        ("approach: static", "approach: dynamic", "meta.json: state"),
    ],
)
def test_edited_plan_is_refused_with_a_message(
    saved_static: Path, old: str, new: str, message: str
) -> None:
    _edit_plan(saved_static, old, new)
    with pytest.raises(aq.SerializationError, match=message):
        aq.load(saved_static, model=MLP)


def _edit_tensor(directory: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(directory / "tensors.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "tensors.safetensors"))
    _resign(directory)


def _first(tensors: dict[str, torch.Tensor], suffix: str) -> str:
    return next(k for k in sorted(tensors) if k.endswith(suffix))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # wrong shape: one output channel fewer
        (lambda t: t.update({"fc1.weight_int": t["fc1.weight_int"][:-1]}), r"of shape \(63, 64\), but .* needs torch.int8 of shape \(64, 64\)"),
        # wrong dtype
        (lambda t: t.update({"fc1.weight_int": t["fc1.weight_int"].int()}), r"is torch.int32 .* needs torch.int8"),
        (lambda t: t.pop("fc1.weight_int"), r"lacks \["),
        (lambda t: t.update(extra=torch.zeros(1)), r"unexpected tensor\(s\) \['extra'\]"),
        (lambda t: t["fc1.weight_scale"].fill_(-1.0), r"has scale -1.0; scales must be finite and positive"),
        (lambda t: t["fc1.weight_scale"].fill_(float("nan")), r"has scale nan"),
        (lambda t: t["fc1.output_zero_point"].fill_(-1), r"'fc1.output_zero_point' has zero points in \[-1, -1\], outside the range \[0, 255\]"),
        # the activations' qparams (plain tensors of the quantized Linear)
        (lambda t: t["fc1.input_scale"].fill_(0.0), r"'fc1.input_scale' has scale 0.0"),
        (lambda t: t["fc1.input_zero_point"].fill_(-3), r"'fc1.input_zero_point' has zero points in \[-3, -3\], outside the range \[0, 255\]"),
        (lambda t: t["fc2.input_scale"].fill_(float("inf")), r"'fc2.input_scale' has scale inf"),
        (lambda t: t["fc2.input_zero_point"].fill_(256), r"'fc2.input_zero_point' has zero points in \[256, 256\]"),
    ],
)  # fmt: skip
def test_edited_tensors_are_refused_with_a_message(saved_static: Path, edit, message: str) -> None:
    _edit_tensor(saved_static, edit)
    with pytest.raises(aq.SerializationError, match=message):
        aq.load(saved_static, model=MLP)
