"""The modules a QAT model is made of: activation fake-quant and the wrapped ops.

:class:`ActivationFakeQuant` fake-quantizes the input of one planned op with per-tensor
qparams that start from calibration statistics (the same observer and statistics static
PTQ uses) or, without them, from the first batches it sees; while observing it follows a
moving-average min/max (torch.ao's ``MovingAverageMinMaxObserver`` rule, constant 0.01),
and with LSQ its scale is a trainable parameter.

:class:`QATOp` runs one planned op (Linear/Conv) on fake-quantized weights: qparams come
from :func:`autoquant.observers.weight_qparams` of the current weight at every step, the
very function the static build applies to the trained weight at convert, so training
sees the integers the kernel will hold. A Conv followed by BatchNorm is trained the way
the build folds it (Krishnamoorthi 2018, torch.ao's ConvBn): the weight is scaled by
``gamma / sqrt(running_var + eps)`` before fake quantization, the conv output is scaled
back and BatchNorm applied; once BN is frozen it normalises with its running statistics,
and the result is exactly the folded conv the integer kernel runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autoquant.config import OpConfig, QuantSpec
from autoquant.qat._ste import fake_quant_lsq, fake_quant_ste
from autoquant.qparams import QParams, qparams_from_range, quant_range

__all__ = ["ActivationFakeQuant", "QATOp", "FoldedBatchNorm"]

_AVERAGING = 0.01


class ActivationFakeQuant(nn.Module):
    """Per-tensor fake quantization of an activation (see the module docstring).

    ``freeze_at``: training steps (forward calls in train mode) after which the range
    stops following the data; ``learn_scale``: LSQ, the scale is a parameter.
    """

    def __init__(self, spec: QuantSpec, *, freeze_at: int, learn_scale: bool) -> None:
        super().__init__()
        self.spec = spec
        self.qmin, self.qmax = quant_range(spec.dtype, spec.reduce_range)
        self.freeze_at = freeze_at
        self.learn_scale = learn_scale
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("initialized", torch.tensor(False))
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(1.0))
        else:
            self.register_buffer("scale", torch.tensor(1.0))

    def set_qparams(self, qp: QParams) -> None:
        with torch.no_grad():
            self.scale.copy_(qp.scale.reshape(()))
            self.zero_point.copy_(qp.zero_point.reshape(()))
            self.initialized.fill_(True)

    def init_from_range(self, lo: float, hi: float) -> None:
        with torch.no_grad():
            self.min_val.fill_(lo)
            self.max_val.fill_(hi)
        self.set_qparams(qparams_from_range(lo, hi, self.spec))

    def qparams(self) -> QParams:
        """The current qparams (the ones convert hands to the static build)."""
        return QParams(
            scale=self.scale.detach().clone().reshape(()).float(),
            zero_point=self.zero_point.clone().reshape(()),
            qmin=self.qmin,
            qmax=self.qmax,
            dtype=self.spec.dtype,
        )

    @property
    def observing(self) -> bool:
        return int(self.steps) < self.freeze_at

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        if not bool(self.initialized):
            self.init_from_range(float(lo), float(hi))
            return
        new_lo = self.min_val + _AVERAGING * (lo - self.min_val)
        new_hi = self.max_val + _AVERAGING * (hi - self.max_val)
        self.init_from_range(float(new_lo), float(new_hi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            # No calibration statistics: the first batch sets the range.
            self._observe(x)
        elif self.training and self.observing:
            self._observe(x)
        if self.training:
            self.steps += 1
        if self.learn_scale:
            with torch.no_grad():
                self.scale.clamp_(min=torch.finfo(torch.float32).eps)
            # LSQ's gradient scale for activations: features per sample, not per batch.
            features = x.numel() // x.shape[0] if x.dim() > 1 else x.numel()
            g = 1.0 / math.sqrt(max(features, 1) * max(self.qmax, 1))
            return fake_quant_lsq(x, self.scale, int(self.zero_point), self.qmin, self.qmax, g)
        return fake_quant_ste(x, self.qparams())

    def extra_repr(self) -> str:
        return (
            f"{self.spec.short()}, scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}, "
            f"freeze_at={self.freeze_at}, lsq={self.learn_scale}"
        )


class FoldedBatchNorm(nn.Identity):
    """Stands where a BatchNorm was whose statistics the preceding QATOp applies."""

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner

    def extra_repr(self) -> str:
        return f"applied by {self.owner!r}"


class QATOp(nn.Module):
    """One planned op trained on fake-quantized weights (and input, when ``act`` is set).

    ``op`` is the float module (its parameters are the ones trained); ``bn`` a BatchNorm
    that directly follows a conv and is folded into it by the build; ``freeze_bn_at`` the
    training step from which BN normalises with its running statistics and stops
    updating them.
    """

    def __init__(
        self,
        op: nn.Module,
        cfg: OpConfig,
        act: ActivationFakeQuant | None,
        bn: nn.modules.batchnorm._BatchNorm | None = None,
        bn_fqn: str | None = None,
        freeze_bn_at: int = 0,
    ) -> None:
        super().__init__()
        self.op = op
        self.cfg = cfg
        self.act = act
        self.bn = bn
        self.bn_fqn = bn_fqn
        self.freeze_bn_at = freeze_bn_at
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))

    @property
    def bn_frozen(self) -> bool:
        return int(self.steps) >= self.freeze_bn_at

    def weight_fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        from autoquant.observers import weight_qparams

        spec = self.cfg.weight
        shaped = w
        if spec.granularity == "per_group" and w.dim() > 2:
            shaped = w.reshape(w.shape[0], -1)
        qp = weight_qparams(shaped.detach().float(), spec)
        return fake_quant_ste(shaped, qp).reshape(w.shape)

    def forward(self, *args, **kwargs):
        x = args[0]
        if self.act is not None:
            x = self.act(x)
        op = self.op
        if isinstance(op, nn.Linear):
            y = F.linear(x, self.weight_fake_quant(op.weight), op.bias)
        elif isinstance(op, (nn.Conv1d, nn.Conv2d)):
            y = self._conv(x)
        else:  # weight-only ops of other types (Embedding): weights only
            return self._generic(op, args, kwargs)
        if self.training:
            self.steps += 1
        return y

    def _generic(self, op: nn.Module, args, kwargs):
        from torch.func import functional_call

        w = self.weight_fake_quant(op.weight)
        return functional_call(op, {"weight": w}, args, kwargs, strict=False)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        op = self.op
        conv = op._conv_forward  # type: ignore[union-attr]
        bn = self.bn
        if bn is None:
            return conv(x, self.weight_fake_quant(op.weight), op.bias)
        shape = [1] * op.weight.dim()
        shape[0] = -1
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        factor = gamma / std
        w = self.weight_fake_quant(op.weight * factor.reshape(shape))
        y = conv(x, w, None)
        out_shape = [1] * y.dim()
        out_shape[1] = -1
        y = y / factor.reshape(out_shape)
        if op.bias is not None:
            y = y + op.bias.reshape(out_shape)
        use_batch = self.training and not self.bn_frozen
        return F.batch_norm(
            y,
            bn.running_mean,
            bn.running_var,
            bn.weight,
            bn.bias,
            training=use_batch,
            momentum=bn.momentum if bn.momentum is not None else 0.1,
            eps=bn.eps,
        )
