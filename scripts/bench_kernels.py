"""Kernel benchmark: autoquant's x86 kernels against fp32 and torch.ao's defaults.

Run from the repository root::

    .venv/bin/python scripts/bench_kernels.py             # full run (~3-4 min on 2 cores)
    .venv/bin/python scripts/bench_kernels.py --quick     # < 1 min: fewer runs, batch 32 only
    .venv/bin/python scripts/bench_kernels.py --markdown  # GitHub markdown tables

Sections:

1. Linear 768->3072 at batch 1/32/128: fp32, autoquant dynamic / static / weight-only
   int8 / weight-only int4 (group 32, 128), torch.ao's dynamic and eager static defaults.
2. Conv2d 64->64 3x3 on 56x56 at batch 1/8: fp32, autoquant static, torch.ao eager static.
3. The digits CNN end to end (accuracy + latency): fp32 vs autoquant static int8.
4. reduce_range on this CPU: output error of static/dynamic int8 Linear with activation
   reduce_range False vs True, natively and with fbgemm forced to its AVX2 kernels
   (``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` in a child process), for realistic and worst-case
   operands.

Timing is fair on a shared, noisy machine: all candidates of one table cell group (same
threads and batch) are timed interleaved, round-robin with a rotating start, one call
per visit after one untimed call (so each timed call finds its own weights in cache);
medians and p90 over >= 20 timed calls per candidate. Each timed call goes through
``autoquant.measure.measure_latency`` (``repeats=1``) with its ``threads`` argument.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Make the script runnable from anywhere without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import autoquant  # noqa: E402
from autoquant.measure import measure_latency, size_bytes  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

SLOWER = "SLOWER than fp32"


# ----------------------------------------------------------------------------- output


def log(msg: str) -> None:
    """Progress to stderr, so stdout stays the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append(["" if c is None else str(c) for c in cells])

    def render(self, markdown: bool) -> str:
        out = []
        if markdown:
            out.append(f"#### {self.title}\n")
            out.append("| " + " | ".join(self.columns) + " |")
            out.append("|" + "|".join("---" for _ in self.columns) + "|")
            for r in self.rows:
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
            if self.notes:
                out.append("")
                out.extend(f"- {n}" for n in self.notes)
        else:
            out.append(self.title)
            out.append("=" * len(self.title))
            widths = [
                max(len(self.columns[i]), *(len(r[i]) for r in self.rows))
                if self.rows
                else len(self.columns[i])
                for i in range(len(self.columns))
            ]
            out.append(
                "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)).rstrip()
            )
            out.append("  ".join("-" * w for w in widths))
            for r in self.rows:
                out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if self.notes:
                out.append("")
                out.extend(f"  * {n}" for n in self.notes)
        return "\n".join(out) + "\n"


def fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}"


def fmt_x(v: float) -> str:
    return f"{v:.2f}x"


def fmt_err(v: float | None) -> str:
    return "" if v is None else f"{v:.2e}"


def fmt_kib(n: int) -> str:
    return f"{n / 1024:.0f}" if n >= 10 * 1024 else f"{n / 1024:.1f}"


# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    median_ms: float
    p90_ms: float
    runs: int


SLOW_MS = 50.0  # candidates slower than this skip the per-visit warm call


def bench_interleaved(
    cands: dict[str, tuple[nn.Module, Any]],
    threads: int,
    rounds: int,
    warmup: int,
    slow_rounds: int = 20,
) -> dict[str, Timing]:
    """Time every candidate, interleaved round-robin (rotating start), median / p90.

    Every timed call is ``measure_latency(model, x, threads=threads, warmup=1,
    repeats=1)``: the untimed call right before it re-warms that candidate's caches
    after the others ran. Candidates slower than ``SLOW_MS`` (e.g. a kernel's scalar
    fallback) skip that warm call (``warmup=0``; a cache refill is noise at that scale)
    and are timed in the first ``slow_rounds`` rounds only, still interleaved.
    """
    names = list(cands)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)  # so measure_latency's set/restore is a no-op
    slow: set[str] = set()
    try:
        for name in names:  # initial warm-up (allocator, packing caches, thread pool)
            m, x = cands[name]
            st = measure_latency(m, x, threads=threads, warmup=1, repeats=1)
            if st.median_ms > SLOW_MS:
                slow.add(name)
            else:
                measure_latency(m, x, threads=threads, warmup=warmup, repeats=1)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if name in slow and r >= slow_rounds:
                    continue
                m, x = cands[name]
                st = measure_latency(
                    m, x, threads=threads, warmup=0 if name in slow else 1, repeats=1
                )
                samples[name].append(st.median_ms)
    finally:
        torch.set_num_threads(prev)
    out = {}
    for name, t in samples.items():
        a = np.asarray(t)
        out[name] = Timing(float(np.percentile(a, 50)), float(np.percentile(a, 90)), len(a))
    return out


# ----------------------------------------------------------------------------- helpers


def rel_err(model: nn.Module, x: torch.Tensor, y_ref: torch.Tensor) -> float:
    with torch.inference_mode():
        y = model(x).float()
    return float((y - y_ref).norm() / y_ref.norm())


def ao_dynamic(linear: nn.Linear) -> nn.Module:
    """torch.ao's default dynamic int8 Linear (per-tensor weights, reduce_range=True)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(
        nn.Sequential(copy.deepcopy(linear)).eval(), {nn.Linear}, dtype=torch.qint8
    )


def ao_eager_static(op: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """torch.ao eager static with the default x86 qconfig (histogram, reduce_range=True)."""
    import torch.ao.quantization as tq

    m = nn.Sequential(tq.QuantStub(), copy.deepcopy(op), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    tq.prepare(m, inplace=True)
    with torch.inference_mode():
        for c in calib:
            m(c)
    tq.convert(m, inplace=True)
    return m.eval()


def ao_kernel_label(m: nn.Module) -> str:
    mods = [type(c).__name__ for c in m.modules() if type(c).__module__.startswith("torch.ao")]
    return "torch.ao " + "+".join(mods)


def ours_label(q: nn.Module) -> tuple[str, bool]:
    info = autoquant.quant_info(q)
    kernels = sorted(set(info.kernels.values()))
    return "; ".join(kernels) + f" [mode={info.mode}]", bool(info.simulated)


class Bf16Act(nn.Module):
    """Diagnostic: the weight-only kernel autoquant uses, fed bf16 activations.

    Reads the buffers of autoquant's module (so its size counts the same bytes); not part
    of autoquant. Shows whether a slow weight-only row is the kernel's fp32 path.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.int4 = hasattr(inner, "_scales_and_zeros")
        if self.int4:
            self._sz = inner._scales_and_zeros.bfloat16()
        else:
            self._scale = inner.weight_scale.bfloat16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.inner
        xb = x.reshape(-1, x.shape[-1]).bfloat16().contiguous()
        if self.int4:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, m._packed, m.w_group_size, self._sz)
            y = y[:, : m.out_features]
        else:
            y = torch.ops.aten._weight_int8pack_mm(xb, m.weight_int, self._scale)
        y = y.float()
        if m.bias is not None:
            y = y + m.bias
        return y.reshape(*x.shape[:-1], m.out_features)


@dataclass
class Variant:
    name: str
    model: nn.Module
    config: str
    kernel: str
    scheme: str | None = None  # same-scheme group for the ours/torch.ao ratio
    ours: bool = False
    simulated: bool = False
    diagnostic: bool = False


def variants_table(title: str, variants: list[Variant]) -> Table:
    t = Table(title, ["variant", "config", "kernel (quant_info / module)", "simulated?"])
    for v in variants:
        t.add(v.name, v.config, v.kernel, "YES (fake-quant)" if v.simulated else "no")
    t.notes.append(
        "aq = autoquant.quantize on the x86 backend; torch.ao = torch.ao.quantization's "
        "defaults; diag = a raw aten call on autoquant's packed weights, outside the "
        "autoquant API, to show what the same kernel does with bf16 activations."
    )
    return t


def timing_table(
    title: str,
    variants: list[Variant],
    inputs: dict[int, torch.Tensor],
    args: argparse.Namespace,
    rounds: int | None = None,
    fp32_name: str = "fp32",
) -> Table:
    rounds = args.rounds if rounds is None else rounds
    by_name = {v.name: v for v in variants}
    sizes = {v.name: size_bytes(v.model) for v in variants}
    t = Table(
        title,
        [
            "thr",
            "batch",
            "variant",
            "median ms",
            "p90 ms",
            "runs",
            "speedup vs fp32",
            "ours/torch.ao",
            "rel. err",
            "size KiB",
            "size vs fp32",
            "note",
        ],
    )
    errors: dict[tuple[str, int], float | None] = {}
    for b, x in inputs.items():
        with torch.inference_mode():
            y_ref = by_name[fp32_name].model(x).float()
        for v in variants:
            errors[(v.name, b)] = None if v.name == fp32_name else rel_err(v.model, x, y_ref)
    for th in args.threads:
        for b, x in inputs.items():
            log(f"  {title.split(':')[0]}: threads={th} batch={b} ({len(variants)} candidates)")
            tim = bench_interleaved(
                {v.name: (v.model, x) for v in variants},
                th,
                rounds,
                args.warmup,
                args.slow_rounds,
            )
            base = tim[fp32_name].median_ms
            ao_by_scheme = {
                v.scheme: tim[v.name].median_ms for v in variants if v.scheme and not v.ours
            }
            for v in variants:
                tm = tim[v.name]
                ratio = ""
                if v.ours and v.scheme in ao_by_scheme:
                    ratio = fmt_x(tm.median_ms / ao_by_scheme[v.scheme])
                notes = []
                if v.name != fp32_name and tm.median_ms > base:
                    notes.append(SLOWER)
                if v.simulated:
                    notes.append("SIMULATED (not a real kernel)")
                if v.diagnostic:
                    notes.append("diagnostic, not autoquant")
                t.add(
                    th,
                    b,
                    v.name,
                    fmt_ms(tm.median_ms),
                    fmt_ms(tm.p90_ms),
                    tm.runs,
                    "" if v.name == fp32_name else fmt_x(base / tm.median_ms),
                    ratio,
                    fmt_err(errors[(v.name, b)]),
                    fmt_kib(sizes[v.name]),
                    ""
                    if v.name == fp32_name
                    else f"{sizes[fp32_name] / sizes[v.name]:.2f}x smaller",
                    "; ".join(notes),
                )
    t.notes.append(
        f"median / p90 of {rounds} interleaved timed calls per candidate (each right after "
        f"one untimed call); candidates slower than {SLOW_MS:.0f} ms get {args.slow_rounds} "
        "timed calls without the extra untimed call (column runs); speedup = fp32 median / variant median; ours/torch.ao < 1 means "
        "autoquant is faster than torch.ao's default for the same approach."
    )
    if 2 in args.threads and oversubscribed():
        t.notes.append(
            "threads=2 rows: the machine was oversubscribed (load average above the core "
            "count), so their medians mostly measure OS time slices (values near multiples "
            "of 4 ms), not kernels; compare threads=1 rows."
        )
    t.notes.append(
        "rel. err = ||y - y_fp32|| / ||y_fp32|| on the timed input batch; size = "
        "autoquant.size_bytes of the whole model (weights, bias, scales, zero points)."
    )
    return t


# ----------------------------------------------------------------------------- sections


def section_linear(args: argparse.Namespace, tables: list[Table]) -> None:
    log("section 1: Linear 768->3072")
    torch.manual_seed(0)
    linear = nn.Linear(768, 3072).eval()
    fp32 = nn.Sequential(linear).eval()
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(20, 768, generator=gen) for _ in range(5)]  # 100 samples
    variants = [Variant("fp32", fp32, "float32", "aten::linear (fp32)")]

    def ours(name: str, rules: dict, cfg_text: str, scheme: str | None, calib_data=None):
        q = autoquant.quantize(fp32, rules, calib_data)
        kernel, sim = ours_label(q)
        variants.append(Variant(name, q, cfg_text, kernel, scheme, ours=True, simulated=sim))

    ours(
        "aq dynamic int8",
        {"Linear": autoquant.dynamic_int8()},
        "w int8 sym per-channel, a uint8 asym per-call, reduce_range=False",
        "dynamic",
    )
    ao_dyn = ao_dynamic(linear)
    variants.append(
        Variant(
            "torch.ao dynamic int8",
            ao_dyn,
            "quantize_dynamic default: w int8 per-tensor minmax, a reduce_range=True",
            ao_kernel_label(ao_dyn),
            "dynamic",
        )
    )
    ours(
        "aq static int8",
        {"default": autoquant.static_int8()},
        "w int8 sym per-channel, a uint8 asym minmax, reduce_range=False; 100 N(0,1) calib",
        "static",
        calib,
    )
    ao_st = ao_eager_static(linear, calib)
    variants.append(
        Variant(
            "torch.ao static int8",
            ao_st,
            "eager, get_default_qconfig('x86'): histogram a, reduce_range=True, per-channel w",
            ao_kernel_label(ao_st),
            "static",
        )
    )
    ours(
        "aq weight-only int8",
        {"Linear": autoquant.weight_only("int8")},
        "w int8 sym per-channel, fp32 activations",
        None,
    )
    for g in (32, 128):
        ours(
            f"aq weight-only int4 g{g}",
            {"Linear": autoquant.weight_only("int4", group_size=g)},
            f"w int4 asym per-group {g}, fp32 activations",
            None,
        )
    by_name = {v.name: v for v in variants}
    variants.append(
        Variant(
            "diag: wo int8 kernel, bf16 act",
            Bf16Act(by_name["aq weight-only int8"].model[0]),
            "aq weight-only int8's weights; x.bfloat16() -> aten op -> float()",
            "aten._weight_int8pack_mm (bf16 activations)",
            diagnostic=True,
        )
    )
    variants.append(
        Variant(
            "diag: wo int4 g32 kernel, bf16 act",
            Bf16Act(by_name["aq weight-only int4 g32"].model[0]),
            "aq weight-only int4 g32's packed weights; x.bfloat16() -> aten op -> float()",
            "aten._weight_int4pack_mm_for_cpu (bf16 activations)",
            diagnostic=True,
        )
    )
    tables.append(variants_table("1a. Linear 768->3072: variants", variants))
    batches = [32] if args.quick else [1, 32, 128]
    gen = torch.Generator().manual_seed(2)
    inputs = {b: torch.randn(b, 768, generator=gen) for b in batches}
    tables.append(
        timing_table(
            "1b. Linear 768->3072 (x ~ N(0,1)): latency, error, size",
            variants,
            inputs,
            args,
        )
    )


def section_conv(args: argparse.Namespace, tables: list[Table]) -> None:
    log("section 2: Conv2d 64->64 3x3")
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1).eval()
    fp32 = nn.Sequential(conv).eval()
    gen = torch.Generator().manual_seed(3)
    calib = [torch.randn(10, 64, 56, 56, generator=gen) for _ in range(10)]  # 100 samples
    q = autoquant.quantize(fp32, {"default": autoquant.static_int8()}, calib)
    kernel, sim = ours_label(q)
    ao_st = ao_eager_static(conv, calib)
    variants = [
        Variant("fp32", fp32, "float32", "aten::conv2d (fp32)"),
        Variant(
            "aq static int8",
            q,
            "w int8 sym per-channel, a uint8 asym minmax, reduce_range=False; 100 N(0,1) calib",
            kernel,
            "static",
            ours=True,
            simulated=sim,
        ),
        Variant(
            "torch.ao static int8",
            ao_st,
            "eager, get_default_qconfig('x86'): histogram a, reduce_range=True, per-channel w",
            ao_kernel_label(ao_st),
            "static",
        ),
    ]
    t = variants_table("2a. Conv2d 64->64 3x3 pad 1, 56x56: variants", variants)
    log("  checking which library runs the quantized conv (ONEDNN_VERBOSE child)")
    t.notes.append(
        "actual dispatch of autoquant's static ops on this CPU (child run with "
        f"ONEDNN_VERBOSE=1): {onednn_dispatch()}"
    )
    tables.append(t)
    batches = [1] if args.quick else [1, 8]
    gen = torch.Generator().manual_seed(4)
    inputs = {b: torch.randn(b, 64, 56, 56, generator=gen) for b in batches}
    tables.append(
        timing_table(
            "2b. Conv2d 64->64 3x3 pad 1, 56x56 (x ~ N(0,1)): latency, error, size",
            variants,
            inputs,
            args,
            args.conv_rounds,
        )
    )


def _onednn_child() -> None:
    """Child process (ONEDNN_VERBOSE=1): run autoquant's static conv and Linear once each."""
    for kind in ("conv", "linear"):
        torch.manual_seed(0)
        if kind == "conv":
            m, x = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1)).eval(), torch.randn(1, 64, 56, 56)
        else:
            m, x = nn.Sequential(nn.Linear(768, 3072)).eval(), torch.randn(4, 768)
        q = autoquant.quantize(m, {"default": autoquant.static_int8()}, [x])
        print(f"=== {kind}", flush=True)
        with torch.inference_mode():
            q(x)
        print("=== end", flush=True)


def onednn_dispatch() -> str:
    """Which library really runs autoquant's static conv / Linear here (oneDNN verbose log)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_onednn-child"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except Exception as e:  # noqa: BLE001
        return f"dispatch check failed: {e!r}"
    found: dict[str, str] = {}
    current = None
    for line in proc.stdout.splitlines():
        if line.startswith("=== "):
            current = None if line == "=== end" else line[4:]
            found.setdefault(current or "", "")
        elif current and "onednn_verbose" in line and ",exec," in line:
            parts = line.split(",")
            i = parts.index("exec")
            found[current] = f"oneDNN {parts[i + 2]} {parts[i + 3]}"
    if proc.returncode != 0 or not found:
        return f"dispatch check failed (rc={proc.returncode})"
    return "; ".join(
        f"{k}: {v or 'no oneDNN primitive executed (fbgemm)'}" for k, v in found.items() if k
    )


def section_digits(args: argparse.Namespace, tables: list[Table]) -> None:
    log("section 3: digits CNN")
    from autoquant.examples import digits

    data = digits.load_data()
    model = digits.trained_model().eval()
    q = autoquant.quantize(
        model, {"default": autoquant.static_int8()}, digits.calibration_batches()
    )
    info = autoquant.quant_info(q)
    x_test, y_test = data["x_test"], data["y_test"]
    acc = {
        "fp32": digits.accuracy(model, x_test, y_test),
        "aq static int8": digits.accuracy(q, x_test, y_test),
    }
    with torch.inference_mode():
        y_ref = model(x_test)
        y_q = q(x_test)
    logit_err = float((y_q - y_ref).norm() / y_ref.norm())
    agree = float((y_q.argmax(1) == y_ref.argmax(1)).float().mean())
    sizes = {"fp32": size_bytes(model), "aq static int8": size_bytes(q)}
    t = Table(
        f"3. Digits CNN end to end ({len(y_test)} test images)",
        [
            "thr",
            "batch",
            "variant",
            "accuracy",
            "median ms",
            "p90 ms",
            "speedup vs fp32",
            "size KiB",
            "size vs fp32",
            "note",
        ],
    )
    cands = {"fp32": model, "aq static int8": q}
    for th in args.threads:
        for b in (64, 1):
            log(f"  digits: threads={th} batch={b}")
            tim = bench_interleaved(
                {n: (m, x_test[:b]) for n, m in cands.items()},
                th,
                args.rounds,
                args.warmup,
                args.slow_rounds,
            )
            base = tim["fp32"].median_ms
            for n in cands:
                tm = tim[n]
                slower = n != "fp32" and tm.median_ms > base
                t.add(
                    th,
                    b,
                    n,
                    f"{acc[n]:.4f}",
                    fmt_ms(tm.median_ms),
                    fmt_ms(tm.p90_ms),
                    "" if n == "fp32" else fmt_x(base / tm.median_ms),
                    fmt_kib(sizes[n]),
                    "" if n == "fp32" else f"{sizes['fp32'] / sizes[n]:.2f}x smaller",
                    SLOWER if slower else "",
                )
    t.notes.append(
        f"static int8 build: mode={info.mode}, simulated ops: {list(info.simulated) or 'none'}; "
        + ", ".join(f"{k}: {v}" for k, v in info.kernels.items())
    )
    t.notes.append(
        f"logits rel. err vs fp32 {logit_err:.2e}; top-1 agreement with fp32 {agree:.4f}; "
        f"calibration: digits.calibration_batches() (100 training images); "
        f"median / p90 of {args.rounds} interleaved timed calls."
    )
    if info.notes:
        t.notes.extend(f"build note: {n}" for n in info.notes)
    tables.append(t)


# --- section 4: reduce_range -----------------------------------------------------------

RR_CASES = [
    ("realistic: x~N(0,1), default-init W", "normal", "default"),
    ("ReLU-like: x~U[0,1], W~U[-10,10]", "uniform01", "uniform_sym"),
    ("worst: x~U[0,1], W~U[5,10] (all >0)", "uniform01", "uniform_pos"),
]


def _rr_case_data(xkind: str, wkind: str, seed: int) -> tuple[nn.Module, list, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = nn.Linear(768, 3072).eval()
    with torch.no_grad():
        if wkind == "uniform_sym":
            lin.weight.copy_(torch.rand(3072, 768, generator=gen) * 20 - 10)
        elif wkind == "uniform_pos":
            lin.weight.copy_(torch.rand(3072, 768, generator=gen) * 5 + 5)

    def draw(n: int) -> torch.Tensor:
        if xkind == "normal":
            return torch.randn(n, 768, generator=gen)
        return torch.rand(n, 768, generator=gen)

    calib = [draw(20) for _ in range(5)]
    return nn.Sequential(lin).eval(), calib, draw(32)


def rr_errors() -> dict[str, float]:
    """Relative output errors for section 4 on whatever fbgemm ISA this process uses."""
    from autoquant import calibrate

    out: dict[str, float] = {}
    for ci, (_, xkind, wkind) in enumerate(RR_CASES):
        model, calib, x = _rr_case_data(xkind, wkind, 100 + ci)
        with torch.inference_mode():
            y_ref = model(x)
        stats = calibrate(model, calib)
        for rr in (False, True):
            for approach in ("dynamic", "static"):
                cfg = (
                    autoquant.dynamic_int8(reduce_range=rr)
                    if approach == "dynamic"
                    else autoquant.static_int8(reduce_range=rr)
                )
                rules = {"Linear": cfg}
                kw = {"stats": stats} if approach == "static" else {}
                q = autoquant.quantize(model, rules, **kw)
                key = f"{ci}|{approach}|{rr}"
                out[key + "|kernel"] = rel_err(q, x, y_ref)
                out[key + "|kernel_simulated"] = float(bool(autoquant.quant_info(q).simulated))
                s = autoquant.quantize(model, rules, backend="simulated", **kw)
                with torch.inference_mode():
                    y_s = s(x)
                    if approach == "static":
                        # The static kernel requantizes its output (quint8 with the
                        # calibrated output qparams); do the same to the float result.
                        qlin = q.get_submodule("0")
                        y_s = torch.fake_quantize_per_tensor_affine(
                            y_s, float(qlin.scale), int(qlin.zero_point), 0, 255
                        )
                out[key + "|fakequant"] = float((y_s - y_ref).norm() / y_ref.norm())
    return out


def section_reduce_range(args: argparse.Namespace, tables: list[Table]) -> None:
    # The AVX2 child runs while this process computes the native numbers (no timing here).
    log("section 4: reduce_range (native + child process with FBGEMM_ENABLE_INSTRUCTIONS=AVX2)")
    env = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
    avx2: dict[str, float] | None = None
    avx2_problem = ""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--_rr-child"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        native = rr_errors()
    finally:
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    if proc.returncode == 0:
        try:
            avx2 = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as e:
            avx2_problem = f"child output unreadable: {e!r}"
    else:
        avx2_problem = f"child failed (rc={proc.returncode}): {stderr.strip()[-300:]}"
    t = Table(
        "4. reduce_range on this CPU: Linear 768->3072 int8, batch 32, output rel. err",
        [
            "operands",
            "approach",
            "act reduce_range",
            "err native fbgemm",
            "err fbgemm forced AVX2",
            "err exact int math (fake-quant)",
            "note",
        ],
    )
    for ci, (label, _, _) in enumerate(RR_CASES):
        for approach in ("dynamic", "static"):
            for rr in (False, True):
                key = f"{ci}|{approach}|{rr}"
                nat = native[key + "|kernel"]
                a2 = None if avx2 is None else avx2[key + "|kernel"]
                fq = native[key + "|fakequant"]
                notes = []
                if native[key + "|kernel_simulated"]:
                    notes.append("kernel is SIMULATED")
                if nat > 3 * fq and nat - fq > 1e-3:
                    notes.append(f"native {nat / fq:.1f}x fake-quant")
                if a2 is not None and a2 > 3 * nat and a2 - nat > 1e-3:
                    notes.append(f"AVX2 SATURATES ({a2 / nat:.0f}x native)")
                t.add(
                    label,
                    approach,
                    rr,
                    fmt_err(nat),
                    fmt_err(a2) if a2 is not None else "n/a",
                    fmt_err(fq),
                    "; ".join(notes),
                )
    t.notes.append(
        "native = fbgemm's own ISA choice on this CPU (see header: AVX512-VNNI, if present, "
        "accumulates u8*s8 products in int32 and cannot saturate). forced AVX2 = the same "
        "script in a child process with FBGEMM_ENABLE_INSTRUCTIONS=AVX2, i.e. what a CPU "
        "without VNNI runs (vpmaddubsw sums pairs of u8*s8 products in saturating int16)."
    )
    t.notes.append(
        "exact int math = autoquant's 'simulated' backend (same qparams, float math, so no "
        "saturation); for static, its output is also requantized with the kernel's output "
        "scale / zero point, as the quint8 kernel does. native == exact means no saturation."
    )
    t.notes.append(
        "W magnitudes do not matter by themselves (per-channel scales map each row's max to "
        "127); what saturates is pairs of same-sign near-max weights times near-255 inputs."
    )
    if avx2_problem:
        t.notes.append("AVX2 child: " + avx2_problem)
    tables.append(t)


# ----------------------------------------------------------------------------- header


def oversubscribed() -> bool:
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5
    except OSError:
        return False


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def header(args: argparse.Namespace, markdown: bool) -> str:
    cpu = "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == "unknown":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        cpu = platform.processor() or "unknown"
    isa = [
        f
        for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
        if f in flags
    ]
    vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: None)()
    lines = [
        f"torch {torch.__version__}; torch.backends.quantized.engine = "
        f"{torch.backends.quantized.engine} (supported: {torch.backends.quantized.supported_engines})",
        f"CPU: {cpu}; {os.cpu_count()} logical CPUs; ISA flags: {', '.join(isa) or 'none'}; "
        f"torch cpu capability {torch.backends.cpu.get_cpu_capability()}; "
        f"torch.cpu._is_vnni_supported() = {vnni}",
        f"threads measured: {args.threads} (torch default {torch.get_num_threads()}); "
        f"timed calls per candidate: {args.rounds} (conv: {args.conv_rounds}; candidates "
        f"> {SLOW_MS:.0f} ms: {args.slow_rounds}), interleaved; "
        f"mode: {'quick' if args.quick else 'full'}",
        f"load average at start (1/5/15 min): {loadavg()} on {os.cpu_count()} CPUs"
        + (
            " -- OVERSUBSCRIBED: other processes hold the cores, so threads=2 rows mostly "
            "measure scheduler time slices (medians near multiples of ~4 ms), not kernels"
            if oversubscribed()
            else ""
        ),
        f"FBGEMM_ENABLE_INSTRUCTIONS in this process: "
        f"{os.environ.get('FBGEMM_ENABLE_INSTRUCTIONS', '(unset: fbgemm picks the best ISA)')}",
    ]
    if markdown:
        return "### bench_kernels\n\n" + "\n".join(f"- {ln}" for ln in lines) + "\n"
    return "bench_kernels\n" + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer runs, Linear batch 32 only")
    p.add_argument("--markdown", action="store_true", help="GitHub markdown tables")
    p.add_argument("--rounds", type=int, default=None, help="timed calls per candidate")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--sections", default="1234", help="which sections to run, e.g. 14 (default 1234)"
    )
    p.add_argument("--_rr-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_onednn-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._rr_child:
        print(json.dumps(rr_errors()))
        return
    if args._onednn_child:
        _onednn_child()
        return
    if args.rounds is None:
        args.rounds = 15 if args.quick else 40
    args.slow_rounds = min(args.rounds, 8 if args.quick else 20)
    args.conv_rounds = args.rounds if args.quick else max(20, args.rounds * 2 // 3)
    args.warmup = 3 if args.quick else 5

    t0 = time.perf_counter()
    print(header(args, args.markdown))
    steps: list[tuple[str, Callable[[argparse.Namespace, list[Table]], None]]] = [
        ("1", section_linear),
        ("2", section_conv),
        ("3", section_digits),
        ("4", section_reduce_range),
    ]
    for key, fn in steps:
        if key not in args.sections:
            continue
        tables: list[Table] = []
        try:
            fn(args, tables)
        except Exception as e:  # noqa: BLE001 - one failing section must not hide the rest
            import traceback

            log(f"section {key} FAILED: {e!r}")
            print(f"section {key} FAILED: {type(e).__name__}: {e}\n")
            traceback.print_exc(file=sys.stderr)
        for t in tables:
            print(t.render(args.markdown), flush=True)
    took = time.perf_counter() - t0
    end = f"total {took:.0f} s; load average at end (1/5/15 min): {loadavg()}"
    print(f"_{end}_" if args.markdown else end)
    log(f"done in {took:.0f}s")


if __name__ == "__main__":
    main()
