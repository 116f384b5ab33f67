"""TopK sparse autoencoder in OpenAI's ``sparse_autoencoder`` layout (Gao et al. 2024).

Parameters: ``pre_bias`` (d), ``encoder.weight`` (C, d), ``latent_bias`` (C), ``decoder.weight``
(d, C); no other biases. With ``normalize`` the input is standardized first (``ops.standardize``)
and the reconstruction de-standardized with the same statistics.

A checkpoint is a directory with ``sae.safetensors`` and ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from ..errors import CheckpointError
from ..ops import standardize, topk_indices

Stats = Optional[tuple[mx.array, mx.array]]  # (mu, std) of the encoder input, or None


@dataclass
class SAEConfig:
    d: int
    latents: int
    k: int = 32
    normalize: bool = True
    source_model: Optional[str] = None
    layer: Optional[int] = None
    location: Optional[str] = None  # e.g. "resid_post_mlp"

    def __post_init__(self):
        if not 0 < self.k <= self.latents:
            raise ValueError(f"k={self.k} must be in 1..latents={self.latents}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class TopKSAE(nn.Module):
    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.pre_bias = mx.zeros((cfg.d,))
        self.encoder = nn.Linear(cfg.d, cfg.latents, bias=False)
        self.latent_bias = mx.zeros((cfg.latents,))
        self.decoder = nn.Linear(cfg.latents, cfg.d, bias=False)

    @property
    def W_dec(self) -> mx.array:
        """Decoder matrix (d, C): column j is latent j's direction."""
        return self.decoder.weight

    def preprocess(self, h: mx.array) -> tuple[mx.array, Stats]:
        if not self.cfg.normalize:
            return h, None
        x, mu, std = standardize(h)
        return x, (mu, std)

    def pre_activations(self, x: mx.array) -> mx.array:
        """Latent pre-activations of a (standardized) input: (x - pre_bias) Wₑᵀ + latent_bias."""
        return self.encoder(x - self.pre_bias) + self.latent_bias

    def select(self, pre: mx.array) -> tuple[mx.array, mx.array]:
        """``(index, values)`` (..., k): the top-k pre-activations' latents and their ReLU'd
        values; the gradient reaches exactly those entries."""
        index = topk_indices(pre, self.cfg.k)
        return index, mx.maximum(mx.take_along_axis(pre, index, -1), 0)

    def encode(self, h: mx.array, return_stats: bool = False):
        """Dense latents (..., C) with at most k non-zeros: ReLU of the top-k pre-activations."""
        x, stats = self.preprocess(h)
        pre = self.pre_activations(x)
        index, values = self.select(pre)
        z = mx.put_along_axis(mx.zeros_like(pre), index, values, -1)
        return (z, stats) if return_stats else z

    def encode_sparse(self, h: mx.array) -> tuple[mx.array, mx.array]:
        """``(index, values)`` (..., k): where :meth:`encode`'s latents may be non-zero, and
        their values."""
        return self.select(self.pre_activations(self.preprocess(h)[0]))

    def decode(self, z: mx.array, stats: Stats) -> mx.array:
        """The reconstruction in the space of the input ``z`` was encoded from: ``stats`` are the
        ones ``encode(h, return_stats=True)`` returned with ``z`` (None only for an SAE that does
        not standardize). :meth:`decode_standardized` gives the standardized space."""
        if self.cfg.normalize and stats is None:
            raise ValueError("this SAE standardizes its input: pass the stats encode(h, "
                             "return_stats=True) returned, or call decode_standardized(z)")
        return self.destandardize(self.decode_standardized(z), stats)

    def decode_standardized(self, z: mx.array) -> mx.array:
        """``z W_dᵀ + pre_bias``: the reconstruction of the standardized input."""
        return self.decoder(z) + self.pre_bias

    @staticmethod
    def destandardize(x: mx.array, stats: Stats) -> mx.array:
        """A normalized-space reconstruction back in the input's scale (as is without stats)."""
        if stats is None:
            return x
        mu, std = stats
        return x * std + mu

    def __call__(self, h: mx.array) -> mx.array:
        """Reconstruction of ``h`` in its own space."""
        z, stats = self.encode(h, return_stats=True)
        return self.decode(z, stats)


def save_sae(sae: TopKSAE, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``sae.safetensors`` + ``config.json`` into an existing directory."""
    from ..files import save_weights

    directory = Path(directory)
    save_weights(directory / "sae.safetensors", sae.parameters())
    config = {**asdict(sae.cfg), **(extra or {})}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_sae(directory: str | Path) -> TopKSAE:
    """Load an SAE directory written by ``save_sae`` / ``cocomix convert sae`` / ``sae train``."""
    directory = Path(directory)
    cfg_path, w_path = directory / "config.json", directory / "sae.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise CheckpointError(f"no SAE in {directory}: expected config.json and sae.safetensors; "
                              "make one with `cocomix sae train` or `cocomix convert sae`")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        cfg = SAEConfig.from_dict(raw)
        weights = mx.load(str(w_path))
    except (TypeError, ValueError, RuntimeError, MemoryError) as e:
        raise CheckpointError(f"corrupt SAE in {directory}: {e or type(e).__name__}") from None
    sae = TopKSAE(cfg)
    try:
        sae.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise CheckpointError(f"SAE weights in {directory} do not match its config: {e}") from None
    mx.eval(sae.parameters())
    return sae
