"""CoCoMix in MLX. Importing this package first sets up the backend (a fast BLAS on Linux)."""

from . import backend  # noqa: F401  (must run before anything imports mlx)
from . import concepts  # noqa: E402
from . import labels  # noqa: E402
from .generate import generate, steered  # noqa: E402  (functions; cocomix_mlx.generate stays the module)
from .models.backbone import backbone  # noqa: E402
from .errors import CocomixError

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load any checkpoint directory: returns ``(model, tokenizer)``."""
    from .checkpoint import load as _load

    return _load(path, **kwargs)


def load_sae(path):
    """Load a TopK SAE directory (``sae.safetensors`` + ``config.json``)."""
    from .models.sae import load_sae as _load_sae

    return _load_sae(path)


__all__ = ["CocomixError", "backbone", "concepts", "generate", "labels", "load", "load_sae", "steered",
           "__version__"]
