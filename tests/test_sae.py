"""TopK SAE: OpenAI semantics against NumPy, checkpoints."""

import mlx.core as mx
import numpy as np
import pytest

import cocomix_mlx as cm
from cocomix_mlx.errors import CheckpointError
from cocomix_mlx.models.sae import SAEConfig, TopKSAE, save_sae


def np_standardize(h, eps=1e-5):
    mu = h.mean(-1, keepdims=True)
    std = (h - mu).std(-1, ddof=1, keepdims=True)
    return (h - mu) / (std + eps), mu, std


def np_sae(p, h, k, normalize=True):
    """OpenAI sparse_autoencoder TopK forward: (latents, reconstruction)."""
    x, mu, std = np_standardize(h) if normalize else (h, 0.0, 1.0)
    pre = (x - p["pre_bias"]) @ p["encoder.weight"].T + p["latent_bias"]
    z = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[..., :k]
    np.put_along_axis(z, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    return z, (z @ p["decoder.weight"].T + p["pre_bias"]) * std + mu


def random_sae(d=24, c=96, k=8, normalize=True, seed=0):
    rng = np.random.default_rng(seed)
    p = {"pre_bias": rng.standard_normal(d) * 0.1, "encoder.weight": rng.standard_normal((c, d)) * 0.3,
         "latent_bias": rng.standard_normal(c) * 0.1 + 0.5, "decoder.weight": rng.standard_normal((d, c)) * 0.3}
    p = {n: v.astype(np.float32) for n, v in p.items()}
    sae = TopKSAE(SAEConfig(d=d, latents=c, k=k, normalize=normalize))
    sae.load_weights([(n, mx.array(v)) for n, v in p.items()], strict=True)
    return sae, p


@pytest.mark.parametrize("normalize", [True, False])
def test_encode_decode_match_numpy(normalize):
    sae, p = random_sae(normalize=normalize)
    h = (np.random.default_rng(1).standard_normal((3, 5, 24)) * 3 + 1).astype(np.float32)
    z, stats = sae.encode(mx.array(h), return_stats=True)
    rz, rh = np_sae({n: v.astype(np.float64) for n, v in p.items()}, h.astype(np.float64), 8, normalize)
    np.testing.assert_allclose(np.array(z), rz, atol=1e-4)
    np.testing.assert_allclose(np.array(sae.decode(z, stats)), rh, atol=1e-4)
    np.testing.assert_allclose(np.array(sae(mx.array(h))), rh, atol=1e-4)
    nonzero = (np.array(z) != 0).sum(-1)
    assert (nonzero <= 8).all() and (nonzero == 8).mean() > 0.9  # ReLU may zero a kept entry


def test_exactly_k_active_when_preactivations_positive():
    sae, _ = random_sae(k=5)
    sae.latent_bias = mx.full((96,), 100.0)
    z = sae.encode(mx.random.normal((64, 24)))
    assert ((np.array(z) != 0).sum(-1) == 5).all()


def test_checkpoint_round_trip_and_errors(tmp_path):
    sae, p = random_sae()
    save_sae(sae, tmp_path, {"source_model": "gpt2", "layer": 5})
    loaded = cm.load_sae(tmp_path)
    assert loaded.cfg.layer == 5 and loaded.cfg.k == 8
    h = mx.random.normal((4, 24))
    assert mx.array_equal(loaded.encode(h), sae.encode(h))
    with pytest.raises(CheckpointError, match="no SAE"):
        cm.load_sae(tmp_path / "missing")
