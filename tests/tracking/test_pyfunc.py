"""The python_function flavour: models logged in autoquant's format name the loader
module ``autoquant.tracking``, which must keep loading them (old and new) after the
module became a package, in a fresh process as a serving process would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import autoquant
import autoquant.tracking
from autoquant.tracking import pyfunc

from ._helpers import TwoInputNet

FACTORY = "tracking._helpers:TwoInputNet"  # tests/ is on sys.path


def test_the_package_is_the_loader_module_models_name(tracked, monkeypatch) -> None:
    import mlflow.artifacts

    assert autoquant.tracking._load_pyfunc is pyfunc._load_pyfunc
    assert pyfunc.LOADER_MODULE == "autoquant.tracking"
    # What the tracked run wrote into its registered model's MLmodel file.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.uri)  # models:/ resolves through it
    local = mlflow.artifacts.download_artifacts(
        f"models:/{tracked.tracker.registered_model}@best", tracking_uri=tracked.uri
    )
    mlmodel = yaml.safe_load((Path(local) / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "autoquant.tracking"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A model saved the way every tracker version logged non-picklable models:
    autoquant.save inside mlflow.pyfunc.save_model(loader_module="autoquant.tracking")."""
    import mlflow.pyfunc

    root = tmp_path_factory.mktemp("pyfunc")
    model = TwoInputNet().eval()
    qmodel = autoquant.quantize(model, {"Linear": autoquant.dynamic_int8()})
    saved = autoquant.save(qmodel, root / "autoquant_model", model_factory=FACTORY)
    path = root / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            str(path), loader_module="autoquant.tracking", data_path=str(saved)
        )
    torch.manual_seed(1)
    x, y = torch.randn(3, 6), torch.randn(3, 5)
    with torch.inference_mode():
        expected = qmodel(x, y)
    return path, x, y, expected


def test_predict_takes_positional_and_keyword_inputs(logged, monkeypatch) -> None:
    import mlflow.pyfunc

    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", FACTORY)
    path, x, y, expected = logged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mlflow.pyfunc.load_model(str(path))
    impl = loaded.get_raw_model()
    assert isinstance(impl, torch.nn.Module)
    # AutoQuantPyfunc itself, under the convention of autoquant.inputs.
    wrapper = pyfunc.AutoQuantPyfunc(impl)
    for inputs in ((x.numpy(), y.numpy()), [x, y], {"x": x.numpy(), "y": y}):
        out = wrapper.predict(inputs)
        assert isinstance(out, np.ndarray)
        assert torch.equal(torch.as_tensor(out), expected)
    # float64 arrays (numpy's default) are fed as float32
    out = wrapper.predict((x.double().numpy(), y.double().numpy()))
    assert torch.equal(torch.as_tensor(out), expected)


def test_a_fresh_process_loads_it_by_the_loader_module_name(logged) -> None:
    """MLflow imports ``autoquant.tracking`` by the name in MLmodel and calls its
    ``_load_pyfunc``: nothing imported beforehand but mlflow."""
    path, x, y, expected = logged
    np.save(path.parent / "x.npy", x.numpy())
    np.save(path.parent / "y.npy", y.numpy())
    code = textwrap.dedent(
        f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        import numpy as np
        import mlflow.pyfunc

        assert "autoquant" not in sys.modules
        model = mlflow.pyfunc.load_model({str(path)!r})
        x = np.load({str(path.parent / "x.npy")!r})
        y = np.load({str(path.parent / "y.npy")!r})
        np.save({str(path.parent / "out.npy")!r}, model.predict((x, y)))
        print(type(model._model_impl).__module__)
        """
    )
    tests = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]),
        AUTOQUANT_TRUST_FACTORY=FACTORY,  # a test module's factory: allowed explicitly
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "autoquant.tracking.pyfunc"
    got = torch.as_tensor(np.load(path.parent / "out.npy"))
    assert torch.equal(got, expected)


def test_pyfunc_trusts_exactly_the_bundled_example_factories(monkeypatch) -> None:
    """The factories the pyfunc loader imports by default are those of the CLI's bundled
    model configs, and AUTOQUANT_TRUST_FACTORY only widens that."""
    from autoquant._saved_format import factory_allowed

    conf = Path(autoquant.__file__).parent / "conf" / "model"
    bundled = set()
    for path in conf.glob("*.yaml"):
        target = yaml.safe_load(path.read_text())["factory"]["_target_"]
        module, _, attr = target.rpartition(".")
        bundled.add(f"{module}:{attr}")
    assert bundled == set(pyfunc.PYFUNC_TRUSTED_FACTORIES)
    monkeypatch.delenv("AUTOQUANT_TRUST_FACTORY", raising=False)
    trust = pyfunc._pyfunc_trust()
    assert all(factory_allowed(f, trust) for f in bundled)
    assert not factory_allowed("autoquant.examples.digits:main", trust)
    assert not factory_allowed("autoquant.cli:main", trust)
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", "mypkg")
    assert factory_allowed("mypkg.models:build", pyfunc._pyfunc_trust())
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", "*")
    assert pyfunc._pyfunc_trust() is True
    monkeypatch.setenv("AUTOQUANT_TRUST_FACTORY", "not a module")
    with pytest.raises(ValueError, match="AUTOQUANT_TRUST_FACTORY='not a module'"):
        pyfunc._pyfunc_trust()
