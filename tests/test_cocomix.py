"""CoCoMix model, attribution labels and joint objective against independent references."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from cocomix_mlx.concepts import (activation_labels, activation_scores, attribution, attribution_labels,
                                 concept_labels, concept_recall, residual_and_grad, sparse_top)
from cocomix_mlx.config import ConceptConfig, ModelConfig, ObjectiveConfig
from cocomix_mlx.models import build_model
from cocomix_mlx.models.backbone import backbone
from cocomix_mlx.models.sae import SAEConfig, TopKSAE
from cocomix_mlx.objectives import cocomix as cocomix_objective

from reference import _blocks, _model_weights, cocomix_logits, layer_norm, standardize

MCFG = dict(vocab_size=61, n_positions=32, n_embd=32, n_layer=4, n_head=4)


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    norm_w = lambda k: ".ln_" in k and k.endswith(".weight")
    model.update(tree_unflatten(
        [(k, mx.array(rng.normal(size=v.shape).astype(np.float32) * 0.2 + norm_w(k)))
         for k, v in tree_flatten(model.parameters())]))
    return model


def cocomix_model(seed=0, insert=2, k=5, C=48, mixing="interleave"):
    cc = ConceptConfig(concept_dim=C, concept_num=k, insert_layer=insert, mixing=mixing)
    return randomize(build_model(ModelConfig(**MCFG), mode="cocomix", concept=cc), seed)


def weights_np(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


@pytest.mark.parametrize("insert", [0, 2, 3])
def test_forward_matches_numpy(insert):
    model = cocomix_model(insert=insert)
    tokens = np.random.default_rng(1).integers(0, 61, (2, 11))
    logits, z = model(mx.array(tokens), return_concepts=True)
    ref_logits, ref_z = cocomix_logits(weights_np(model), tokens, 4, 4, insert, 5)
    np.testing.assert_allclose(np.array(z), ref_z, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.array(logits), ref_logits, atol=5e-5, rtol=1e-4)


def test_causality_and_concept_slot_sees_its_token():
    model = cocomix_model()
    tokens = np.random.default_rng(2).integers(0, 61, (1, 12))
    base = np.array(model(mx.array(tokens)))
    for t in (3, 7):
        changed = tokens.copy()
        changed[0, t] = (changed[0, t] + 1) % 61
        out = np.array(model(mx.array(changed)))
        np.testing.assert_array_equal(out[0, :t], base[0, :t])
        assert np.abs(out[0, t] - base[0, t]).max() > 1e-4  # slot c_t sees token t


def test_last_block_computing_only_the_read_slots_equals_the_whole_block():
    """The last block runs its queries and MLP over the concept slots only: the logits, the
    gradients and the KV cache (prefill, then one decoded token) equal those of running the
    whole block and reading its concept slots."""
    from mlx_lm.models.cache import KVCache

    from cocomix_mlx.models.base import row_mask

    model = cocomix_model(insert=2)
    m, n = model, 4
    tokens = mx.array(np.random.default_rng(7).integers(0, 61, (2, 9)))

    def forward(tokens, cache, fast):
        offset = model.token_offset(cache)
        h, _ = model.mix(m.run_blocks(m.embed(tokens, offset), 0, 2, cache), offset)
        return model.finish(h, 2, cache) if fast else model.readout(m.run_blocks(h, 2, n, cache))

    caches = {}
    for fast in (True, False):
        cache = [KVCache() for _ in range(n)]
        caches[fast] = (forward(tokens, cache, fast), forward(tokens[:, :1], cache, fast), cache)
    for a, b in zip(caches[True][:2], caches[False][:2]):
        assert mx.abs(a - b).max().item() < 1e-5
    for a, b in zip(caches[True][2], caches[False][2]):
        assert a.offset == b.offset and mx.abs(a.keys - b.keys).max().item() == 0
        assert mx.abs(a.values - b.values).max().item() == 0
    assert [c.offset for c in caches[True][2]] == [10, 10, 20, 20]

    def loss(params, fast):
        model.update(params)
        return (forward(tokens, None, fast) ** 2).mean()

    g_fast, g_full = (mx.grad(loss)(model.trainable_parameters(), f) for f in (True, False))
    for (name, a), (_, b) in zip(tree_flatten(g_fast), tree_flatten(g_full)):
        assert mx.abs(a - b).max().item() < 1e-5, name
    seen = []  # the last block's MLP runs over the 9 concept slots only, not all 18 slots
    mlp = m.layers[n - 1].mlp
    m.layers[n - 1].mlp = lambda x: seen.append(x.shape[1]) or mlp(x)
    model.finish(model.mix(m.run_blocks(m.embed(tokens), 0, 2))[0], 2)
    m.layers[n - 1].mlp = mlp
    assert seen == [9]
    x = mx.random.normal((2, 6, 32), key=mx.random.key(3))
    allowed = mx.random.uniform(shape=(6, 6), key=mx.random.key(4)) > 0.3
    full = m.layers[0](x, allowed | mx.eye(6, dtype=mx.bool_))
    part = m.layers[0](x, allowed | mx.eye(6, dtype=mx.bool_), rows=slice(1, None, 2))
    assert mx.abs(part - full[:, 1::2]).max().item() < 1e-5
    kept = range(7)[1::2]  # rows 1, 3, 5 of 7 queries, over 10 keys (3 cached)
    expected = np.arange(10)[None] <= (np.array(list(kept)) + 3)[:, None]
    np.testing.assert_array_equal(np.array(row_mask(kept, 7, 10)), expected)
    assert row_mask(range(2)[1::2], 2, 12) is None


def test_compression_of_few_positions_equals_the_dense_product():
    """Decoding compresses by summing the k kept columns; training multiplies the dense z_k."""
    from cocomix_mlx.ops import SMALL

    model = cocomix_model(k=5, C=48)
    rows = SMALL // 5 + 1  # enough positions for the dense branch
    z = mx.random.normal((1, rows, 48), key=mx.random.key(1))
    mu, std = mx.zeros((1, rows, 1)), mx.ones((1, rows, 1))
    dense = model.compress(*model.select_concepts(z), mu, std)
    few = model.compress(*model.select_concepts(z[:, :3]), mu[:, :3], std[:, :3])
    idx, vals = model.select_concepts(z[:, :3])
    z_k = mx.put_along_axis(mx.zeros((1, 3, 48)), idx, vals, -1)
    textbook = model.compress_layer(z_k) + model.pre_bias
    assert mx.abs(few - dense[:, :3]).max().item() < 1e-5
    assert mx.abs(few - textbook).max().item() < 1e-5


def test_compiled_decoding_step_equals_the_named_steps():
    """``decode_steps`` (steps 1-3 compiled for one position per row) gives the concept vector
    and logits of ``predict_concepts`` → ``select_concepts`` → ``compress``, and follows the
    model's weights when they are replaced after it was first compiled."""
    from mlx.utils import tree_map

    model = cocomix_model(insert=2)
    h = mx.array(np.random.default_rng(5).normal(size=(3, 1, 32)).astype(np.float32) * 2)

    def named():
        z, mu, std = model.predict_concepts(h)
        return model.compress(*model.select_concepts(z), mu, std), z

    for _ in range(2):
        (fast_c, fast_z), (c, z) = model.decode_steps(h), named()
        assert mx.abs(fast_z - z).max().item() < 1e-5 and mx.abs(fast_c - c).max().item() < 1e-5
        model.update(tree_map(lambda p: p * 1.5 + 0.1, model.parameters()))
    assert mx.abs(model.decode_steps(h)[1] - fast_z).max().item() > 1e-3


def test_cached_decoding_equals_full_forward():
    for insert in (0, 2):
        model = cocomix_model(insert=insert)
        tokens = mx.array(np.random.default_rng(3).integers(0, 61, (2, 9)))
        full = model(tokens)
        cache = model.make_cache()
        parts = [model(tokens[:, :5], cache)] + [model(tokens[:, i:i + 1], cache) for i in range(5, 9)]
        assert mx.abs(mx.concatenate(parts, 1) - full).max().item() < 1e-4


def teacher_and_sae(seed=4, C=40, k=6):
    teacher = randomize(build_model(ModelConfig(**MCFG)), seed)
    sae = TopKSAE(SAEConfig(d=32, latents=C, k=k))
    rng = np.random.default_rng(seed)
    sae.update(tree_unflatten([(n, mx.array(rng.normal(size=v.shape).astype(np.float32) * 0.3))
                               for n, v in tree_flatten(sae.parameters())]))
    sae.latent_bias = mx.ones((C,))
    return teacher, sae


def np_teacher_loss(w, h, tokens, layer):
    x = _blocks(h, w, layer + 1, 4, 4, 1e-5)
    logits = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte.weight"].T
    logits = logits[:, :-1]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
    return (lse - picked).mean()


def test_attribution_matches_finite_differences():
    teacher, sae = teacher_and_sae()
    tokens = np.random.default_rng(5).integers(0, 61, (1, 6))
    layer = 1
    w = _model_weights(weights_np(teacher))
    h = w["wte.weight"][tokens] + w["wpe.weight"][:6]
    h = _blocks(h, w, 0, layer + 1, 4, 1e-5)
    g = np.zeros_like(h)
    eps = 1e-5
    for idx in np.ndindex(*h.shape):
        d = np.zeros_like(h)
        d[idx] = eps
        g[idx] = (np_teacher_loss(w, h + d, tokens, layer) - np_teacher_loss(w, h - d, tokens, layer)) / (2 * eps)
    assert np.abs(g[:, -1]).max() == 0  # the last position is not in the loss
    p = {n: np.array(v).astype(np.float64) for n, v in tree_flatten(sae.parameters())}
    x, mu, std = standardize(h)
    pre = (x - p["pre_bias"]) @ p["encoder.weight"].T + p["latent_bias"]
    keep = np.argsort(-pre, -1)[..., :6]
    z = np.zeros_like(pre)
    np.put_along_axis(z, keep, np.maximum(np.take_along_axis(pre, keep, -1), 0), -1)
    ref = (g @ p["decoder.weight"]) * z
    ours = np.array(attribution(teacher, sae, mx.array(tokens), layer))
    h_ours, _ = residual_and_grad(teacher, mx.array(tokens), layer)
    np.testing.assert_allclose(np.array(h_ours), h, atol=1e-4)
    np.testing.assert_allclose(ours, ref, atol=1e-5 * max(1, np.abs(ref).max()), rtol=1e-3)
    labels, valid = concept_labels(mx.array(ours), 4)
    assert np.array(valid).tolist() == [[1, 1, 1, 1, 1, 0]]
    picked = np.sort(np.take_along_axis(ours, np.array(labels), -1), -1)
    np.testing.assert_array_equal(picked, np.sort(ours, -1)[..., -4:])  # the 4 largest (ties aside)
    fast, fast_valid = attribution_labels(teacher, sae, mx.array(tokens), layer, 4)
    np.testing.assert_array_equal(np.sort(np.array(fast), -1)[:, :-1], np.sort(np.array(labels), -1)[:, :-1])
    np.testing.assert_array_equal(np.array(fast_valid), np.array(valid))
    act, act_valid = activation_labels(teacher, sae, mx.array(tokens), layer, 4)
    dense = np.array(activation_scores(teacher, sae, mx.array(tokens), layer))
    np.testing.assert_array_equal(np.sort(np.take_along_axis(dense, np.array(act), -1), -1),
                                  np.sort(dense, -1)[..., -4:])
    assert np.array(act_valid).all()


def test_sparse_top_equals_dense_top_k_including_zero_ties():
    rng = np.random.default_rng(11)
    C, k, k_attr = 40, 6, 4
    index = np.stack([rng.permutation(C)[:k] for _ in range(50)])
    values = rng.normal(size=(50, k)).astype(np.float32)
    values[:20] = -np.abs(values[:20])  # no positive score: the top-4 has zeros
    values[20:30, :3] = -np.abs(values[20:30, :3])
    values[20:30, 3:] = 0.0
    values[30] = 0.0  # all zero: masked
    dense = np.zeros((50, C), np.float32)
    np.put_along_axis(dense, index, values, -1)
    labels, valid = sparse_top(mx.array(values), mx.array(index), k_attr)
    labels = np.array(labels)
    assert [len(set(r)) for r in labels] == [k_attr] * 50
    np.testing.assert_array_equal(np.sort(np.take_along_axis(dense, labels, -1), -1),
                                  np.sort(dense, -1)[:, -k_attr:])
    np.testing.assert_array_equal(np.array(valid), (dense != 0).any(-1))


def test_concept_recall_counts_labels_in_the_predicted_top_k():
    z = np.random.default_rng(12).normal(size=(3, 5, 30)).astype(np.float32)
    labels = np.argsort(-z, -1)[..., :4].copy()
    labels[0, :, :2] = np.argsort(-z, -1)[0, :, 10:12]  # two of four outside the top 4
    valid = np.ones((3, 5), np.float32)
    valid[2] = 0
    recall = concept_recall(mx.array(z), mx.array(labels), mx.array(valid)).item()
    assert recall == pytest.approx((5 * 0.5 + 5 * 1.0) / 10)


def test_gradients_reach_predictor_through_kept_entries_and_concept_loss():
    model = cocomix_model(k=3, C=48)
    tokens = mx.array(np.random.default_rng(6).integers(0, 61, (2, 8)))
    targets = mx.array(np.random.default_rng(7).integers(0, 61, (2, 8)))
    _, z = model(tokens, return_concepts=True)
    kept = np.zeros(48, bool)
    kept[np.unique(np.argsort(-np.array(z), -1)[..., :3])] = True
    assert not kept.all()
    ntp_only = cocomix_objective(None, None, ObjectiveConfig(lam=0.0))
    grads = nn.value_and_grad(model, lambda m, x, y: ntp_only(m, x, y)[0])(model, tokens, targets)[1]
    gb = np.array(grads["concept_predictor"]["bias"])
    assert (gb[~kept] == 0).all() and (np.abs(gb[kept]) > 0).all()
    teacher, sae = teacher_and_sae(C=48, k=6)
    joint = cocomix_objective(teacher, sae, ObjectiveConfig(sae_layer=1, lam=0.1, k_attr=4))
    (loss, metrics), grads = nn.value_and_grad(model, joint)(model, tokens, targets)
    gb = np.array(grads["concept_predictor"]["bias"])
    assert (np.abs(gb[~kept]) > 0).all()  # the concept loss reaches every logit
    assert {"ntp_loss", "concept_loss", "concept_recall"} <= metrics.keys()
    np.testing.assert_allclose(loss.item(), (metrics["ntp_loss"] + 0.1 * metrics["concept_loss"]).item(),
                               rtol=1e-6)


@pytest.fixture(scope="module")
def teacher_and_sae_dirs(tiny_teacher, tmp_path_factory):
    from cocomix_mlx.models.sae import save_sae

    root = tmp_path_factory.mktemp("sae")
    sae = TopKSAE(SAEConfig(d=64, latents=256, k=16, layer=0))
    w = mx.random.normal((64, 256), key=mx.random.key(0))
    w = w / mx.linalg.norm(w, axis=0, keepdims=True)
    sae.decoder.weight, sae.encoder.weight = w, w.T
    save_sae(sae, root)
    return tiny_teacher, root


def cocomix_config(steps, teacher, sae, **train):
    from test_train import small_config

    cfg = small_config(steps, **train)
    cfg.train.mode = "cocomix"
    c = cfg.concept
    c.concept_dim, c.concept_num, c.insert_layer = 256, 8, 1
    o = cfg.objective
    o.k_attr, o.teacher, o.sae, o.sae_layer = 4, str(teacher), str(sae), 0
    return cfg


def test_cocomix_run_learns_loads_and_resumes(mobydick_data, teacher_and_sae_dirs, tmp_path):
    import json

    import cocomix_mlx as cm
    from cocomix_mlx.models import cocomix as cocomix_module

    from test_train import assert_resume_is_bit_exact, make_trainer

    teacher, sae = teacher_and_sae_dirs
    trainer = make_trainer(cocomix_config(200, teacher, sae, eval_every=200, save_every=200, lr=1e-2),
                           mobydick_data, tmp_path / "run")
    last = trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "concept_loss" in r and "val_loss" not in r]
    first = lambda key: np.mean([r[key] for r in steps[:10]])
    final = lambda key: np.mean([r[key] for r in steps[-10:]])
    assert final("concept_loss") < first("concept_loss") - 1.0
    assert final("ntp_loss") < first("ntp_loss") - 0.5
    assert final("concept_recall") > first("concept_recall")
    assert "val_concept_loss" in last
    assert last["val_ppl"] == pytest.approx(np.exp(last["val_ntp_loss"]))  # not of the joint loss
    model, tokenizer = cm.load(tmp_path / "run")
    assert isinstance(model, cocomix_module.Model) and model.args.insert_layer == 1
    tokens = mx.array([tokenizer.encode("Call me Ishmael.")])
    trainer.model.eval()
    assert mx.array_equal(model(tokens), trainer.model(tokens))

    assert_resume_is_bit_exact(lambda: cocomix_config(6, teacher, sae, save_every=3, eval_every=3),
                               mobydick_data, tmp_path / "resume")


def test_cli_modes_and_one_line_errors(mobydick_data, teacher_and_sae_dirs, tmp_path):
    from cocomix_mlx.models.sae import save_sae

    from conftest import cocomix

    teacher, sae = teacher_and_sae_dirs
    small = ["--steps", "2", "--n-embd", "64", "--n-layer", "2", "--n-head", "4", "--seq-len", "32",
             "--batch-size", "4", "--save-every", "2", "--eval-every", "2", "--eval-batches", "1"]
    base = ["pretrain", "--data", mobydick_data, "--teacher", teacher]
    r = cocomix(*base, "--mode", "cocomix", "--sae", sae, "--sae-layer", "0", "--out",
                tmp_path / "c", "--insert-layer", "1", *small)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c" / "config.json").read_text().count('"concept_dim": 256') == 1
    for mode in ("kd", "pause"):
        r = cocomix(*base, "--mode", mode, "--out", tmp_path / mode, "--insert-layer", "1", *small)
        assert r.returncode == 0, (mode, r.stderr)
    narrow = tmp_path / "narrow_sae"
    narrow.mkdir()
    save_sae(TopKSAE(SAEConfig(d=32, latents=64, k=8)), narrow)
    other_tok = tmp_path / "other"
    (tmp_path / "t.txt").write_text("A different tokenizer for the same words. " * 200)
    assert cocomix("tokenizer", "train", tmp_path / "t.txt", "--vocab-size", "300", "--out",
                   other_tok).returncode == 0
    assert cocomix("data", "prepare", tmp_path / "t.txt", "--tokenizer", other_tok, "--out",
                   tmp_path / "other_data").returncode == 0
    cases = [
        ([*base, "--mode", "cocomix", "--sae", sae, "--insert-layer", "7"], "insert_layer"),
        ([*base, "--mode", "cocomix", "--sae", narrow, "--insert-layer", "1"], "width"),
        ([*base, "--mode", "cocomix", "--sae", sae, "--sae-layer", "5", "--insert-layer", "1"],
         "out of range"),
        (["pretrain", "--data", tmp_path / "other_data", "--teacher", teacher, "--mode", "kd"],
         "tokenizer"),
        ([*base, "--mode", "cocomix", "--insert-layer", "1"], "--sae"),
    ]
    for i, (args, needle) in enumerate(cases):
        r = cocomix(*args, "--out", tmp_path / f"bad{i}", *small)
        lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in r.stderr, (args, r.stderr)
        assert not (tmp_path / f"bad{i}").exists()


def tiny_llama(hidden_size: int, intermediate_size: int, vocab_size: int, seed: int):
    """A random 3-block mlx-lm Llama (4 query heads, 2 key/value heads, tied head)."""
    from mlx_lm.models import llama

    args = llama.ModelArgs(model_type="llama", hidden_size=hidden_size, num_hidden_layers=3,
                           intermediate_size=intermediate_size, num_attention_heads=4,
                           num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=vocab_size,
                           tie_word_embeddings=True)
    mx.random.seed(seed)
    model = llama.Model(args)
    model.eval()
    return model


def test_llama_teacher_split_matches_mlx_lm_forward():
    teacher = tiny_llama(64, 96, 97, seed=3)
    tokens = mx.array(np.random.default_rng(13).integers(0, 97, (2, 128)))
    bb = backbone(teacher)
    h, upper = bb.split(tokens, 1)
    ours = bb.head(upper(h))
    np.testing.assert_allclose(np.array(bb.head(bb.hidden(tokens))), np.array(teacher(tokens)),
                               atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.array(ours), np.array(teacher(tokens)), atol=2e-5, rtol=1e-4)
    h, g = residual_and_grad(teacher, tokens, 1)
    assert h.shape == (2, 128, 64) and np.abs(np.array(g)[:, -1]).max() == 0
    sae = TopKSAE(SAEConfig(d=64, latents=256, k=8))
    sae.encoder.weight = sae.decoder.weight.T
    labels, valid = attribution_labels(teacher, sae, tokens, 1, 4)
    dense_labels, dense_valid = concept_labels(attribution(teacher, sae, tokens, 1), 4)
    np.testing.assert_array_equal(np.sort(np.array(labels), -1)[:, :-1],
                                  np.sort(np.array(dense_labels), -1)[:, :-1])
    np.testing.assert_array_equal(np.array(valid), np.array(dense_valid))
