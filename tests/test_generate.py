"""Cached generation equals recomputation; steering; bad steering input."""

import mlx.core as mx
import numpy as np
import pytest

import cocomix_mlx as cm
from cocomix_mlx.checkpoint import write_model_files
from cocomix_mlx.config import ConceptConfig, ModelConfig
from cocomix_mlx.errors import ConfigError
from cocomix_mlx.generate import generate_tokens, parse_steer
from cocomix_mlx.models import build_model
from cocomix_mlx.tokenizer import train_tokenizer

from test_cocomix import randomize, tiny_llama


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    (root / "t.txt").write_text("the whale and the sea, the ship and the captain. " * 300)
    return train_tokenizer([str(root / "t.txt")], 320, root / "tok")


def saved(model, tok_dir, path):
    path.mkdir()
    write_model_files(path, model, tok_dir)
    return cm.load(path)


@pytest.mark.parametrize("mode", ["ntp", "cocomix"])
def test_cached_greedy_equals_recompute_for_128_tokens(mode, tok_dir, tmp_path):
    cfg = ModelConfig(vocab_size=320, n_positions=160, n_embd=32, n_layer=3, n_head=4)
    concept = ConceptConfig(concept_dim=64, concept_num=8, insert_layer=1)
    model, tok = saved(randomize(build_model(cfg, mode=mode, concept=concept), 0), tok_dir, tmp_path / "m")
    prompt = tok.encode("the whale and")
    out = generate_tokens(model, tok, prompt, max_tokens=128)
    assert len(out) == 128 and out == generate_tokens(model, tok, prompt, max_tokens=128)
    seq = mx.array([prompt + out])
    full = model(seq)[0, len(prompt) - 1:-1]  # recomputation: logits that chose each token
    assert mx.array_equal(mx.argmax(full, -1), mx.array(out))
    cache = model.make_cache()
    step = [model(seq[:, :len(prompt)], cache)[0, -1:]]
    step += [model(seq[:, i:i + 1], cache)[0] for i in range(len(prompt), seq.shape[1] - 1)]
    assert mx.abs(mx.concatenate(step) - full).max().item() <= 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_steering_changes_output_and_validates(tok_dir, tmp_path, family):
    cfg = ModelConfig(vocab_size=320, n_positions=64, n_embd=32, n_layer=3, n_head=4,
                      model_type=family, n_kv_head=2 if family == "llama" else 0)
    concept = ConceptConfig(concept_dim=64, concept_num=4, insert_layer=1)
    model, tok = saved(randomize(build_model(cfg, mode="cocomix", concept=concept), 1), tok_dir, tmp_path / "m")
    prompt = tok.encode("the ship")
    plain = generate_tokens(model, tok, prompt, max_tokens=24)
    _, z = model(mx.array([prompt]), return_concepts=True)
    weakest = int(mx.argmin(z[0, -1]).item())  # never in the TopK unless forced
    before = model(mx.array([prompt]))
    steered = generate_tokens(model, tok, prompt, max_tokens=24, steer={weakest: 10.0})
    assert steered != plain
    assert mx.array_equal(model(mx.array([prompt])), before)  # the model itself is untouched
    only_prompt = generate_tokens(model, tok, prompt, max_tokens=24, steer={weakest: 10.0}, span="prompt")
    assert only_prompt[0] == steered[0]
    assert parse_steer(["3=2.5", "whale=-1"]) == {"3": 2.5, "whale": -1.0}
    for bad in ({64: 2.0}, {"whale": 2.0}, {3: 11.0}):
        with pytest.raises(ConfigError):
            generate_tokens(model, tok, prompt, max_tokens=2, steer=bad)
    with pytest.raises(ConfigError):
        parse_steer(["3"])


def test_cli_generate_streams_and_rejects_bad_steering(tok_dir, tmp_path):
    from conftest import cocomix

    cfg = ModelConfig(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    concept = ConceptConfig(concept_dim=64, concept_num=4, insert_layer=1)
    saved(randomize(build_model(cfg, mode="cocomix", concept=concept), 2), tok_dir, tmp_path / "m")
    r = cocomix("generate", "--model", tmp_path / "m", "--prompt", "the whale", "-m", "8",
                "--steer", "5=3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the whale") and "generated 8" in r.stdout
    for steer in ("99=1", "5", "5=20"):
        r = cocomix("generate", "--model", tmp_path / "m", "--prompt", "the", "--steer", steer)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (steer, r.stderr)


def test_cli_concepts_lists_top_predicted_concepts(tok_dir, tmp_path):
    import json

    from conftest import cocomix

    cfg = ModelConfig(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    concept = ConceptConfig(concept_dim=64, concept_num=4, insert_layer=1)
    model, tok = saved(randomize(build_model(cfg, mode="cocomix", concept=concept), 3), tok_dir, tmp_path / "m")
    r = cocomix("concepts", "the whale", "--model", tmp_path / "m", "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    ids = tok.encode("the whale")
    _, z = model(mx.array([ids]), return_concepts=True)
    assert len(rows) == len(ids)
    for t, row in enumerate(rows):
        assert [c["index"] for c in row["concepts"]] == np.argsort(-np.array(z[0, t]))[:3].tolist()
    dictionary = {"latents": [{"index": i, "label": f"c{i}", "frequency": 0.1} for i in range(64)]}
    (tmp_path / "concepts.json").write_text(json.dumps(dictionary))
    r = cocomix("concepts", "the whale", "--model", tmp_path / "m", "--top", "3", "--json",
                "--concepts", tmp_path / "concepts.json")
    assert r.returncode == 0, r.stderr
    labelled = json.loads(r.stdout)
    assert all(c["label"] == f"c{c['index']}" for row in labelled for c in row["concepts"])
    assert cocomix("concepts", "the", "--model", tmp_path / "missing").returncode == 2


def check_sae_steering(model, tok):
    """Steering latent j by alpha at block 1 equals adding (alpha - 1) z_j std W_dec[:, j] to
    that block's output, in the forward and in cached generation; alpha 1 changes nothing."""
    from cocomix_mlx.generate import steered
    from cocomix_mlx.models.backbone import backbone
    from cocomix_mlx.models.sae import SAEConfig, TopKSAE

    sae = randomize(TopKSAE(SAEConfig(d=32, latents=48, k=6, layer=1)), 8)
    tokens = mx.array([tok.encode("the whale and the sea")])
    bb = backbone(model)
    h, upper = bb.split(tokens, 1)
    head = bb.head
    z, (mu, std) = sae.encode(h, return_stats=True)
    j = int(mx.argmax(z[0, -1]).item())
    same = steered(model, {j: 1.0}, tokens.shape[1], sae=sae)
    assert mx.abs(same(tokens) - head(upper(h))).max().item() < 1e-5
    boosted = steered(model, {j: 3.0}, tokens.shape[1], sae=sae)(tokens)
    expected = head(upper(h + 2.0 * z[..., j:j + 1] * std * sae.W_dec[:, j]))
    assert mx.abs(boosted - expected).max().item() < 1e-4
    assert mx.abs(model(tokens) - head(upper(h))).max().item() < 1e-5  # the model is untouched
    prompt = tok.encode("the ship")
    plain = generate_tokens(model, tok, prompt, max_tokens=16)
    out = generate_tokens(model, tok, prompt, max_tokens=16, steer={j: -10.0}, sae=sae)
    assert out != plain
    full = steered(model, {j: -10.0}, len(prompt), sae=sae)(mx.array([prompt + out]))
    assert mx.argmax(full[0, len(prompt) - 1:-1], -1).tolist() == out  # cached = recomputed
    with pytest.raises(ConfigError):
        generate_tokens(model, tok, prompt, max_tokens=2, steer={48: 2.0}, sae=sae)


def test_sae_steering_of_a_plain_model(tok_dir, tmp_path):
    cfg = ModelConfig(vocab_size=320, n_positions=64, n_embd=32, n_layer=3, n_head=4)
    check_sae_steering(*saved(randomize(build_model(cfg), 7), tok_dir, tmp_path / "m"))


def test_sae_steering_of_a_cocomix_model_below_its_insertion(tok_dir, tmp_path):
    cfg = ModelConfig(vocab_size=320, n_positions=64, n_embd=32, n_layer=3, n_head=4)
    concept = ConceptConfig(concept_dim=64, concept_num=4, insert_layer=2)
    model = randomize(build_model(cfg, mode="cocomix", concept=concept), 7)
    check_sae_steering(*saved(model, tok_dir, tmp_path / "m"))


def test_sae_steering_of_an_mlx_lm_llama(tok_dir):
    from mlx_lm.utils import load_tokenizer

    check_sae_steering(tiny_llama(32, 64, 320, seed=5), load_tokenizer(tok_dir))


def test_boosted_concept_makes_its_promoted_tokens_more_frequent(tok_dir, tmp_path):
    from cocomix_mlx.generate import steered

    cfg = ModelConfig(vocab_size=320, n_positions=64, n_embd=32, n_layer=3, n_head=4)
    concept = ConceptConfig(concept_dim=64, concept_num=4, insert_layer=1)
    model, tok = saved(randomize(build_model(cfg, mode="cocomix", concept=concept), 9), tok_dir, tmp_path / "m")
    prompt = tok.encode("the captain")
    x = mx.array([prompt])
    _, z = model(x, return_concepts=True)
    j = int(mx.argmin(z[0, -1]).item())
    plain_logits = model(x)[0, -1]
    boosted_logits = steered(model, {j: 10.0}, len(prompt))(x)[0, -1]
    promoted = set(np.argsort(-np.array(boosted_logits - plain_logits))[:16].tolist())

    def frequency(steer):
        hits = total = 0
        for seed in range(12):
            out = generate_tokens(model, tok, prompt, max_tokens=12, temp=1.0, seed=seed, steer=steer)
            hits += sum(t in promoted for t in out)
            total += len(out)
        return hits / total

    plain, boosted = frequency(None), frequency({j: 10.0})
    assert boosted > 1.5 * plain + 0.02, (plain, boosted)


def test_quantized_cocomix_checkpoint_loads_and_stays_close(tok_dir, tmp_path):
    import mlx.nn as nn

    from cocomix_mlx.quantize import quantize_checkpoint

    cfg = ModelConfig(vocab_size=320, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    concept = ConceptConfig(concept_dim=128, concept_num=8, insert_layer=1)
    model = build_model(cfg, mode="cocomix", concept=concept, seed=3)
    model, tok = saved(model, tok_dir, tmp_path / "m")
    tokens = mx.array([tok.encode("the whale and the sea")])
    ref, ref_z = model(tokens, return_concepts=True)
    # The concept logits move continuously with the weights; the next-token logits also through
    # the TopK, where a near tie can swap one kept concept for another (a jump, not drift).
    for bits, z_tol, tol in ((8, 0.02, 0.1), (4, 0.35, 0.35)):
        info = quantize_checkpoint(tmp_path / "m", tmp_path / f"q{bits}", bits=bits)
        assert info["bytes_after"] < info["bytes_before"] / (2.5 if bits == 8 else 4)
        q, _ = cm.load(tmp_path / f"q{bits}")
        assert isinstance(q.concept_predictor, nn.QuantizedLinear)
        logits, z = q(tokens, return_concepts=True)
        assert mx.abs(z - ref_z).max().item() < z_tol * mx.abs(ref_z).max().item()
        assert mx.abs(logits - ref).max().item() < tol * mx.abs(ref).max().item()
    with pytest.raises(ConfigError):
        quantize_checkpoint(tmp_path / "m", tmp_path / "q8", bits=8)
    with pytest.raises(ConfigError):
        quantize_checkpoint(tmp_path / "m", tmp_path / "q7", bits=7)


def test_generated_text_continues_the_prompt_with_gpt2_bpe(tmp_path):
    """mlx-lm's byte-level BPE detokenizer would drop the first token's leading space
    ("is" + "expected"); the streamed text must be exactly the generated tokens decoded."""
    from mlx_lm.utils import load_tokenizer

    from cocomix_mlx.generate import generate
    from cocomix_mlx.tokenizer import tokenizer_from_gpt2_files
    from conftest import gpt2_bpe_dir

    gpt2 = gpt2_bpe_dir()
    tok_dir = tokenizer_from_gpt2_files(gpt2 / "encoder.json", gpt2 / "vocab.bpe", tmp_path / "tok")
    cfg = ModelConfig(vocab_size=len(load_tokenizer(tok_dir)), n_positions=64, n_embd=32,
                      n_layer=2, n_head=4)
    model, tok = saved(randomize(build_model(cfg), 3), tok_dir, tmp_path / "m")
    prompt = tok.encode("The weather today is")
    spaced = 0
    for seed in range(8):
        ids = generate_tokens(model, tok, prompt, max_tokens=6, temp=1.0, seed=seed)
        text = generate(model, tok, prompt, max_tokens=6, temp=1.0, seed=seed)
        assert text == tok.decode(ids)
        spaced += tok.decode(ids[:1]).startswith(" ")
    assert spaced > 0


def test_generation_and_inspection_stay_inside_the_context(tok_dir, tmp_path):
    """By default generation stops where the context is full; a --max-tokens past it, a prompt
    longer than it, or a text to inspect longer than it are one-line errors (positions past the
    context have no learned embedding), for NTP and CoCoMix models alike, cached."""
    cfg = ModelConfig(vocab_size=320, n_positions=32, n_embd=32, n_layer=3, n_head=4)
    concept = ConceptConfig(concept_dim=64, concept_num=4, insert_layer=1)
    for mode in ("ntp", "cocomix"):
        model, tok = saved(randomize(build_model(cfg, mode=mode, concept=concept), 2), tok_dir,
                           tmp_path / mode)
        prompt = tok.encode("the ship and the sea")
        out = generate_tokens(model, tok, prompt, temp=1.0, seed=0)
        assert len(prompt) + len(out) == 32
        with pytest.raises(ConfigError, match=f"give {32 - len(prompt)} or fewer"):
            generate_tokens(model, tok, prompt, max_tokens=32)
        with pytest.raises(ConfigError, match="shorten the prompt"):
            generate_tokens(model, tok, list(range(5, 37)), max_tokens=1)
        if mode == "cocomix":
            from cocomix_mlx.generate import predicted_concepts

            with pytest.raises(ConfigError, match="give a shorter text"):
                predicted_concepts(model, tok, "the whale " * 40)
    from conftest import cocomix

    r = cocomix("generate", "--model", tmp_path / "ntp", "--prompt", "the ship", "--max-tokens", 99)
    assert r.returncode == 2 and r.stdout == "" and "runs past the model's context" in r.stderr


def test_sae_directory_with_its_dictionary_names_concepts_without_concepts_option(tmp_path):
    """`--sae DIR` reads DIR/concepts.json when `--concepts` is not given: steering by a label
    then equals steering with the dictionary named explicitly, and `concepts --sae` labels."""
    import json
    import shutil

    from conftest import WEIGHTS, cocomix

    sae = tmp_path / "sae"
    shutil.copytree(WEIGHTS / "sae", sae)
    label = json.loads((WEIGHTS / "concepts.json").read_text())["latents"][0]["label"]
    run = ["generate", "--model", WEIGHTS / "teacher", "--prompt", "The sea", "-m", "8",
           "--steer", f"{label}=8", "--sae"]
    r = cocomix(*run, sae)  # no dictionary yet: the label is unknown
    assert r.returncode == 2 and "unknown concept name" in r.stderr
    shutil.copy(WEIGHTS / "concepts.json", sae / "concepts.json")
    implicit = cocomix(*run, sae)
    explicit = cocomix(*run, WEIGHTS / "sae", "--concepts", WEIGHTS / "concepts.json")
    assert implicit.returncode == explicit.returncode == 0, implicit.stderr
    assert implicit.stdout.splitlines()[0] == explicit.stdout.splitlines()[0]
    rows = json.loads(cocomix("concepts", "The sea", "--model", WEIGHTS / "teacher", "--sae", sae,
                              "--json").stdout)
    assert all(c["label"] for row in rows for c in row["concepts"])
