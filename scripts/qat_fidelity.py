"""Does the QAT model's fake-quant forward predict the converted integer model?

On the Fashion-MNIST MobileNet with the real-kernel plan of experiments/qat (x86 int8,
7-bit per-tensor weights, 7-bit activations): accuracy on the first 2,000 test images
of the QAT model (eval mode, fake-quant) and of ``convert(qat)``, before and after one
epoch of SGD fine-tuning at two learning rates, next to PTQ with the same plan.

    PYTHONPATH=. python scripts/qat_fidelity.py
"""

from __future__ import annotations

import warnings

import torch

import autoquant as aq
from autoquant.config import OpConfig, QuantSpec
from autoquant.examples import fashion_mnist as fm
from autoquant.examples import fashion_mobilenet as fmb
from autoquant.qat import convert, prepare_qat


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model, calib, evaluate = fmb.trained_model(), fm.calibration_batches(), fm.eval_fn(2000)
    cfg = OpConfig(
        approach="static",
        weight=QuantSpec(dtype="int8", granularity="per_tensor", reduce_range=True),
        activation=QuantSpec(dtype="uint8", reduce_range=True),
    )
    plan = {"default": cfg}
    ptq = aq.quantize(model, plan, calib)
    qat = prepare_qat(model, plan, calib)
    qat.eval()
    print(
        f"untrained: qat forward {evaluate(qat):.4f}  converted {evaluate(convert(qat)):.4f}  "
        f"ptq {evaluate(ptq):.4f}"
    )
    for lr in (1e-3, 1e-4):
        torch.manual_seed(0)
        qat = prepare_qat(model, plan, calib)
        fm.train_fn(lr=lr)(qat)
        qat.eval()
        print(f"lr {lr:g}: qat forward {evaluate(qat):.4f}  converted {evaluate(convert(qat)):.4f}")


if __name__ == "__main__":
    main()
