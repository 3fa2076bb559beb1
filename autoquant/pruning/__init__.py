"""Pruning inside accuracy-aware tuning, jointly with quantization.

An op's plan entry may carry a :class:`PruneSpec` (``OpConfig(..., prune=...)``, or
:func:`autoquant.config.prune_only` for an op that stays float). :func:`prune` applies
the plan's pruning part to a copy of a float model: unstructured and N:M patterns zero
weights, ``channel`` removes output channels from the layer *and its consumers*, found
from the torch.fx graph (:mod:`~autoquant.pruning.structural`), so dense kernels get
smaller. :func:`autoquant.quantize` prunes first, then calibrates and quantizes the
pruned model. Layers whose channels cannot be removed safely are left whole and listed
in the :class:`PruneReport`. :func:`prune_and_train` prunes and fine-tunes with a
``train_fn``, one shot or along a gradual :class:`PruneSchedule`.

Names are imported on first use so ``autoquant.config`` can read :class:`PruneSpec`
without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoquant._lazy import lazy_attributes

_LAZY = {
    "PruneSpec": "autoquant.pruning.spec",
    "PATTERNS": "autoquant.pruning.spec",
    "CRITERIA": "autoquant.pruning.spec",
    "SCOPES": "autoquant.pruning.spec",
    "prune": "autoquant.pruning.apply",
    "PruneReport": "autoquant.pruning.apply",
    "prune_info": "autoquant.pruning.apply",
    "split_plan": "autoquant.pruning.apply",
    "resize_to": "autoquant.pruning.apply",
    "sparsity": "autoquant.pruning.apply",
    "pruning_summary": "autoquant.pruning.apply",
    "channel_groups": "autoquant.pruning.structural",
    "PruneSchedule": "autoquant.pruning.schedule",
    "SCHEDULES": "autoquant.pruning.schedule",
    "stage_ratios": "autoquant.pruning.schedule",
    "split_budget": "autoquant.pruning.schedule",
    "prune_and_train": "autoquant.pruning.fine_tune",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from autoquant.pruning.apply import PruneReport as PruneReport
    from autoquant.pruning.apply import prune as prune
    from autoquant.pruning.apply import prune_info as prune_info
    from autoquant.pruning.apply import pruning_summary as pruning_summary
    from autoquant.pruning.apply import resize_to as resize_to
    from autoquant.pruning.apply import sparsity as sparsity
    from autoquant.pruning.apply import split_plan as split_plan
    from autoquant.pruning.fine_tune import prune_and_train as prune_and_train
    from autoquant.pruning.schedule import SCHEDULES as SCHEDULES
    from autoquant.pruning.schedule import PruneSchedule as PruneSchedule
    from autoquant.pruning.schedule import split_budget as split_budget
    from autoquant.pruning.schedule import stage_ratios as stage_ratios
    from autoquant.pruning.spec import CRITERIA as CRITERIA
    from autoquant.pruning.spec import PATTERNS as PATTERNS
    from autoquant.pruning.spec import SCOPES as SCOPES
    from autoquant.pruning.spec import PruneSpec as PruneSpec
    from autoquant.pruning.structural import channel_groups as channel_groups
