"""Shared fixtures: real data (scikit-learn's bundled digits) and a CNN trained on it, and a
fresh database on a real PostgreSQL server when one is configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import torch

# The PostgreSQL server the tests may use, as a URL of a role that may CREATE DATABASE,
# e.g. postgresql://autoquant:autoquant@127.0.0.1:5432/postgres (what
# scripts/start_postgres.sh serves, and .ci/run sets). Unset: those tests skip.
POSTGRES_ENV = "AUTOQUANT_TEST_POSTGRES"


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


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a new, empty database (dropped afterwards) on $AUTOQUANT_TEST_POSTGRES."""
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(
            f"{POSTGRES_ENV} is not set; to run the PostgreSQL tests: bash scripts/start_postgres.sh, "
            f"then {POSTGRES_ENV}=postgresql://autoquant:autoquant@127.0.0.1:5432/postgres"
        )
    # Set means required (CI): a missing driver or a down server fails, it does not skip.
    import psycopg2

    admin = urlsplit(admin_url.replace("+psycopg2", "", 1))
    name = f"aq_test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(urlunsplit(admin), connect_timeout=10)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(admin._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
    finally:
        try:
            with conn.cursor() as cur:
                # FORCE: the test's own pooled connections may still be open.
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()
