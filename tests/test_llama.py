"""Llama-family students, NTP and CoCoMix, against independent references: a NumPy forward,
transformers' LlamaForCausalLM / Qwen3ForCausalLM and mlx-lm's own models; cached decoding,
shared initialisation, export/convert round trips and the one-line refusals."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from cocomix_mlx.checkpoint import load_model, write_model_files
from cocomix_mlx.config import ConceptConfig, ModelConfig
from cocomix_mlx.models import build_model

from conftest import cocomix
from reference import llama_logits
from test_cocomix import randomize

V = 61


def llama_cfg(**kw) -> ModelConfig:
    base = dict(model_type="llama", vocab_size=V, n_positions=128, n_embd=32, n_layer=4,
                n_head=4, n_kv_head=2)
    return ModelConfig(**{**base, **kw})


def llama(mode="ntp", seed=0, insert=2, positions="shared", k=5, C=48, **kw):
    concept = ConceptConfig(concept_dim=C, concept_num=k, insert_layer=insert, positions=positions)
    return randomize(build_model(llama_cfg(**kw), mode=mode, concept=concept), seed)


def weights_np(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def tokens(seed, shape=(2, 11)):
    return np.random.default_rng(seed).integers(0, V, shape)


def saved(model, path):
    path.mkdir()
    write_model_files(path, model, None)
    return path


@pytest.mark.parametrize("kw", [dict(), dict(qk_norm=True, head_dim=16, rope_theta=500.0),
                                dict(n_kv_head=4, tie_word_embeddings=False)],
                         ids=["gqa", "qk_norm", "mha_untied"])
def test_ntp_logits_equal_numpy_transformers_and_mlx_lm(kw, tmp_path):
    import torch
    import transformers

    from cocomix_mlx.convert_llama import export_llama

    model = llama(seed=1, **kw)
    x = tokens(2)
    ours = np.array(model(mx.array(x)))
    if model.args.tie_word_embeddings:
        ref, _ = llama_logits(weights_np(model), x, 4, model.args.num_key_value_heads,
                              theta=model.args.rope_theta, qk_norm=model.args.qk_norm)
        np.testing.assert_allclose(ours, ref, atol=5e-5, rtol=1e-4)
    ckpt = saved(model, tmp_path / "ckpt")
    theirs, config = load_model(ckpt)  # mlx-lm's own class on an NTP checkpoint
    assert type(theirs).__module__ == ("mlx_lm.models.qwen3" if "qk_norm" in kw
                                       else "mlx_lm.models.llama")
    np.testing.assert_allclose(np.array(theirs(mx.array(x))), ours, atol=2e-5, rtol=1e-4)
    export_llama(ckpt, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if "qk_norm" in kw else "LlamaForCausalLM")
    with torch.no_grad():
        logits = hf(torch.tensor(x)).logits.numpy()
    np.testing.assert_allclose(logits, ours, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("positions", ["shared", "consecutive"])
@pytest.mark.parametrize("insert", [0, 2, 3])
def test_cocomix_forward_equals_numpy(positions, insert):
    model = llama("cocomix", seed=3, insert=insert, positions=positions)
    x = tokens(4)
    logits, z = model(mx.array(x), return_concepts=True)
    ref_logits, ref_z = llama_logits(weights_np(model), x, 4, 2, insert=insert, k=5,
                                     positions=positions)
    np.testing.assert_allclose(np.array(z), ref_z, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.array(logits), ref_logits, atol=5e-5, rtol=1e-4)


def test_the_two_position_rules_differ_only_past_the_insertion_point():
    shared, consecutive = (llama("cocomix", seed=3, positions=p) for p in
                           ("shared", "consecutive"))
    for (name, a), (_, b) in zip(tree_flatten(shared.parameters()),
                                 tree_flatten(consecutive.parameters())):
        assert mx.array_equal(a, b), name
    x = mx.array(tokens(5))
    _, za = shared(x, return_concepts=True)
    _, zb = consecutive(x, return_concepts=True)
    assert mx.array_equal(za, zb)  # the concept is predicted below the insertion point
    assert mx.abs(shared(x) - consecutive(x)).max().item() > 1e-3


@pytest.mark.parametrize("positions", ["shared", "consecutive"])
@pytest.mark.parametrize("insert", [0, 2])
def test_greedy_cached_decoding_equals_recompute_for_64_tokens(positions, insert):
    model = llama("cocomix", seed=6, insert=insert, positions=positions)
    prompt = tokens(7, (1, 5))[0].tolist()
    cache = model.make_cache()
    logits = model(mx.array([prompt]), cache)[0, -1]
    out = []
    for _ in range(64):
        out.append(int(mx.argmax(logits).item()))
        logits = model(mx.array([[out[-1]]]), cache)[0, -1]
    full = model(mx.array([prompt + out]))[0, len(prompt) - 1:-1]
    assert mx.argmax(full, -1).tolist() == out
    assert cache[-1].offset == 2 * (len(prompt) + 64)  # slots: two per token past the insertion


@pytest.mark.parametrize("positions", ["shared", "consecutive"])
@pytest.mark.parametrize("insert", [0, 2])
def test_prefill_in_chunks_equals_one_pass(positions, insert):
    """Two multi-token calls on one cache (RoPE at a nonzero offset under a shifted causal
    mask), then single tokens: the logits of one pass over the whole sequence."""
    model = llama("cocomix", seed=8, insert=insert, positions=positions)
    x = mx.array(tokens(9, (2, 13)))
    cache = model.make_cache()
    parts = [model(x[:, :5], cache), model(x[:, 5:11], cache), model(x[:, 11:12], cache),
             model(x[:, 12:], cache)]
    np.testing.assert_allclose(np.array(mx.concatenate(parts, 1)), np.array(model(x)),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ntp_and_cocomix_of_one_seed_share_every_initial_value(family):
    kw = dict(vocab_size=V, n_positions=64, n_embd=32, n_layer=4, n_head=4)
    cfg = llama_cfg() if family == "llama" else ModelConfig(**kw)
    ntp = dict(tree_flatten(build_model(cfg, seed=7).parameters()))
    mixed = dict(tree_flatten(build_model(cfg, seed=7, mode="cocomix",
                                          concept=ConceptConfig(concept_dim=48, insert_layer=2))
                              .parameters()))
    assert set(ntp) < set(mixed)
    for name in ntp:
        assert mx.array_equal(ntp[name], mixed[name]), name
    other = dict(tree_flatten(build_model(cfg, seed=8).parameters()))
    weight = "model.embed_tokens.weight" if family == "llama" else "model.wte.weight"
    assert not mx.array_equal(ntp[weight], other[weight])
    assert abs(np.array(ntp[weight]).std() - 0.02) < 0.002


@pytest.mark.parametrize("mode", ["ntp", "cocomix"])
def test_export_then_convert_is_bit_exact(mode, tmp_path):
    from cocomix_mlx.convert_llama import convert_llama, export_llama

    model = llama(mode, seed=9, positions="consecutive")
    ckpt = saved(model, tmp_path / "ckpt")
    export_llama(ckpt, tmp_path / "hf")
    if mode == "cocomix":
        yaml = (tmp_path / "hf" / "config.yaml").read_text()
        assert "insert_layer_index: 2" in yaml and "concept_positions: consecutive" in yaml
    convert_llama(tmp_path / "hf", tmp_path / "back")
    back, config = load_model(tmp_path / "back")
    assert json.loads((ckpt / "config.json").read_text()).get("cocomix") == config.get("cocomix")
    a, b = dict(tree_flatten(model.parameters())), dict(tree_flatten(back.parameters()))
    assert a.keys() == b.keys()
    for name in a:
        assert mx.array_equal(a[name], b[name]), name
    x = mx.array(tokens(10))
    assert mx.array_equal(model(x), back(x))


@pytest.mark.parametrize("mode", ["ntp", "cocomix"])
def test_what_transformers_saves_converts_back(mode, tmp_path):
    """An export loaded by transformers and saved again by it (transformers 5 nests rope_theta
    under rope_parameters) converts back to the same model; a CoCoMix export's backbone loads
    in transformers."""
    import torch
    import transformers

    from cocomix_mlx.convert_llama import convert_llama, export_llama

    model = llama(mode, seed=15, rope_theta=500.0)
    export_llama(saved(model, tmp_path / "ckpt"), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    embed = hf.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(embed, np.array(model.model.embed_tokens.weight))
    if mode == "cocomix":
        return
    hf.save_pretrained(tmp_path / "resaved")
    convert_llama(tmp_path / "resaved", tmp_path / "back")
    back, config = load_model(tmp_path / "back")
    assert config["rope_theta"] == 500.0
    x = mx.array(tokens(16))
    np.testing.assert_allclose(np.array(back(x)), np.array(model(x)), atol=1e-5, rtol=1e-5)
    scaled = json.loads((tmp_path / "resaved" / "config.json").read_text())
    scaled["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}
    (tmp_path / "resaved" / "config.json").write_text(json.dumps(scaled))
    r = cocomix("convert", "llama", tmp_path / "resaved", tmp_path / "refused")
    assert r.returncode == 2 and "RoPE type 'llama3' is not supported" in r.stderr
    assert not (tmp_path / "refused").exists()


def test_llama_teacher_labels_a_llama_student(tmp_path):
    """Attribution labels of an mlx-lm Llama teacher (an NTP checkpoint of ours, as it loads)
    train a Llama CoCoMix student: the joint loss is finite and reaches the concept head."""
    import mlx.nn as nn

    from cocomix_mlx.config import ObjectiveConfig
    from cocomix_mlx.models.sae import SAEConfig, TopKSAE
    from cocomix_mlx.objectives import cocomix as cocomix_objective

    teacher, _ = load_model(saved(llama(seed=11), tmp_path / "teacher"))
    assert type(teacher).__module__ == "mlx_lm.models.llama"
    sae = randomize(TopKSAE(SAEConfig(d=32, latents=48, k=6, layer=1)), 12)
    student = llama("cocomix", seed=13, k=5, C=48)
    objective = cocomix_objective(teacher, sae, ObjectiveConfig(sae_layer=1, k_attr=4))
    x = mx.array(tokens(14, (2, 12)))
    (loss, metrics), grads = nn.value_and_grad(student, objective)(student, x[:, :-1], x[:, 1:])
    assert np.isfinite(loss.item()) and metrics["concept_loss"].item() > 0
    assert mx.abs(grads["concept_predictor"]["weight"]).max().item() > 0


@pytest.mark.parametrize("args,expected", [
    (["--n-kv-head", "3"], "model.n_kv_head (3) must divide model.n_head (4)"),
    (["--head-dim", "7"], "model.head_dim (7) is odd"),
    (["--insert-layer", "8", "--mode", "cocomix"], "insert_layer=8 must be in 0..3"),
    (["--dropout", "0.1"], "model.dropout is a GPT-2 option"),
])
def test_bad_llama_shapes_are_one_line_errors_and_write_nothing(args, expected, tmp_path,
                                                                mobydick_data):
    out = tmp_path / "run"
    r = cocomix("pretrain", "--data", mobydick_data, "--out", out, "--preset", "llama-tiny",
                "--n-layer", "4", "--steps", "1", *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert expected in r.stderr and not out.exists()


def test_gpt2_and_llama_checkpoints_are_refused_by_each_others_commands(tmp_path,
                                                                      mobydick_data):
    gpt2 = saved(randomize(build_model(ModelConfig(vocab_size=V, n_positions=32, n_embd=32,
                                                   n_layer=2, n_head=4)), 0), tmp_path / "gpt2")
    ntp = saved(llama(seed=0), tmp_path / "llama")
    cocomix("export", "llama", ntp, tmp_path / "hf")
    for args, expected in [
        (("export", "llama", gpt2, tmp_path / "o1"), "takes a Llama-family student"),
        (("export", "gpt2", ntp, tmp_path / "o2"), "is not an NTP GPT-2 checkpoint"),
        (("convert", "llama", gpt2, tmp_path / "o3"), "use `convert gpt2`"),
        (("convert", "gpt2", tmp_path / "hf", tmp_path / "o4"), "lacks"),
        (("pretrain", "--data", mobydick_data, "--model.qk_norm", "true", "--out", tmp_path / "o5"),
         "is a Llama-family option"),
    ]:
        r = cocomix(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert expected in r.stderr, (args, r.stderr)
        assert not args[-1].exists()
