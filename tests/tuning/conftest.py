"""Session fixtures for the tuning tests.

``cancer``: an MLP trained in about a second on scikit-learn's bundled breast-cancer data,
re-parameterised so that exactly one layer (``fc1``) is quantization-hostile; see
:mod:`tuning._helpers` for how and why. The digits CNN (``digits_model``,
``digits_data``, ``digits_calib``) comes from ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest

from ._helpers import CancerTask, train_cancer


@pytest.fixture(scope="session")
def cancer() -> CancerTask:
    return train_cancer()
