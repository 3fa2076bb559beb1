"""Issue 10: old eager kernels vs the plain-tensor kernels, eager and compiled, vs PT2E.

Side by side in one run, 1 thread, medians of interleaved calls (round robin, rotating
start), batch 1 and 64:

* MiniLM (all-MiniLM-L6-v2, seq ~30), the 36 Linear dynamic int8 (full range,
  per-channel weights);
* the Fashion-MNIST CNN, every Conv2d/Linear static int8 (minmax, per-channel weights).

Candidates: fp32 eager and compiled (Inductor, freezing); the old eager kernels (the
torch.ao/fbgemm kernels autoquant used before issue 10: ``quantized::linear_dynamic``
modules for MiniLM, torch.ao FX convert for the CNN); autoquant's plain-tensor kernels
eager (``quantize``) and compiled (``deploy``); torchao's PT2E + X86InductorQuantizer
(default static config, every Linear/Conv) + torch.compile (freezing). Quality next to
each: mean cosine to fp32 (MiniLM, the batch-64 inputs) / accuracy on 640 test images.

    PYTHONPATH=. .venv/bin/python scripts/bench_plain_kernels.py [--rounds 20] [--only minilm]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import autoquant as aq

warnings.filterwarnings("ignore")


def _freezing_compile(model: nn.Module) -> Callable[..., Any]:
    compiled = torch.compile(model, dynamic=False)

    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return run


class _FbgemmDynamicLinear(nn.Module):
    """autoquant's DynamicLinear before issue 10: fbgemm's quantized::linear_dynamic."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        w = lin.weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        qw = torch.quantize_per_channel(
            w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
        )
        self.packed = torch.ops.quantized.linear_prepack(qw, lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, False)


def _old_dynamic(model: nn.Module) -> nn.Module:
    old = copy.deepcopy(model)
    for name, mod in list(old.named_modules()):
        if isinstance(mod, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(old.get_submodule(parent) if parent else old, child, _FbgemmDynamicLinear(mod))
    return old


def _old_static_fx(model: nn.Module, calib: list[Any]) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(
        copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib[0],)
    )
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert_fx(prepared)


def _pt2e(model: nn.Module, example_kwargs: dict, calib: list[dict]) -> Callable[..., Any]:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    auto = torch.export.Dim.AUTO
    dims = {k: {0: auto, 1: auto} for k in example_kwargs}
    exported = torch.export.export(
        copy.deepcopy(model).eval(), (), example_kwargs, dynamic_shapes=dims
    ).module()
    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config()
    )
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for kw in calib:
            prepared(**kw)
    converted = convert_pt2e(prepared)
    return converted, _freezing_compile(converted)


def _time(cands: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    for fn in cands.values():  # compile / warm up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in cands}
    names = list(cands)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            cands[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _table(
    title: str, rows: dict[str, dict[int, float]], quality: dict[str, str], ref: str
) -> None:
    print(f"\n### {title}\n")
    print("| model | quality | batch 1 ms | batch 64 ms | vs PT2E (b1 / b64) |")
    print("|---|---|---|---|---|")
    for name, t in rows.items():
        ratio = f"{t[1] / rows[ref][1]:.2f} / {t[64] / rows[ref][64]:.2f}"
        print(f"| {name} | {quality.get(name, '')} | {t[1]:.2f} | {t[64]:.1f} | {ratio} |")


def bench_minilm(rounds: int) -> None:
    from autoquant.examples import minilm

    tok = minilm.load_tokenizer()
    model = minilm.load_model()
    calib = minilm.calibration_batches(tok, n=40, batch_size=20)
    inputs = {b: minilm.example_inputs(tok, batch_size=b) for b in (1, 64)}
    plan = {"Linear": aq.dynamic_int8()}
    new_eager = aq.quantize(model, plan)
    assert len(aq.quant_info(new_eager).kernels) == 36
    new_compiled = aq.deploy(aq.quantize(model, plan), dynamic=False)
    old = _old_dynamic(model).eval()
    static = aq.quantize(model, {"Linear": aq.static_int8()}, calib)
    static_mode = aq.quant_info(static).mode
    aq.deploy(static, dynamic=False)
    fp32_c = _freezing_compile(model)
    pt2e_eager, pt2e = _pt2e(model, inputs[64], calib)
    models: dict[str, Callable[..., Any]] = {
        "fp32 eager": model,
        "fp32 compiled": fp32_c,
        "old eager (fbgemm quantized::linear_dynamic)": old,
        "new eager (plain tensors)": new_eager,
        "new compiled (aq.deploy)": new_compiled,
        f"new compiled, static int8 instead ({static_mode} mode)": static,
        "PT2E + X86InductorQuantizer + compile": pt2e,
    }
    quality = {}
    with torch.no_grad():
        ref = model(**inputs[64])
        for name, m in models.items():
            y = (pt2e_eager if name.startswith("PT2E") else m)(**inputs[64])
            cos = torch.nn.functional.cosine_similarity(y.float(), ref, dim=-1).mean()
            quality[name] = f"cos {float(cos):.4f}"
    rows: dict[str, dict[int, float]] = {k: {} for k in models}
    for b in (1, 64):
        with torch.no_grad():
            res = _time(
                {k: (lambda m=m, b=b: m(**inputs[b])) for k, m in models.items()},
                rounds if b == 1 else max(5, rounds // 4),
            )
        for k, v in res.items():
            rows[k][b] = v
    _table(
        "MiniLM, 36 Linear dynamic int8 (PT2E: static int8)",
        rows,
        quality,
        "PT2E + X86InductorQuantizer + compile",
    )


def bench_fashion(rounds: int) -> None:
    from autoquant.examples import fashion_mnist as fm

    model = fm.trained_model(threads=1).eval()
    calib = fm.calibration_batches(n=100, batch_size=25)
    test = fm._test_set()
    x_acc, y_acc = test["x_test"][:640], test["y_test"][:640]
    inputs = {1: x_acc[:1].contiguous(), 64: x_acc[:64].contiguous()}
    plan = {"Conv2d": aq.static_int8(), "Linear": aq.static_int8()}
    new_eager = aq.quantize(model, plan, calib)
    new_compiled = aq.deploy(aq.quantize(model, plan, calib), dynamic=False)
    old = _old_static_fx(model, calib)
    fp32_c = _freezing_compile(model)
    pt2e_eager, pt2e = _pt2e_positional(model, inputs[64], calib)
    models = {
        "fp32 eager": model,
        "fp32 compiled": fp32_c,
        "old eager (torch.ao FX convert, fbgemm/oneDNN)": old,
        "new eager (plain tensors)": new_eager,
        "new compiled (aq.deploy)": new_compiled,
        "PT2E + X86InductorQuantizer + compile": pt2e,
    }
    quality = {}
    with torch.no_grad():
        for name, m in models.items():
            f = pt2e_eager if name.startswith("PT2E") else m
            pred = torch.cat([f(x_acc[i : i + 64]).argmax(1) for i in range(0, 640, 64)])
            quality[name] = f"acc {float((pred == y_acc).float().mean()):.4f}"
    rows: dict[str, dict[int, float]] = {k: {} for k in models}
    for b in (1, 64):
        with torch.no_grad():
            res = _time({k: (lambda m=m, b=b: m(inputs[b])) for k, m in models.items()}, rounds)
        for k, v in res.items():
            rows[k][b] = v
    _table(
        "Fashion-MNIST CNN, every Conv2d/Linear static int8",
        rows,
        quality,
        "PT2E + X86InductorQuantizer + compile",
    )


def _pt2e_positional(model: nn.Module, example: torch.Tensor, calib: list[torch.Tensor]):
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dims = ({0: torch.export.Dim.AUTO},)
    exported = torch.export.export(
        copy.deepcopy(model).eval(), (example,), dynamic_shapes=dims
    ).module()
    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config()
    )
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    converted = convert_pt2e(prepared)
    return converted, _freezing_compile(converted)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", choices=["minilm", "fashion"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load: {os.getloadavg()}")
    if args.only in (None, "fashion"):
        bench_fashion(args.rounds)
    if args.only in (None, "minilm"):
        bench_minilm(args.rounds)
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
