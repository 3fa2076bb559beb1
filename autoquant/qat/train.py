"""A built-in fine-tuning loop, and the budget the tuner hands a training function.

``TrainLoop(data=..., lr=..., epochs=...)`` is a ``train_fn``: called with a QAT model
(and optionally a :class:`TrainBudget`), it runs plain supervised fine-tuning --
SGD with momentum or Adam on cross-entropy (or MSE) over ``(input, target)`` batches.
The command line's ``train=sgd`` builds one; the examples ship their own data factory.

A user's ``train_fn`` may take one argument (``train_fn(model)``) or two
(``train_fn(model, budget)``); only the second form can follow the tuner's budget.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoquant.errors import ConfigError

__all__ = ["TrainBudget", "TrainLoop", "call_train_fn"]

_OPTIMIZERS = ("sgd", "adam")
_LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True, kw_only=True)
class TrainBudget:
    """How much fine-tuning one QAT trial gets: ``epochs`` over the training data (a
    fraction allowed), at most ``steps`` optimizer steps (None: no cap), and the
    learning rate multiplied by ``lr_scale``."""

    epochs: float = 1.0
    steps: int | None = None
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.epochs, bool)
            or not isinstance(self.epochs, (int, float))
            or not (self.epochs > 0)
        ):
            raise ConfigError(f"TrainBudget.epochs must be a number > 0, but got {self.epochs!r}.")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise ConfigError(
                f"TrainBudget.steps must be None or an int >= 1, but got {self.steps!r}."
            )
        if (
            isinstance(self.lr_scale, bool)
            or not isinstance(self.lr_scale, (int, float))
            or not (self.lr_scale > 0 and math.isfinite(self.lr_scale))
        ):
            raise ConfigError(
                f"TrainBudget.lr_scale must be a finite number > 0, but got {self.lr_scale!r}."
            )

    def label(self) -> str:
        steps = "" if self.steps is None else f" steps<={self.steps}"
        return f"epochs={self.epochs:g} lr_x{self.lr_scale:g}{steps}"

    @classmethod
    def parse(cls, label: str) -> TrainBudget:
        """Inverse of :meth:`label` (the tuner records budgets by label)."""
        fields: dict[str, Any] = {}
        for part in label.split():
            if part.startswith("epochs="):
                fields["epochs"] = float(part[7:])
            elif part.startswith("lr_x"):
                fields["lr_scale"] = float(part[4:])
            elif part.startswith("steps<="):
                fields["steps"] = int(part[7:])
        return cls(**fields)


def _n_params(fn: Callable[..., Any]) -> int:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 1
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])


def call_train_fn(train_fn: Callable[..., Any], model: nn.Module, budget: TrainBudget) -> None:
    """``train_fn(model, budget)`` when it takes two arguments, else ``train_fn(model)``."""
    if _n_params(train_fn) >= 2:
        train_fn(model, budget)
    else:
        train_fn(model)


@dataclass(frozen=True, kw_only=True)
class TrainLoop:
    """Supervised fine-tuning over ``data`` (see the module docstring).

    data: an iterable of ``(input, target)`` batches, or a callable ``data(batch_size)``
        returning one (a fresh pass per epoch; the command line's data factory).
    optimizer: ``sgd`` (with ``momentum``) or ``adam``; ``lr`` its learning rate.
    epochs / steps: passes over the data and an optional cap on optimizer steps (a
        budget given by the tuner replaces both and scales ``lr``).
    batch_size: passed to a ``data`` callable.
    loss: ``cross_entropy`` (classification logits) or ``mse``.
    """

    data: Any
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 64
    loss: str = "cross_entropy"

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(
                f"TrainLoop.optimizer must be one of {list(_OPTIMIZERS)}, but got {self.optimizer!r}."
            )
        if self.loss not in _LOSSES:
            raise ConfigError(
                f"TrainLoop.loss must be one of {list(_LOSSES)}, but got {self.loss!r}."
            )
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"TrainLoop.lr must be a number > 0, but got {self.lr!r}.")
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise ConfigError(
                f"TrainLoop.batch_size must be an int >= 1, but got {self.batch_size!r}."
            )
        TrainBudget(epochs=self.epochs, steps=self.steps)  # validates both

    @property
    def default_budget(self) -> TrainBudget:
        return TrainBudget(epochs=self.epochs, steps=self.steps)

    def _batches(self) -> Iterable[Any]:
        return self.data(self.batch_size) if callable(self.data) else self.data

    def __call__(self, model: nn.Module, budget: TrainBudget | None = None) -> None:
        budget = budget or self.default_budget
        params = [p for p in model.parameters() if p.requires_grad]
        lr = self.lr * budget.lr_scale
        opt: torch.optim.Optimizer
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        else:
            opt = torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        loss_fn = (
            nn.functional.cross_entropy if self.loss == "cross_entropy" else nn.functional.mse_loss
        )
        model.train()
        step = 0
        whole, frac = int(budget.epochs), budget.epochs - int(budget.epochs)
        passes = whole + (1 if frac > 0 else 0)
        for p in range(passes):
            batches = list(self._batches()) if (p == whole and frac > 0) else self._batches()
            if p == whole and frac > 0:
                batches = batches[: max(1, round(len(batches) * frac))]
            for batch in batches:
                x, y = batch[0], batch[1]
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {float(loss)} at step {step}; lower the "
                        "learning rate (TrainLoop.lr or the budget's lr_scale)."
                    )
                loss.backward()
                opt.step()
                step += 1
                if budget.steps is not None and step >= budget.steps:
                    break
            if budget.steps is not None and step >= budget.steps:
                break
        model.eval()
