"""The plots module on its own: every plot of the tracked result is a PNG file, and a
broken result skips a plot with its reason instead of stopping the others."""

from __future__ import annotations

import dataclasses

from autoquant.tracking.plots import write_plots


def test_write_plots_writes_pngs(tracked, tmp_path) -> None:
    written, skipped = write_plots(tracked.result, str(tmp_path))
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"accuracy_vs_latency.png", "fp32_fallback.png", "optimization_history.png"} <= names
    assert skipped == []
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_evaluated_trial_is_a_reason_not_an_error(tracked, tmp_path) -> None:
    result = dataclasses.replace(tracked.result, trials=[], pareto=[])
    written, skipped = write_plots(result, str(tmp_path))
    reasons = dict(skipped)
    assert reasons["accuracy_vs_latency.png"] == "no evaluated trial"
    assert reasons["fp32_fallback.png"] == "no evaluated trial"
    assert all(not p.endswith(("accuracy_vs_latency.png", "fp32_fallback.png")) for p in written)
