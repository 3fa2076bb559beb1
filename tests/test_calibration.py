"""calibrate(): graph and module modes, data formats, sample budget, model left intact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx
from _models import LSTMClassifier, ResidualCNN, TinyTransformerBlock, settle_bn
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from autoquant._data import iter_batches
from autoquant.backends.base import Backend, Capability
from autoquant.calibration import CalibrationStats, calibrate
from autoquant.config import QuantSpec
from autoquant.errors import CalibrationError
from autoquant.observers import activation_qparams
from autoquant.stats import TensorStats


class TraceBackend(Backend):
    """A graph backend: calibrates on the plain symbolic trace of the model."""

    name = "test-trace"

    def capabilities(self) -> list[Capability]:
        return []

    def calibration_graph(self, model: nn.Module) -> torch.fx.GraphModule:
        return torch.fx.symbolic_trace(model)

    def build(self, model: nn.Module, plan: Any, stats: Any) -> nn.Module:
        raise NotImplementedError


class ModuleBackend(Backend):
    """A module backend: no graph, statistics per quantizable module."""

    name = "test-module"

    def capabilities(self) -> list[Capability]:
        return []

    def build(self, model: nn.Module, plan: Any, stats: Any) -> nn.Module:
        raise NotImplementedError


GRAPH, MODULE = TraceBackend(), ModuleBackend()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return settle_bn(ResidualCNN(channels=8), torch.randn(8, 1, 12, 12))


def _images(n_batches: int = 3, batch: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 1, 12, 12, generator=g) for _ in range(n_batches)]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(
    model: nn.Module, before: dict[str, torch.Tensor], flags: dict[str, bool]
) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert module.training == flags[name], name
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# ------------------------------------------------------------------------ graph mode


def test_graph_mode_records_node_and_input_keys() -> None:
    model = _cnn()
    result = calibrate(model, _images(), backend=GRAPH)
    assert result.mode == "graph" and result.backend == "test-trace"
    assert result.n_batches == 3 and result.n_samples == 24
    nodes = {n.name for n in torch.fx.symbolic_trace(model).graph.nodes if n.op != "output"}
    # Every float-producing node (all of them here) and every quantizable op's input.
    assert {k[len("node:") :] for k in result.keys() if k.startswith("node:")} == nodes
    assert {k for k in result.keys() if k.startswith("in:")} == {
        "in:stem",
        "in:conv1",
        "in:conv2",
        "in:fc",
    }
    # The input of conv1 is relu0's output: same tensor, same statistics.
    a, b = result["in:conv1"], result["node:relu0"]
    assert (a.min, a.max, a.count) == (b.min, b.max, b.count)
    assert torch.equal(a.hist, b.hist)
    assert a.min == 0.0  # after a ReLU
    assert result["node:x"].count == 24 * 144
    # Enough to derive qparams for any observer later.
    for observer in ("minmax", "moving_average", "percentile", "mse", "kl"):
        activation_qparams(
            result["node:add"], QuantSpec(observer=observer, dtype="uint8", scheme="asym")
        )


def test_graph_mode_matches_an_independent_forward() -> None:
    model = _cnn()
    data = _images(2)
    result = calibrate(model, data, backend=GRAPH)
    seen: list[torch.Tensor] = []
    handle = model.conv2.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        for x in data:
            model.eval()(x)
    handle.remove()
    expected = torch.cat([s.flatten() for s in seen])
    st = result["node:conv2"]
    assert st.min == expected.min().item() and st.max == expected.max().item()
    assert st.batch_maxs == [s.max().item() for s in seen]


def test_graph_mode_with_dict_batches_binds_keyword_inputs() -> None:
    torch.manual_seed(0)
    model = TinyTransformerBlock().eval()
    g = torch.Generator().manual_seed(0)
    data = [{"ids": torch.randint(0, 100, (4, 6), generator=g)} for _ in range(3)]
    result = calibrate(model, data, backend=GRAPH)
    assert result.n_samples == 12
    # Integer ids are not observed; the float activations are.
    assert "node:ids" not in result and "node:embed" in result
    assert {"in:q", "in:k", "in:v", "in:o", "in:up", "in:down", "in:head"} <= set(result.keys())
    with pytest.raises(CalibrationError, match=r"keyword inputs \['tokens'\]"):
        calibrate(model, [{"tokens": torch.zeros(2, 6, dtype=torch.long)}], backend=GRAPH)


# ----------------------------------------------------------------------- module mode


def test_module_mode_records_in_out_for_lstm() -> None:
    torch.manual_seed(0)
    model = LSTMClassifier()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(5, 7, 8, generator=g), torch.zeros(5)) for _ in range(3)]
    result = calibrate(model, data, backend=MODULE)
    assert result.mode == "module"
    assert set(result.keys()) == {"in:lstm", "out:lstm", "in:fc", "out:fc"}
    # out:lstm is the first element of the LSTM's (output, (h, c)) tuple: [5, 7, 32].
    assert result["out:lstm"].count == 3 * 5 * 7 * 32
    assert result["in:lstm"].count == 3 * 5 * 7 * 8
    assert -1.0 <= result["out:lstm"].min and result["out:lstm"].max <= 1.0  # tanh-bounded
    # The same model in graph mode: the LSTM's tuple output is observed via its getitem.
    graph = calibrate(model, data, backend=GRAPH)
    assert {"in:lstm", "in:fc", "node:getitem", "node:fc"} <= set(graph.keys())
    assert graph["node:getitem"].count == result["out:lstm"].count
    assert graph["in:lstm"].max == result["in:lstm"].max


@pytest.mark.parametrize("backend", [GRAPH, MODULE], ids=["graph", "module"])
def test_model_left_untouched(backend: Backend) -> None:
    model = _cnn()
    model.train()
    model.bn1.eval()  # mixed flags must come back as they were, not all-train
    flags = {n: m.training for n, m in model.named_modules()}
    before = _snapshot(model)
    calibrate(model, _images(), backend=backend)
    _assert_untouched(model, before, flags)
    # Also after a failure half-way through.
    bad = _images(3)
    bad[2][0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError):
        calibrate(model, bad, backend=backend)
    _assert_untouched(model, before, flags)


def test_calibration_does_not_track_gradients() -> None:
    model = _cnn()
    x = _images(1)[0].requires_grad_()
    calibrate(model, [x], backend=MODULE)
    assert all(p.grad is None for p in model.parameters()) and x.grad is None


# ------------------------------------------------------------------- data and budget


class _Counting(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.reads = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.full((1, 12, 12), float(i) / self.n), i


@pytest.mark.parametrize("max_samples", [1, 7, 16, 20, 100])
def test_max_samples_honoured_exactly(max_samples: int) -> None:
    model = _cnn()
    ds = _Counting(40)
    loader = DataLoader(ds, batch_size=8)
    result = calibrate(model, loader, backend=GRAPH, max_samples=max_samples)
    used = min(max_samples, 40)
    assert result.n_samples == used
    assert result["node:x"].count == used * 144
    assert result.n_batches == -(-used // 8)
    # Iteration stops as soon as the budget is met: no extra batch is loaded.
    assert ds.reads == result.n_batches * 8
    # The truncated batch keeps the first samples (values i/40 for sample i).
    assert result["node:x"].max == pytest.approx((used - 1) / 40)


def test_max_samples_none_uses_everything() -> None:
    result = calibrate(_cnn(), _images(5, batch=3), backend=MODULE, max_samples=None)
    assert result.n_samples == 15


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda xs: DataLoader(TensorDataset(torch.cat(xs)), batch_size=8), id="dataloader"
        ),
        pytest.param(
            lambda xs: DataLoader(TensorDataset(torch.cat(xs), torch.zeros(24)), batch_size=8),
            id="dataloader-xy",
        ),
        pytest.param(lambda xs: xs, id="list-of-tensors"),
        pytest.param(lambda xs: [(x, torch.zeros(len(x))) for x in xs], id="xy-tuples"),
        pytest.param(lambda xs: [[x, torch.zeros(len(x))] for x in xs], id="xy-lists"),
        pytest.param(lambda xs: [{"x": x} for x in xs], id="dicts"),
        pytest.param(lambda xs: (x for x in xs), id="generator"),
        pytest.param(lambda xs: torch.cat(xs), id="single-tensor"),
    ],
)
@pytest.mark.parametrize("backend", [GRAPH, MODULE], ids=["graph", "module"])
def test_accepted_data_formats_give_identical_stats(
    make: Callable[[list[torch.Tensor]], Any], backend: Backend
) -> None:
    model = _cnn()
    xs = _images()
    reference = calibrate(model, xs, backend=backend)
    result = calibrate(model, make(xs), backend=backend)
    assert result.n_samples == 24
    assert result.keys() == reference.keys()
    for key in reference.keys():
        assert (result[key].min, result[key].max) == (reference[key].min, reference[key].max)
        assert result[key].count == reference[key].count


def test_iter_batches_shapes() -> None:
    x = torch.randn(10, 3)
    assert [n for *_, n in iter_batches([x, x], max_samples=13)] == [10, 3]
    args, kwargs, n = next(iter_batches([((x, x), torch.zeros(10))]))
    assert len(args) == 2 and kwargs == {} and n == 10
    args, kwargs, n = next(iter_batches({"a": x, "mask": torch.ones(10, 3)}, max_samples=4))
    assert args == () and set(kwargs) == {"a", "mask"} and kwargs["mask"].shape[0] == 4 and n == 4


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("empty", [[], (), DataLoader(TensorDataset(torch.empty(0, 1, 12, 12)))])
def test_empty_data_is_a_clear_error(empty: Any) -> None:
    with pytest.raises(CalibrationError, match="calibration data is empty"):
        calibrate(_cnn(), empty, backend=GRAPH)


@pytest.mark.parametrize("bad", [42, None, "images.npy"])
def test_non_iterable_data_names_its_type(bad: Any) -> None:
    with pytest.raises(CalibrationError, match=f"but got {type(bad).__name__}"):
        calibrate(_cnn(), bad, backend=GRAPH)
    with pytest.raises(CalibrationError, match="must be a Tensor"):
        calibrate(_cnn(), [object()], backend=GRAPH)


@pytest.mark.parametrize("backend", [GRAPH, MODULE], ids=["graph", "module"])
def test_nan_in_data(backend: Backend) -> None:
    data = _images(4)
    data[2][3, 0, 5, 5] = float("inf")
    with pytest.raises(CalibrationError, match="calibration batch 2 contains NaN/Inf"):
        calibrate(_cnn(), data, backend=backend)


class _DivByZero(nn.Module):
    """A ResidualCNN whose head divides by zero on the second half of the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _cnn()
        self.fc = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        h = h / (x.flatten(1)[:, :1] > 0).float()  # NaN/Inf where the first pixel <= 0
        return self.fc(h)


def test_nan_produced_inside_model_names_the_op_graph_mode() -> None:
    model = _cnn()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(
        CalibrationError, match=r"op 'conv1' \(Conv2d\) produced NaN/Inf on calibration batch 0"
    ):
        calibrate(model, _images(2), backend=GRAPH)
    model = _DivByZero().eval()
    x = torch.ones(4, 1, 12, 12)
    bad = x.clone()
    bad[1, 0, 0, 0] = -1.0
    with pytest.raises(
        CalibrationError,
        match=r"node 'truediv' \(call_function truediv\) produced NaN/Inf on calibration batch 1",
    ):
        calibrate(model, [x, bad], backend=GRAPH)


def test_nan_produced_inside_model_names_the_op_module_mode() -> None:
    model = _cnn()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(
        CalibrationError, match=r"op 'conv2' \(Conv2d\) produced NaN/Inf on calibration batch 0"
    ):
        calibrate(model, _images(2), backend=MODULE)
    # Produced by a non-quantizable part: the rerun names the culprit, not its consumer.
    model = _DivByZero().eval()
    bad = torch.ones(4, 1, 12, 12)
    bad[1, 0, 0, 0] = -1.0
    with pytest.raises(
        CalibrationError, match=r"forward of the model \(_DivByZero\).*input of op 'fc'"
    ):
        calibrate(model, [bad], backend=MODULE)
    _assert_untouched(model, _snapshot(model), {n: m.training for n, m in model.named_modules()})


def test_bad_max_samples_and_model() -> None:
    with pytest.raises(CalibrationError, match="`max_samples` must be a positive int"):
        calibrate(_cnn(), _images(), backend=GRAPH, max_samples=0)
    with pytest.raises(CalibrationError, match="`model` must be a torch.nn.Module"):
        calibrate(lambda x: x, _images(), backend=GRAPH)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- round trip


def test_calibration_stats_round_trip(tmp_path: Path) -> None:
    result = calibrate(_cnn(), _images(), backend=GRAPH)
    d = result.to_tensors()
    assert all(isinstance(v, torch.Tensor) for v in d.values())
    back = CalibrationStats.from_tensors(d)
    assert (back.mode, back.backend, back.n_samples, back.n_batches) == (
        "graph",
        "test-trace",
        24,
        3,
    )
    assert set(back.keys()) == set(result.keys())
    for key in result.keys():
        assert torch.equal(back[key].hist, result[key].hist)
        assert back[key].batch_mins == result[key].batch_mins
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "calib.safetensors"
    st.save_file(d, str(path))
    again = CalibrationStats.from_tensors(st.load_file(str(path)))
    assert set(again.keys()) == set(result.keys()) and again.mode == "graph"
    with pytest.raises(KeyError, match="no calibration statistics for 'in:nope'"):
        result["in:nope"]
    assert "in:fc" in result and len(result) == len(result.keys())
    assert isinstance(result["in:fc"], TensorStats)
