"""What the build self-check costs: quantize() with and without it, interleaved, medians.

PYTHONPATH=. .venv/bin/python scripts/selfcheck_cost.py
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch

import autoquant as aq

warnings.filterwarnings("ignore")


def _time(fn, rounds: int = 5) -> dict[bool, float]:
    out: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for check in (False, True):
            t = time.perf_counter()
            fn(check)
            out[check].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    from autoquant.examples import digits

    model = digits.trained_model()
    calib = digits.calibration_batches()
    stats = aq.calibrate(model, calib)
    rows.append(
        (
            "digits CNN, static int8 (stats given)",
            _time(
                lambda c: aq.quantize(
                    model, {"default": aq.static_int8()}, calib, stats=stats, self_check=c
                )
            ),
        )
    )
    try:
        from autoquant.examples import minilm

        emb = minilm.load_model()
        mcal = minilm.calibration_data()
        mstats = aq.calibrate(emb, mcal)
        rows.append(
            (
                "MiniLM, dynamic int8",
                _time(
                    lambda c: aq.quantize(emb, {"Linear": aq.dynamic_int8()}, mcal, self_check=c), 3
                ),
            )
        )
        rows.append(
            (
                "MiniLM, static int8 Linear (stats given)",
                _time(
                    lambda c: aq.quantize(
                        emb, {"Linear": aq.static_int8()}, mcal, stats=mstats, self_check=c
                    ),
                    3,
                ),
            )
        )
    except Exception as e:  # noqa: BLE001 - the extra may be missing
        print(f"MiniLM skipped: {e}")
    print("| build | quantize() without check, s | with check, s | check costs |")
    print("|---|---|---|---|")
    for name, t in rows:
        print(
            f"| {name} | {t[False]:.3f} | {t[True]:.3f} | {t[True] - t[False]:+.3f} s ({t[True] / t[False]:.2f}x) |"
        )


if __name__ == "__main__":
    main()
