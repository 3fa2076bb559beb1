"""``sensitivity``: rank ops by a cheap score, binary-search how many stay in fp32.

The score of a unit is the output error, on calibration data, of the model with only
that unit quantized (no full evaluation). With the default plan failing, the smallest
number k of most sensitive units to keep in fp32 is found by binary search over
k in [1, N-1]: a first passing plan in at most 1 + ceil(log2 N) evaluations. Then each
fallen-back unit is tried quantized again (least sensitive first), and with budget left
the speed refinement runs.
"""

from __future__ import annotations

from autoquant.tuning.strategies.base import Steps, Strategy, register_strategy

__all__ = ["SensitivityStrategy"]


@register_strategy
class SensitivityStrategy(Strategy):
    name = "sensitivity"

    def steps(self) -> Steps:
        space = self.space
        default = space.default_params()
        first = yield default
        best_params, best = default, first
        if not first.passed:
            scores = self.context.sensitivity()
            order = sorted(space.unit_names, key=lambda u: -scores.get(u, 0.0))
            n = len(order)
            lo, hi = 0, n  # k=lo fails (seen); k=n is the float model, never a result
            while hi - lo > 1:
                mid = (lo + hi) // 2
                candidate = space.with_fp32(default, order[:mid])
                rec = yield candidate
                if rec.passed:
                    hi, best_params, best = mid, candidate, rec
                else:
                    lo = mid
            if not best.passed:
                return
            # Refine: a unit may be fine quantized once its neighbours are in fp32.
            fallen = list(order[:hi])
            for unit in reversed(fallen):
                remaining = [u for u in fallen if u != unit]
                candidate = space.with_fp32(default, remaining)
                rec = yield candidate
                if rec.passed:
                    fallen, best_params, best = remaining, candidate, rec
        if not self.config.stop_on_first_pass:
            best_params, best = yield from self.prune_refinement(best_params, best)
            yield from self.speed_refinement(best_params, best)
