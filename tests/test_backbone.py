"""The backbone interface: every model kind it covers reproduces the model's own forward from any
split point, the gradient reaches the residual it names, and the commands that read a teacher or
a model through it work on CoCoMix checkpoints and mlx-lm Llama-family checkpoints."""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from cocomix_mlx.config import ConceptConfig, ModelConfig
from cocomix_mlx.errors import ConfigError
from cocomix_mlx.models import build_model
from cocomix_mlx.models.backbone import backbone
from cocomix_mlx.ops import head_cross_entropy

from conftest import cocomix, english_text

ROOT = Path(__file__).resolve().parents[1]
MCFG = dict(vocab_size=61, n_positions=32, n_embd=32, n_layer=4, n_head=4)


def ours(mode: str, mixing: str = "interleave"):
    concept = ConceptConfig(concept_dim=48, concept_num=6, insert_layer=2, mixing=mixing)
    model = build_model(ModelConfig(**MCFG), seed=1, mode=mode, concept=concept)
    model.eval()
    return model


def mlx_lm_model(kind: str):
    """A random 3-block mlx-lm model of ``kind`` (grouped-query attention, untied head for
    qwen2 so both head paths are covered)."""
    import importlib

    module = importlib.import_module(f"mlx_lm.models.{kind}")
    fields = dict(model_type=kind, hidden_size=32, num_hidden_layers=3, intermediate_size=48,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                  vocab_size=61, tie_word_embeddings=kind != "qwen2")
    if kind in ("qwen3",):
        fields.update(head_dim=8, max_position_embeddings=64, rope_theta=10000.0)
    if kind == "llama":  # one sliding-window block
        fields.update(layer_types=["full_attention", "sliding_attention", "full_attention"],
                      sliding_window=5)
    mx.random.seed(7)
    model = module.Model(module.ModelArgs(**fields))
    model.eval()
    return model


MODELS = {
    "gpt2": lambda: ours("ntp"), "cocomix": lambda: ours("cocomix"),
    "cocomix-add": lambda: ours("cocomix", "add"), "cocomix-none": lambda: ours("cocomix", "none"),
    "pause": lambda: ours("pause"), "llama": lambda: mlx_lm_model("llama"),
    "qwen2": lambda: mlx_lm_model("qwen2"), "qwen3": lambda: mlx_lm_model("qwen3"),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_split_point_reproduces_the_forward(kind):
    model = MODELS[kind]()
    bb = backbone(model)
    tokens = mx.array(np.random.default_rng(0).integers(0, 61, (2, 12)))
    expected = np.array(model(tokens))
    np.testing.assert_allclose(np.array(bb.head(bb.hidden(tokens))), expected, atol=1e-5)
    for layer in range(bb.depth):
        h, upper = bb.split(tokens, layer)
        assert h.shape == (2, 12, bb.width)
        np.testing.assert_allclose(np.array(bb.head(upper(h))), expected, atol=1e-5)
        np.testing.assert_array_equal(np.array(bb.residual(tokens, layer)), np.array(h))
    with pytest.raises(ConfigError, match="out of range"):
        bb.split(tokens, bb.depth)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_llama_residual_is_mlx_lm_own_block_loop(kind):
    """The residual after block l equals mlx-lm's own forward with the blocks after l removed
    and the final norm made the identity."""
    model = mlx_lm_model(kind)
    tokens = mx.array(np.random.default_rng(1).integers(0, 61, (2, 12)))
    ours_h = backbone(model).residual(tokens, 1)
    inner = model.model
    layers, norm = inner.layers, inner.norm
    inner.layers, inner.norm = layers[:2], (lambda h: h)
    try:
        np.testing.assert_allclose(np.array(ours_h), np.array(inner(tokens)), atol=1e-6)
    finally:
        inner.layers, inner.norm = layers, norm


@pytest.mark.parametrize("layer", [1, 3])
def test_attribution_gradient_reaches_the_named_residual(layer):
    """Finite differences of the next-token loss through ``upper`` match ``g``, below the
    insertion point and at the concept slots after it."""
    from cocomix_mlx.concepts import residual_and_grad

    model = ours("cocomix")
    bb = backbone(model)
    tokens = mx.array(np.random.default_rng(2).integers(0, 61, (1, 10)))
    h, g = residual_and_grad(model, tokens, layer)
    _, upper = bb.split(tokens, layer)

    def loss(x):
        return head_cross_entropy(upper(x)[:, :-1], tokens[:, 1:], bb.head).item()

    assert np.abs(np.array(g)[:, -1]).max() == 0
    rng = np.random.default_rng(3)
    for _ in range(3):
        t, j = int(rng.integers(0, 9)), int(rng.integers(0, 32))
        e = mx.zeros(h.shape).at[0, t, j].add(1e-3)
        numeric = (loss(h + e) - loss(h - e)) / 2e-3
        assert numeric == pytest.approx(g[0, t, j].item(), rel=2e-2, abs=1e-3)


def test_unsupported_architecture_is_one_error_naming_the_families():
    from mlx_lm.models import gemma

    args = gemma.ModelArgs(model_type="gemma", hidden_size=32, num_hidden_layers=1,
                           intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=8, rms_norm_eps=1e-5, vocab_size=61)
    with pytest.raises(ConfigError, match="supported: our gpt2 and llama students, CoCoMix over either"):
        backbone(gemma.Model(args))
    with pytest.raises(ConfigError, match="unsupported model architecture"):
        backbone(nn.Linear(2, 2))


def test_sae_steering_refuses_interleaved_blocks_of_a_cocomix_model():
    from cocomix_mlx.generate import steered
    from cocomix_mlx.models.sae import SAEConfig, TopKSAE

    model = ours("cocomix")
    sae = TopKSAE(SAEConfig(d=32, latents=48, k=6, layer=3))
    with pytest.raises(ConfigError, match="interleaved"):
        steered(model, {0: 2.0}, 4, sae=sae)


# ---- the commands ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cocomix_data(tmp_path_factory):
    """English text in the shipped CoCoMix model's tokenizer."""
    from cocomix_mlx.data import prepare

    root = tmp_path_factory.mktemp("bbdata")
    (root / "text.txt").write_text(english_text(150_000), encoding="utf-8")
    prepare([str(root / "text.txt")], str(ROOT / "weights" / "cocomix"), str(root / "data"),
            val_fraction=0.1)
    return root / "data"


def test_a_cocomix_checkpoint_is_a_teacher_for_every_sae_command(cocomix_data, tmp_path):
    teacher = ROOT / "weights" / "cocomix"
    for layer in (1, 3):  # before the insertion point and over the interleaved blocks
        sae = tmp_path / f"sae{layer}"
        r = cocomix("sae", "train", "--teacher", teacher, "--layer", layer, "--data", cocomix_data,
                    "--latents", 256, "--k", 8, "--tokens", 8192, "--out", sae)
        assert r.returncode == 0, r.stderr
        r = cocomix("sae", "eval", "--sae", sae, "--teacher", teacher, "--data", cocomix_data,
                    "--batches", 2, "--json")
        assert r.returncode == 0, r.stderr
        quality = json.loads(r.stdout)
        assert quality["fvu"] < 1.5 and np.isfinite(quality["delta_loss"])
    out = tmp_path / "dict.json"
    r = cocomix("sae", "describe", "--sae", tmp_path / "sae1", "--teacher", teacher, "--data",
                cocomix_data, "--batches", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(out.read_text())["latents"]) == 256
    r = cocomix("pretrain", "--data", cocomix_data, "--mode", "cocomix", "--teacher", teacher,
                "--sae", tmp_path / "sae1", "--sae-layer", 1, "--concept-dim", 256, "--k-attr", 4,
                "--n-embd", 32, "--n-layer", 2, "--n-head", 2, "--insert-layer", 1,
                "--n-positions", 64, "--seq-len", 64, "--batch-size", 2, "--steps", 2,
                "--eval-every", 0, "--out", tmp_path / "student")
    assert r.returncode == 0, r.stderr


def test_eval_ppl_on_an_mlx_lm_llama_checkpoint(cocomix_data, tmp_path):
    """``eval ppl`` of a Llama checkpoint equals the cross-entropy of mlx-lm's own logits over
    the same windows, computed in NumPy."""
    from mlx_lm.models import llama

    from cocomix_mlx.data import TokenDataset

    args = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=48,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                vocab_size=4096, tie_word_embeddings=True, max_position_embeddings=64)
    mx.random.seed(4)
    model = llama.Model(llama.ModelArgs(**args))
    ckpt = tmp_path / "llama"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(args))
    mx.save_safetensors(str(ckpt / "model.safetensors"), dict(tree_flatten(model.parameters())))
    r = cocomix("eval", "ppl", "--model", ckpt, "--data", cocomix_data, "--max-batches", 2,
                "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    total, count = 0.0, 0
    for inputs, targets in TokenDataset(cocomix_data, "val").eval_batches(8, 64, 2):
        logits = np.array(model(mx.array(inputs)), np.float64)
        m = logits.max(-1, keepdims=True)
        lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
        total += (lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]).sum()
        count += targets.size
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)

    # --blocks N: disjoint N-token blocks of val.bin, read here straight from the file
    r = cocomix("eval", "ppl", "--model", ckpt, "--data", cocomix_data, "--blocks", 48,
                "--max-batches", 2, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    meta = json.loads((cocomix_data / "meta.json").read_text())
    tokens = np.fromfile(cocomix_data / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    blocks = tokens[:16 * 48].reshape(16, 48)
    logits = np.array(model(mx.array(blocks[:, :-1])), np.float64)
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    nll = lse - np.take_along_axis(logits, blocks[:, 1:, None], -1)[..., 0]
    assert got["tokens"] == 16 * 47
    assert got["loss"] == pytest.approx(nll.mean(), rel=1e-5)
    r = cocomix("eval", "ppl", "--model", ckpt, "--data", cocomix_data, "--blocks", 66)
    assert r.returncode == 2 and "--blocks 66 exceeds the model's context 64" in r.stderr


def test_token_ids_beyond_the_model_or_from_another_tokenizer_are_refused(
        cocomix_data, tiny_teacher, mobydick_data, tmp_path):
    """Data with ids past the teacher's vocabulary would index past its embedding (a segfault
    on the CPU); data from another tokenizer would be silently wrong. Both are one-line errors."""
    from cocomix_mlx.checkpoint import load_model
    from cocomix_mlx.errors import DataError
    from cocomix_mlx.models.sae import SAEConfig, TopKSAE
    from cocomix_mlx.sae_analysis import describe, evaluate_sae
    from cocomix_mlx.sae_trainer import SAETrainConfig, SAETrainer

    teacher, _ = load_model(tiny_teacher)  # vocabulary 1024; cocomix_data has 4096
    sae = TopKSAE(SAEConfig(d=64, latents=128, k=8, layer=0))
    with pytest.raises(DataError, match="vocabulary of 4096"):
        evaluate_sae(teacher, sae, 0, cocomix_data)
    with pytest.raises(DataError, match="vocabulary of 4096"):
        describe(teacher, None, sae, 0, cocomix_data)
    with pytest.raises(DataError, match="vocabulary of 4096"):
        SAETrainer(SAETrainConfig(layer=0, latents=128, k=8), teacher, cocomix_data, tmp_path / "s")
    for args in (["sae", "train", "--teacher", tiny_teacher, "--layer", 0, "--data", cocomix_data,
                  "--out", tmp_path / "s2"],
                 ["sae", "eval", "--sae", ROOT / "weights" / "sae", "--teacher", tiny_teacher,
                  "--data", cocomix_data],
                 ["eval", "ppl", "--model", ROOT / "weights" / "ntp", "--data", mobydick_data]):
        r = cocomix(*args)
        assert r.returncode == 2 and "another tokenizer" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
