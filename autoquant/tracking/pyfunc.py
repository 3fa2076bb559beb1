"""The ``python_function`` flavour of models logged in autoquant's own format.

:class:`~autoquant.tracking.MlflowTracker` logs a best model that does not pickle
(torch.fx GraphModules) with :func:`autoquant.save` inside a ``python_function`` model
whose ``loader_module`` is ``autoquant.tracking``: MLflow then calls
``autoquant.tracking._load_pyfunc(data_path)``, which the package re-exports from here.
That loader path is written into every logged model's ``MLmodel`` file, so it must stay
importable as long as such models exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["AutoQuantPyfunc"]

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


def _load_pyfunc(data_path: str) -> AutoQuantPyfunc:
    """MLflow's loader for ``python_function`` models logged by :class:`MlflowTracker`."""
    from autoquant.serialize import load

    return AutoQuantPyfunc(load(data_path))
