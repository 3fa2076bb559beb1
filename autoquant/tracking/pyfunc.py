"""The ``python_function`` flavour of models logged in autoquant's own format.

:class:`~autoquant.tracking.MlflowTracker` logs a best model that does not pickle
(torch.fx GraphModules) with :func:`autoquant.save` inside a ``python_function`` model
whose ``loader_module`` is ``autoquant.tracking``: MLflow then calls
``autoquant.tracking._load_pyfunc(data_path)``, which the package re-exports from here.
That loader path is written into every logged model's ``MLmodel`` file, so it must stay
importable as long as such models exist.

What that loader trusts: the model's files come from the tracking server, so the factory
recorded in them is imported only when the person loading allows it. By default only
autoquant's bundled example factories (:data:`PYFUNC_TRUSTED_FACTORIES`, the CLI's
``model=digits|breast_cancer|fashion_mnist|fashion_mobilenet|minilm``) are; ``AUTOQUANT_TRUST_FACTORY`` (comma-separated
module prefixes or ``module:callable`` names, or ``*`` for any) widens it, set by whoever
runs ``load_model`` for a server they trust. It is an environment variable, not a
``model_config`` entry, because the MLmodel file can carry a ``model_config`` of its
author's choosing. (MLflow itself imports the ``loader_module`` an MLmodel names, and its
``pytorch`` flavour unpickles: pulling models from a server always trusts the server's
MLmodel files; this rule keeps autoquant's own loader from widening that trust.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["AutoQuantPyfunc", "PYFUNC_TRUSTED_FACTORIES", "TRUST_FACTORY_ENV"]

# The loader_module written into logged models (the package re-exports _load_pyfunc).
LOADER_MODULE = "autoquant.tracking"


class AutoQuantPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns the model as (``_model_impl``).

    ``predict`` takes a numpy array, a pandas DataFrame, a torch tensor, a list/tuple of
    them (positional inputs) or a dict (keyword inputs), and returns the first output
    tensor as a numpy array. ``get_raw_model()`` is the quantized ``torch.nn.Module``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_raw_model(self) -> Any:
        return self.model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import torch

        from autoquant.inputs import call_model, first_tensor

        def tensor(x: Any) -> torch.Tensor:
            if isinstance(x, torch.Tensor):
                return x
            if hasattr(x, "to_numpy"):
                x = x.to_numpy()
            t = torch.as_tensor(x)
            return t.float() if t.dtype == torch.float64 else t

        if isinstance(model_input, Mapping):
            inputs: Any = {k: tensor(v) for k, v in model_input.items()}
        elif isinstance(model_input, (list, tuple)):
            inputs = tuple(tensor(v) for v in model_input)
        else:
            inputs = tensor(model_input)
        with torch.inference_mode():
            return first_tensor(call_model(self.model, inputs)).float().numpy()


#: Factories the pyfunc loader imports without being told: autoquant's bundled examples
#: (the CLI's model=digits|fashion_mnist|fashion_mobilenet|minilm). Exact names: their modules hold other
#: zero-argument callables (demo mains) that must not be reachable.
PYFUNC_TRUSTED_FACTORIES = (
    "autoquant.examples.breast_cancer:trained_model",
    "autoquant.examples.digits:trained_model",
    "autoquant.examples.fashion_mnist:trained_model",
    "autoquant.examples.fashion_mobilenet:trained_model",
    "autoquant.examples.minilm:load_model",
)
TRUST_FACTORY_ENV = "AUTOQUANT_TRUST_FACTORY"


def _pyfunc_trust() -> bool | tuple[str, ...]:
    from autoquant._saved_format import normalize_trust

    extra = [e.strip() for e in os.environ.get(TRUST_FACTORY_ENV, "").split(",") if e.strip()]
    if "*" in extra:
        return True
    try:
        return PYFUNC_TRUSTED_FACTORIES + tuple(normalize_trust(extra))
    except ValueError as exc:
        raise ValueError(f"{TRUST_FACTORY_ENV}={os.environ[TRUST_FACTORY_ENV]!r}: {exc}") from None


def _load_pyfunc(data_path: str) -> AutoQuantPyfunc:
    """MLflow's loader for ``python_function`` models logged by :class:`MlflowTracker`.

    Imports the recorded model factory only if it is one of autoquant's examples or
    ``AUTOQUANT_TRUST_FACTORY`` allows it (see the module docstring).
    """
    from autoquant.errors import SerializationError
    from autoquant.serialize import _UntrustedFactory, load

    try:
        return AutoQuantPyfunc(load(data_path, trust_factory=_pyfunc_trust()))
    except _UntrustedFactory as exc:
        module = exc.factory.partition(":")[0]
        raise SerializationError(
            f"this model's files name the model factory {exc.factory!r}, which "
            "mlflow.pyfunc.load_model does not import unless you allow it (only "
            "autoquant's example factories are allowed by default). If you trust the "
            f"tracking server this model came from, set {TRUST_FACTORY_ENV}={module} "
            "(comma-separated module prefixes or 'module:callable' names; '*' allows "
            "any) and load it again; or download its artifacts and call "
            "autoquant.load(<dir>/data/autoquant_model, model=...)."
        ) from exc
