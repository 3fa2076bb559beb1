"""Warnings the default job triggers that are neither the user's doing nor ours, and that
no change here can remove: the command line hides exactly these (by message and by the
module that raises them), so a user's terminal shows autoquant's messages and real
problems. The library hides nothing; tests/test_cli.py checks the default job's stderr
stays clean, and that each warning listed here still occurs (so the list shrinks when an
upstream fix lands).
"""

from __future__ import annotations

import warnings

__all__ = ["FOREIGN", "quiet_foreign_warnings"]

# (message regex, category name, module regex): category by name, so listing one costs
# no import of the package that raises it.
FOREIGN: tuple[tuple[str, str, str], ...] = (
    # MLflow's SQLAlchemy store configures a relationship with ``noload``, deprecated in
    # SQLAlchemy 2.1; raised when MLflow opens any database store (MLflow 3.17).
    (r"The ``noload`` loader strategy is deprecated", "SADeprecationWarning", r"mlflow\."),
)


def quiet_foreign_warnings() -> None:
    """Ignore the warnings in :data:`FOREIGN` (call after any ``simplefilter``)."""
    for message, _category, module in FOREIGN:
        warnings.filterwarnings("ignore", message=message, module=module)
