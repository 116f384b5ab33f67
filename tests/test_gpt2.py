import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from cocomix_mlx.config import ModelConfig
from cocomix_mlx.models import build_model

from reference import gpt2_logits


def random_model(seed=0, **kw):
    cfg = ModelConfig(**{**dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=4), **kw})
    model = build_model(cfg, seed=seed)
    # Non-trivial LayerNorm and bias values so every parameter matters.
    rng = np.random.default_rng(seed)
    is_norm_weight = lambda k: ".ln_" in k and k.endswith(".weight")
    model.update(tree_unflatten(
        [(k, mx.array(rng.normal(size=v.shape).astype(np.float32) * 0.1 + is_norm_weight(k)))
         for k, v in tree_flatten(model.parameters())]))
    return cfg, model


def test_logits_match_numpy_reference():
    cfg, model = random_model()
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, 20))
    ours = np.array(model(mx.array(tokens)))
    weights = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    ref = gpt2_logits(weights, tokens, cfg.n_layer, cfg.n_head)
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_kv_cache_decoding_equals_full_forward():
    cfg, model = random_model(seed=2)
    tokens = mx.array(np.random.default_rng(3).integers(0, cfg.vocab_size, size=(1, 24)))
    full = model(tokens)
    cache = model.make_cache()
    parts = [model(tokens[:, :10], cache=cache)]
    for t in range(10, 24):
        parts.append(model(tokens[:, t:t + 1], cache=cache))
    cached = mx.concatenate(parts, axis=1)
    assert mx.abs(cached - full).max().item() <= 1e-4


def test_causality():
    cfg, model = random_model(seed=4)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, cfg.vocab_size, size=(1, 16))
    changed = tokens.copy()
    changed[0, 9] = (changed[0, 9] + 1) % cfg.vocab_size
    a, b = np.array(model(mx.array(tokens))), np.array(model(mx.array(changed)))
    assert np.abs(a[:, :9] - b[:, :9]).max() == 0.0
    assert np.abs(a[:, 9:] - b[:, 9:]).max() > 0.0


def gpt2_count(V, P, d, L, concepts=0):
    """GPT-2's parameter count in closed form (tied head; per block two LayerNorms, the QKV,
    output, up and down projections with biases), plus CoCoMix's predictor, compressor and
    pre-bias for ``concepts`` latents."""
    count = V * d + P * d + L * (12 * d * d + 13 * d) + 2 * d
    return count + (2 * d * concepts + concepts + 2 * d if concepts else 0)


def test_widen_picks_the_width_nearest_the_target_count():
    from cocomix_mlx.config import Config
    from cocomix_mlx.models import config_parameters, widen

    student = Config()
    student.model = ModelConfig(vocab_size=512, n_positions=64, n_embd=32, n_layer=4, n_head=4)
    student.train.mode = "cocomix"
    student.concept.concept_dim, student.concept.insert_layer = 256, 2
    target = config_parameters(student)
    assert target == gpt2_count(512, 64, 32, 4, concepts=256)
    twin = Config()
    twin.model = ModelConfig(vocab_size=512, n_positions=64, n_embd=32, n_layer=4, n_head=4)
    width = widen(twin, target).model.n_embd
    candidates = range(32, 200, 4)
    best = min(candidates, key=lambda d: abs(gpt2_count(512, 64, d, 4) - target))
    assert width == best and width % 4 == 0
    assert config_parameters(twin) == gpt2_count(512, 64, width, 4)
