"""``basic``: Intel Neural Compressor's proven order, on autoquant's search space.

1. every op at its default config;
2. op-type-wise: each alternative config of an op type, for all ops of that type,
   keeping what improves;
3. if the goal is still missed: fall back one op at a time to fp32 (ops walked from last
   to first), recording the accuracy each fallback gives; then fall back cumulatively in
   order of that gain until the goal is met;
4. re-quantize fallen-back ops that turn out not to be needed;
5. with budget left (``stop_on_first_pass`` False): speed refinement.

At most ``1 + alternatives + N + N`` evaluations to a first passing plan (N units), the
same bound as INC's basic.
"""

from __future__ import annotations

from autoquant.tuning.space import FP32
from autoquant.tuning.strategies.base import Steps, Strategy, register_strategy

__all__ = ["BasicStrategy"]


@register_strategy
class BasicStrategy(Strategy):
    name = "basic"

    def steps(self) -> Steps:
        space = self.space
        best_params = space.default_params()
        best = yield best_params

        # 2. op-type-wise tuning
        by_type: dict[str, list[str]] = {}
        for name, unit in space.units.items():
            by_type.setdefault(unit.op_type, []).append(name)
        for units in by_type.values():
            labels = [
                lab
                for lab in space.units[units[0]].labels
                if lab != FP32 and all(lab in space.units[u].labels for u in units)
            ]
            for label in labels:
                if all(best_params[u] == label for u in units):
                    continue
                if best.passed and not self._may_be_faster(units[0], best_params[units[0]], label):
                    continue  # accuracy-only variations cannot improve a passing plan's speed
                candidate = dict(best_params)
                for u in units:
                    candidate[u] = label
                rec = yield candidate
                if self.better(rec, best):
                    best_params, best = candidate, rec

        if not best.passed:
            # 3a. one op at a time, last to first
            gain: dict[str, float] = {}
            for unit in reversed(space.unit_names):
                rec = yield space.with_fp32(best_params, [unit])
                gain[unit] = -rec.metrics.loss if rec.metrics is not None else float("-inf")
                if rec.passed and self.better(rec, best):
                    best_params, best = space.with_fp32(best_params, [unit]), rec
                    break
            if not best.passed:
                # 3b. accumulated fallback, biggest gain first
                order = sorted(gain, key=lambda u: -gain[u])
                fallen: list[str] = []
                for unit in order:
                    fallen.append(unit)
                    candidate = space.with_fp32(best_params, fallen)
                    if all(v == FP32 for v in candidate.values()):
                        return  # only the all-float plan would pass: nothing to offer
                    rec = yield candidate
                    if rec.passed:
                        best_params, best = candidate, rec
                        break
                if not best.passed:
                    return
                # 4. re-quantize fallbacks that are not needed (smallest gain first)
                defaults = space.default_params()
                for unit in reversed(fallen[:-1]):
                    candidate = dict(best_params)
                    candidate[unit] = defaults[unit]
                    rec = yield candidate
                    if rec.passed:
                        best_params, best = candidate, rec
        if not self.config.stop_on_first_pass:
            best_params, best = yield from self.prune_refinement(best_params, best)
            yield from self.speed_refinement(best_params, best)

    def _may_be_faster(self, unit: str, current: str, label: str) -> bool:
        """Whether switching ``unit`` from ``current`` to ``label`` changes its kernel."""
        u = self.space.units[unit]
        a, b = u.configs[u.labels.index(current)], u.configs[u.labels.index(label)]
        if a is None or b is None:
            return True
        return (a.approach, a.weight.dtype, a.weight.granularity) != (
            b.approach,
            b.weight.dtype,
            b.weight.granularity,
        )
