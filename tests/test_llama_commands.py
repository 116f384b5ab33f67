"""A Llama student through every command a GPT-2 student goes through: pretrain in every mode
(on the fly and from a label store), the SAE commands and ``labels build`` with a Llama student
as the teacher, generation with concept and SAE steering, ``concepts``, evaluation, ``quantize``,
``serve``, and mlx-lm on the NTP checkpoint."""

import json

import mlx.core as mx
import numpy as np
import pytest

from conftest import cocomix, english_text, post, start_server, stop_server
from test_harness import tasks  # noqa: F401  (the offline lm-eval tasks fixture)

SHAPE = ["--preset", "llama-tiny", "--n-embd", "32", "--n-layer", "3", "--n-head", "4",
         "--n-kv-head", "2", "--n-positions", "128", "--seq-len", "64", "--batch-size", "4",
         "--eval-every", "0", "--save-every", "0"]
PROMPT = "The method of the class"


def ok(*args):
    r = cocomix(*args)
    assert r.returncode == 0, (args, r.stderr)
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Token shards, an NTP Llama student (the teacher), its SAE and label store, and CoCoMix
    Llama students trained from the store and on the fly."""
    from cocomix_mlx.data import prepare
    from cocomix_mlx.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("llama_cmds")
    (root / "text.txt").write_text(english_text(200_000), encoding="utf-8")
    train_tokenizer([str(root / "text.txt")], 512, str(root / "tok"))
    prepare([str(root / "text.txt")], str(root / "tok"), str(root / "data"), val_fraction=0.1)
    data = root / "data"
    ok("pretrain", "--data", data, "--out", root / "ntp", *SHAPE, "--steps", 30, "--lr", 3e-3)
    ok("sae", "train", "--teacher", root / "ntp", "--layer", 1, "--data", data, "--latents", 128,
       "--k", 8, "--tokens", 8192, "--out", root / "sae")
    ok("labels", "build", "--teacher", root / "ntp", "--sae", root / "sae", "--data", data,
       "--out", root / "store", "--window", 64, "--stride", 64)
    ok("pretrain", "--data", data, "--out", root / "cocomix", "--labels", root / "store", *SHAPE,
       "--insert-layer", 1, "--concept-num", 8, "--steps", 4)
    return root


def test_ntp_checkpoint_is_an_mlx_lm_llama_that_generates(runs):
    """mlx-lm loads the NTP checkpoint as its own Llama and decodes greedily the tokens our own
    Llama student (the class that trained it) picks by full recomputation."""
    import mlx_lm
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    from cocomix_mlx.models import build_model, config_from_hf

    theirs, tokenizer = mlx_lm.load(str(runs / "ntp"))
    assert type(theirs).__module__ == "mlx_lm.models.llama"
    assert isinstance(mlx_lm.generate(theirs, tokenizer, prompt=PROMPT, max_tokens=8), str)
    ours = build_model(config_from_hf(json.loads((runs / "ntp" / "config.json").read_text()))
                       .model)
    ours.load_weights(str(runs / "ntp" / "model.safetensors"))
    prompt = tokenizer.encode(PROMPT)
    out = [int(t) for t, _ in generate_step(mx.array(prompt), theirs, max_tokens=16,
                                            sampler=make_sampler(temp=0.0))]
    tokens = list(prompt)
    for _ in range(16):
        tokens.append(int(mx.argmax(ours(mx.array([tokens]))[0, -1]).item()))
    assert out == tokens[len(prompt):]


def test_every_mode_trains_a_llama_student(runs, tmp_path):
    data, teacher, sae = runs / "data", runs / "ntp", runs / "sae"
    for mode, extra in (("cocomix", ["--teacher", teacher, "--sae", sae]), ("kd", ["--teacher",
                        teacher]), ("pause", []), ("cocomix", ["--teacher", teacher, "--sae", sae,
                                                                 "--mixing", "add"])):
        out = tmp_path / f"{mode}-{len(extra)}"
        r = ok("pretrain", "--data", data, "--out", out, "--mode", mode, *extra, *SHAPE,
               "--insert-layer", 1, "--concept-num", 8, "--steps", 2)
        assert "llama model" in r.stdout
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "llama"
        assert ("cocomix" in config) == (mode in ("cocomix", "pause"))
    ok("pretrain", "--data", data, "--out", tmp_path / "resumed", "--labels", runs / "store",
       *SHAPE, "--insert-layer", 1, "--steps", 2)
    ok("pretrain", "--data", data, "--out", tmp_path / "resumed", "--resume")


def test_sae_commands_read_a_llama_student(runs, tmp_path):
    r = ok("sae", "eval", "--sae", runs / "sae", "--teacher", runs / "ntp", "--data",
           runs / "data", "--batches", 2, "--json")
    quality = json.loads(r.stdout)
    assert quality["fvu"] < 1.5 and np.isfinite(quality["delta_loss"])
    ok("sae", "describe", "--sae", runs / "sae", "--teacher", runs / "ntp", "--data",
       runs / "data", "--batches", 2, "--out", tmp_path / "dict.json")
    assert len(json.loads((tmp_path / "dict.json").read_text())["latents"]) == 128
    meta = json.loads((runs / "store" / "meta.json").read_text())
    assert meta["complete"] and meta["teacher"]["width"] == 32 and meta["layer"] == 1


def test_generation_steering_and_concepts(runs):
    text = lambda r: r.stdout.rsplit("\n", 2)[0]  # noqa: E731  (the timing line left out)
    plain = text(ok("generate", "--model", runs / "cocomix", "--prompt", PROMPT, "--max-tokens",
                    12))
    rows = json.loads(ok("concepts", PROMPT, "--model", runs / "cocomix", "--top", 3,
                         "--json").stdout)
    assert len(rows) > 2 and all(len(row["concepts"]) == 3 for row in rows)
    top = [c["index"] for c in rows[-1]["concepts"]]  # predicted at the end
    ok("generate", "--model", runs / "cocomix", "--prompt", PROMPT, "--max-tokens", 12,
       *sum([["--steer", f"{i}=-10"] for i in top], []))  # what it changes: test_generate.py
    assert plain.strip()
    r = ok("concepts", PROMPT, "--model", runs / "ntp", "--sae", runs / "sae", "--top", 1,
           "--json")
    active = json.loads(r.stdout)[-1]["concepts"][0]["index"]  # fires at the last position
    sae_plain = ok("generate", "--model", runs / "ntp", "--prompt", PROMPT, "--max-tokens", 12)
    sae_steered = ok("generate", "--model", runs / "ntp", "--sae", runs / "sae", "--prompt",
                     PROMPT, "--max-tokens", 12, "--steer", f"{active}=-10")
    assert text(sae_steered) != text(sae_plain)


def test_evaluation_and_quantization(runs, tasks, tmp_path, monkeypatch):  # noqa: F811
    r = ok("eval", "ppl", "--model", runs / "cocomix", "--data", runs / "data", "--max-batches",
           2, "--json")
    assert np.isfinite(json.loads(r.stdout)["loss"])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ok("eval", "harness", "--tasks", "mini_mc,mini_wiki", "--include", tasks, "--batch-size", 4,
       "--model", runs / "cocomix", "--compare", runs / "ntp", "--json", tmp_path / "h.json")
    assert len(json.loads((tmp_path / "h.json").read_text())) == 2
    ok("eval", "mc", "--model", runs / "cocomix", "--tasks", tasks / "mc.jsonl", "--json")
    (tmp_path / "held.txt").write_text(english_text(30_000, skip_chars=300_000))
    ok("eval", "lambada", "--model", runs / "cocomix", "--text", tmp_path / "held.txt", "--n",
       10, "--json")
    ok("quantize", runs / "cocomix", tmp_path / "q8", "--bits", 8)
    from cocomix_mlx.checkpoint import load_model

    full, _ = load_model(runs / "cocomix")
    quantized, _ = load_model(tmp_path / "q8")
    x = mx.array([[3, 17, 40, 99, 5, 6]])
    assert mx.abs(full(x) - quantized(x)).max().item() < 0.05 * mx.abs(full(x)).max().item()


def test_the_server_generates_steers_and_shows_concepts(runs):
    import openai

    url, proc = start_server("--model", runs / "cocomix")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0, timeout=120)
        r = client.completions.create(model="cocomix", prompt=PROMPT, max_tokens=10,
                                      temperature=0)
        from cocomix_mlx.checkpoint import load
        from cocomix_mlx.generate import generate

        assert r.choices[0].text == generate(*load(runs / "cocomix"), PROMPT, max_tokens=10)
        status, body = post(url + "/v1/concepts", {"text": PROMPT, "top": 3})
        assert status == 200 and body["kind"] == "cocomix" and body["data"]
    finally:
        stop_server(proc)
