"""Conversion from PyTorch (transformers GPT-2, official CoCoMix layout, OpenAI SAE) and back."""

import json
import pickle

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import cocomix_mlx as cm  # noqa: E402
from cocomix_mlx.checkpoint import load_model  # noqa: E402
from cocomix_mlx.convert import convert_cocomix, convert_gpt2, export_cocomix, export_gpt2  # noqa: E402
from cocomix_mlx.convert_sae import convert_sae  # noqa: E402
from cocomix_mlx.errors import CheckpointError, ConfigError  # noqa: E402

from conftest import cocomix, fake_hub, gpt2_bpe_dir, serve_handler  # noqa: E402
from test_sae import np_sae  # noqa: E402

GPT2 = gpt2_bpe_dir()


def tiny_hf(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=3, n_head=4,
                                  embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save_hf(model, path, safe):
    model.save_pretrained(str(path), safe_serialization=safe)
    for name in ("encoder.json", "vocab.bpe"):
        (path / name).write_bytes((GPT2 / name).read_bytes())


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("safe", [True, False])
def test_gpt2_conversion_matches_transformers_and_exports_back(tmp_path, safe):
    hf = tiny_hf()
    save_hf(hf, tmp_path / "hf", safe)
    summary = convert_gpt2(tmp_path / "hf", tmp_path / "ours")
    assert summary["tied_head"] and summary["parameters"] == sum(
        p.numel() for n, p in hf.named_parameters() if n != "lm_head.weight")
    model, tok = cm.load(tmp_path / "ours")
    tokens = [tok.encode("Hello world, the whale")]
    assert tokens[0][:2] == [15496, 995]
    np.testing.assert_allclose(np.array(model(mx.array(tokens))), hf_logits(hf, tokens), atol=1e-4)
    import mlx_lm
    theirs, _ = mlx_lm.load(str(tmp_path / "ours"))
    assert mx.abs(theirs(mx.array(tokens)) - model(mx.array(tokens))).max().item() < 1e-4
    export_gpt2(tmp_path / "ours", tmp_path / "back")
    back = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "back")).eval()
    np.testing.assert_allclose(hf_logits(back, tokens), hf_logits(hf, tokens), atol=1e-5)


def torch_cocomix_forward(hf, pre_bias, predictor, compress, tokens, insert, k):
    """DESIGN §2 in PyTorch on Hugging Face GPT-2 blocks: (logits, concept logits)."""
    t = hf.transformer
    ids = torch.tensor(tokens)
    h = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))
    for block in t.h[:insert]:
        h = block(h)[0] if isinstance(block(h), tuple) else block(h)
    mu = h.mean(-1, keepdim=True)
    std = (h - mu).std(-1, keepdim=True)
    x = (h - mu) / (std + 1e-5)
    z = predictor(x - pre_bias)
    idx = torch.topk(z, k, dim=-1).indices
    zk = torch.zeros_like(z).scatter(-1, idx, z.gather(-1, idx))
    c = (compress(zk) + pre_bias) * std + mu
    B, T, d = h.shape
    h = torch.stack([h, c], 2).reshape(B, 2 * T, d)
    for block in t.h[insert:]:
        out = block(h)
        h = out[0] if isinstance(out, tuple) else out
    h = t.ln_f(h.reshape(B, T, 2, d)[:, :, 1])
    return hf.lm_head(h), z


def test_official_cocomix_layout_converts_with_equal_logits_and_exports(tmp_path):
    hf = tiny_hf(1)
    torch.manual_seed(2)
    C, k, insert = 48, 6, 1
    pre_bias = torch.randn(32) * 0.1
    predictor, compress = torch.nn.Linear(32, C), torch.nn.Linear(C, 32)
    sd = {**hf.state_dict(), "transformer.pre_bias": pre_bias,
          **{f"transformer.concept_predictor.{n}": p for n, p in predictor.state_dict().items()},
          **{f"transformer.compress_layer.{n}": p for n, p in compress.state_dict().items()}}
    src = tmp_path / "run" / "ckpt"
    src.mkdir(parents=True)
    torch.save({n: v.contiguous() for n, v in sd.items()}, src / "pytorch_model.bin")
    hf.config.to_json_file(str(src / "config.json"))
    (tmp_path / "run" / "config.yaml").write_text(
        f"concept_dim: {C}\nconcept_num: {k}  # TopK\ninsert_layer_index: {insert}\nsae_layer_index: 5\n")
    convert_cocomix(src, tmp_path / "ours")
    model, _ = load_model(tmp_path / "ours")  # the official layout ships no tokenizer
    tokens = [[5, 17, 200, 31, 9, 4000, 12]]
    with torch.no_grad():
        ref_logits, ref_z = torch_cocomix_forward(hf, pre_bias, predictor, compress, tokens, insert, k)
    logits, z = model(mx.array(tokens), return_concepts=True)
    np.testing.assert_allclose(np.array(z), ref_z.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.array(logits), ref_logits.numpy(), atol=1e-4)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["cocomix"]["sae_layer"] == 5
    export_cocomix(tmp_path / "ours", tmp_path / "back")
    again = convert_cocomix(tmp_path / "back", tmp_path / "again")
    assert again["parameters"] == sum(v.numel() for n, v in sd.items() if n != "lm_head.weight"
                                      and not n.endswith((".attn.bias", ".attn.masked_bias")))
    (tmp_path / "run" / "config.yaml").write_text("concept_num: abc\ninsert_layer_index: 1\n")
    with pytest.raises(ConfigError, match="concept_num .* must be an integer, not 'abc'"):
        convert_cocomix(src, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_openai_sae_pt_converts_to_the_reference_latents(tmp_path):
    rng = np.random.default_rng(0)
    d, C, k = 24, 96, 8
    p = {"pre_bias": rng.standard_normal(d) * 0.1, "encoder.weight": rng.standard_normal((C, d)) * 0.3,
         "latent_bias": rng.standard_normal(C) * 0.1 + 0.2, "decoder.weight": rng.standard_normal((d, C)) * 0.3}
    sd = {n: torch.tensor(v, dtype=torch.float32) for n, v in p.items()}
    sd.update({"stats_last_nonzero": torch.zeros(C, dtype=torch.long),
               "latents_activation_frequency": torch.zeros(C), "latents_mean_square": torch.zeros(C),
               "activation": "TopK", "activation_state_dict": {"k": k, "postact_fn": "ReLU"}})
    torch.save(sd, tmp_path / "sae.pt")
    info = convert_sae(tmp_path / "sae.pt", tmp_path / "out", layer=5, source_model="gpt2")
    assert info["k"] == k and info["normalize"] and info["layer"] == 5
    sae = cm.load_sae(tmp_path / "out")
    h = rng.standard_normal((6, d)) * 2 + 0.5
    z, stats = sae.encode(mx.array(h.astype(np.float32)), return_stats=True)
    rz, rh = np_sae({n: v.astype(np.float64) for n, v in p.items()}, h, k)
    np.testing.assert_allclose(np.array(z), rz, atol=1e-4)
    np.testing.assert_allclose(np.array(sae.decode(z, stats)), rh, atol=1e-4)


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bad_inputs_are_one_line_errors_and_payloads_never_run(tmp_path):
    hf = tiny_hf()
    save_hf(hf, tmp_path / "hf", True)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    with open(evil / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": Payload(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused"):
        convert_gpt2(evil, tmp_path / "o1")
    assert not marker.exists() and not (tmp_path / "o1").exists()
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    (trunc / "model.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes()[:5000])
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    (wrong / "model.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    convert_gpt2(tmp_path / "hf", tmp_path / "exists")
    for args, needle in ((["gpt2", evil, tmp_path / "o2"], "refused"),
                         (["gpt2", trunc, tmp_path / "o3"], "corrupt"),
                         (["gpt2", wrong, tmp_path / "o4"], "do not fit"),
                         (["gpt2", tmp_path / "hf", tmp_path / "exists"], "--force"),
                         (["cocomix", tmp_path / "hf", tmp_path / "o5"], "missing pre_bias"),
                         (["sae", tmp_path / "hf" / "model.safetensors", tmp_path / "o6"], "TopK")):
        r = cocomix("convert", *args)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not marker.exists()
    with pytest.raises(ConfigError):
        export_cocomix(tmp_path / "exists", tmp_path / "o7")


def test_sharded_safetensors_saelens_and_quantized_conversion(tmp_path):
    hf = tiny_hf(3)
    hf.save_pretrained(str(tmp_path / "sharded"), max_shard_size="200KB")
    for name in ("encoder.json", "vocab.bpe"):
        (tmp_path / "sharded" / name).write_bytes((GPT2 / name).read_bytes())
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    r = cocomix("convert", "gpt2", tmp_path / "sharded", tmp_path / "ours", "--quantize", "8")
    assert r.returncode == 0, r.stderr
    model, _ = cm.load(tmp_path / "ours")
    tokens = [[1, 2, 3, 400, 5000]]
    assert np.abs(np.array(model(mx.array(tokens))) - hf_logits(hf, tokens)).max() < 0.05

    rng = np.random.default_rng(4)
    d, C, k = 16, 64, 4
    W_enc, W_dec = rng.standard_normal((d, C)) * 0.3, rng.standard_normal((C, d)) * 0.3
    b_enc, b_dec = rng.standard_normal(C) * 0.1, rng.standard_normal(d) * 0.1
    src = tmp_path / "saelens"
    src.mkdir()
    mx.save_safetensors(str(src / "sae_weights.safetensors"),
                        {n: mx.array(v.astype(np.float32)) for n, v in
                         dict(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec).items()})
    cfg = {"d_in": d, "d_sae": C, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": k},
           "normalize_activations": "layer_norm", "apply_b_dec_to_input": True, "hook_layer": 3,
           "model_name": "tiny"}
    (src / "cfg.json").write_text(json.dumps(cfg))
    assert convert_sae(src, tmp_path / "sae")["layer"] == 3
    h = rng.standard_normal((5, d)) * 3
    p = {"pre_bias": b_dec, "encoder.weight": W_enc.T, "latent_bias": b_enc, "decoder.weight": W_dec.T}
    rz, rh = np_sae(p, h, k)
    sae = cm.load_sae(tmp_path / "sae")
    np.testing.assert_allclose(np.array(sae.encode(mx.array(h.astype(np.float32)))), rz, atol=1e-4)
    (src / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "constant_norm_rescale"}))
    with pytest.raises(CheckpointError, match="no TopKSAE equivalent"):
        convert_sae(src, tmp_path / "sae2")


def serve(directory):
    """A static HTTP server on 127.0.0.1 for ``directory``; returns (base_url, shutdown)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    return serve_handler(handler)


def test_openai_sae_download_from_a_local_server(tmp_path, monkeypatch):
    C, d = 64, 16
    sd = {"pre_bias": torch.zeros(d), "encoder.weight": torch.randn(C, d), "latent_bias": torch.zeros(C),
          "decoder.weight": torch.randn(d, C), "activation": "TopK", "activation_state_dict": {"k": 4}}
    site = tmp_path / "site" / "gpt2-small" / "resid_post_mlp_v5_32k" / "autoencoders"
    site.mkdir(parents=True)
    torch.save(sd, site / "5.pt")
    base, shutdown = serve(tmp_path / "site")
    monkeypatch.setenv("COCOMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COCOMIX_OPENAI_SAE_BASE", base)
    try:
        r = cocomix("convert", "sae", "--openai", "gpt2-small", "--location", "resid_post_mlp",
                    "--layer", "5", tmp_path / "out")
        assert r.returncode == 0, r.stderr
        sae = cm.load_sae(tmp_path / "out")
        assert (sae.cfg.k, sae.cfg.layer, sae.cfg.source_model) == (4, 5, "gpt2-small")
        assert (tmp_path / "cache" / "openai-sae" / "gpt2-small" / "resid_post_mlp_v5_32k" / "5.pt").exists()
        r = cocomix("convert", "sae", "--openai", "gpt2-small", "--layer", "7", tmp_path / "missing")
        assert r.returncode == 2 and "cannot download" in r.stderr and not (tmp_path / "missing").exists()
    finally:
        shutdown()
    r = cocomix("convert", "sae", "--openai", "gpt2-small", "--layer", "7", tmp_path / "offline")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_hub_repo_id_download_and_offline_cache(tmp_path, monkeypatch):
    hf = tiny_hf(5)
    save_hf(hf, tmp_path / "repo", True)
    files = {f.name: f.read_bytes() for f in (tmp_path / "repo").iterdir()}
    endpoint, stop = fake_hub(files)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    try:
        r = cocomix("convert", "gpt2", "me/tiny", tmp_path / "a", "--revision", "main")
        assert r.returncode == 0, r.stderr
    finally:
        stop()
    model, tok = cm.load(tmp_path / "a")
    tokens = [tok.encode("Hello world")]
    np.testing.assert_allclose(np.array(model(mx.array(tokens))), hf_logits(hf, tokens), atol=1e-4)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cocomix("convert", "gpt2", "me/tiny", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    r = cocomix("convert", "gpt2", "me/tiny", tmp_path / "c")
    assert r.returncode == 2 and "offline" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_upload_pushes_every_file_of_the_converted_checkpoint(tmp_path, monkeypatch):
    save_hf(tiny_hf(6), tmp_path / "src", True)
    uploads = {}
    endpoint, stop = fake_hub({}, uploads)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    try:
        r = cocomix("convert", "gpt2", tmp_path / "src", tmp_path / "out", "--upload-repo", "me/up")
    finally:
        stop()
    assert r.returncode == 0, r.stderr
    assert "me/up/commit/" in r.stdout
    local = {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()}
    assert uploads == local and "model.safetensors" in uploads
    r = cocomix("convert", "gpt2", tmp_path / "src", tmp_path / "out2", "--upload-repo", "me/up")
    assert r.returncode == 2 and "upload to me/up failed" in r.stderr  # server gone
