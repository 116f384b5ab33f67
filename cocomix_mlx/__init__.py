"""CoCoMix in MLX. Importing this package first sets up the backend (a fast BLAS on Linux)."""

from . import backend  # noqa: F401  (must run before anything imports mlx)
from .errors import CocomixError

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load any checkpoint directory: returns ``(model, tokenizer)``."""
    from .checkpoint import load as _load

    return _load(path, **kwargs)


__all__ = ["CocomixError", "load", "__version__"]
