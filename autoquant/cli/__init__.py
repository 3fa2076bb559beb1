"""``autoquant``: the command line, a Hydra app over conf/.

The console script ``autoquant`` (and ``python -m autoquant.cli``) runs :func:`main`.
Private modules: ``_app`` (checking the command line, the job, the final report),
``_schema`` (the structured configs conf/ is checked against, derived from
:mod:`autoquant.tuning.config`), ``_workers`` (``launch.workers=N``), ``_progress`` (the
progress bar or log lines).
"""

from autoquant.cli._app import main, run_job

__all__ = ["main", "run_job"]
