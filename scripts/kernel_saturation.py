"""Which x86 int8 kernels accumulate u8 x s8 pairs in int16 (and so saturate)?

Feeds each real static/dynamic kernel its worst case: every activation at the top of its
integer range (255, or 127 with reduce_range) and every weight at +127, so each pair of
products sums to 2*255*127 = 64770 > 32767 when a kernel adds pairs in int16 before
widening. The exact result is known in closed form; the table gives the kernel's relative
error against it. Run on the CPU at hand:

    PYTHONPATH=. .venv/bin/python scripts/kernel_saturation.py
"""

from __future__ import annotations

import warnings

import torch

from autoquant.backends._saturation import probe_kernels

warnings.filterwarnings("ignore")


def main() -> None:
    torch.set_num_threads(1)
    print(
        "| kernel | shape | activations | max error (output steps; exact max = 100) | saturates |"
    )
    print("|---|---|---|---|---|")
    for row in probe_kernels():
        print(
            f"| {row.kernel} | {row.shape} | {row.activation} | {row.steps:.3g} "
            f"| {'**yes**' if row.saturates else 'no'} |"
        )


if __name__ == "__main__":
    main()
