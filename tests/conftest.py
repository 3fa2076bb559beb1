"""Shared fixtures: real data (scikit-learn's bundled digits) and a CNN trained on it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def digits_data() -> dict[str, torch.Tensor]:
    from autoquant.examples.digits import load_data

    return load_data()


@pytest.fixture(scope="session")
def digits_model() -> torch.nn.Module:
    """The trained digits CNN (trained once, ~10 s on 2 cores, then loaded from the cache)."""
    from autoquant.examples.digits import trained_model

    torch.manual_seed(0)
    return trained_model()


@pytest.fixture(scope="session")
def digits_calib(digits_data: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return list(digits_data["x_train"][:100].split(25))
