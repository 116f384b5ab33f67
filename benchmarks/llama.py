"""Llama-family students against GPT-2 and against mlx-lm. Prints one JSON line per measurement.

    python benchmarks/llama.py [--steps 10] [--tokens 256] [--repeats 6]

(a) Training step of ``llama-tiny`` (d 128, 8 blocks, 4 heads / 2 KV heads, V 8192, 16 × 128
tokens) and of the 8-block GPT-2 whose width gives the nearest parameter count, NTP and CoCoMix
from a label store (C 4096, insert 3), each timed after warm-up steps in the same process.
(b) Decoding with our Llama class vs mlx-lm's own ``llama`` on the same NTP checkpoint, and
(c) CoCoMix Llama vs NTP Llama decoding; both timed in turn, alternating, medians (d 256, 6
blocks, 8 heads / 4 KV heads, GPT-2's vocabulary from ../shared/tokenizers/gpt2, greedy).
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import json
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx_lm

from cocomix_mlx.backend import device_name, matmul_gflops
from cocomix_mlx.checkpoint import write_model_files
from cocomix_mlx.config import ConceptConfig, ModelConfig
from cocomix_mlx.models import build_model, config_from_hf, num_parameters
from cocomix_mlx.tokenizer import tokenizer_from_gpt2_files
from generate import alternate, ratio, speed
from train_step import run

TINY = dict(model_type="llama", n_embd=128, n_layer=8, n_head=4, n_kv_head=2, vocab_size=8192,
            n_positions=128)
STEP = dict(batch_size=16, seq_len=128, concept=dict(concept_dim=4096, concept_num=32,
                                                     insert_layer=3), objective=dict(sae_layer=3))
DECODE = dict(model_type="llama", n_embd=256, n_layer=6, n_head=8, n_kv_head=4, n_positions=1024)


def matched_gpt2() -> dict:
    """The 8-block GPT-2 (4 heads) whose parameter count is nearest llama-tiny's."""
    target = num_parameters(build_model(ModelConfig(**TINY)))
    widths = range(64, 257, 4)
    count = lambda d: num_parameters(build_model(ModelConfig(  # noqa: E731
        n_embd=d, n_layer=8, n_head=4, vocab_size=8192, n_positions=128)))
    d = min(widths, key=lambda d: abs(count(d) - target))
    return dict(n_embd=d, n_layer=8, n_head=4, vocab_size=8192, n_positions=128)


def training(steps: int) -> None:
    peak = matmul_gflops(1024)["mlx"]
    specs = {"llama-tiny": {**STEP, "model": TINY}, "gpt2-matched": {**STEP,
                                                                     "model": matched_gpt2()}}
    rows = {}
    for mode in ("ntp", "cocomix"):
        for name, spec in specs.items():
            row = run(name, spec, steps, mode, peak, stored=True)
            row["params"] = num_parameters(build_model(
                ModelConfig(**spec["model"]), mode=mode, concept=ConceptConfig(**STEP["concept"])))
            rows[name, mode] = row
            print(json.dumps(row), flush=True)
        a, b = rows["llama-tiny", mode], rows["gpt2-matched", mode]
        print(json.dumps({"case": f"train_{mode}_llama_vs_gpt2", "llama_tokens_per_s":
                          a["tokens_per_s"], "gpt2_tokens_per_s": b["tokens_per_s"],
                          "ratio": round(a["tokens_per_s"] / b["tokens_per_s"], 3),
                          "llama_params": a["params"], "gpt2_params": b["params"],
                          "device": device_name()}), flush=True)


def decoding(tokens: int, repeats: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="cocomix-llama-bench-"))
    gpt2 = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt2"
    tokenizer_from_gpt2_files(gpt2 / "encoder.json", gpt2 / "vocab.bpe", root / "tok")
    cfg = ModelConfig(vocab_size=50257, **DECODE)
    concept = ConceptConfig(concept_dim=4096, concept_num=32, insert_layer=3)
    paths = {}
    for mode in ("ntp", "cocomix"):
        paths[mode] = root / mode
        paths[mode].mkdir()
        write_model_files(paths[mode], build_model(cfg, mode=mode, concept=concept), root / "tok")
    theirs, tok = mlx_lm.load(str(paths["ntp"]))  # mlx-lm's own llama class
    ours = build_model(config_from_hf(json.loads((paths["ntp"] / "config.json").read_text()))
                       .model)
    ours.load_weights(str(paths["ntp"] / "model.safetensors"))
    cocomix, _ = cocomix_mlx.load(paths["cocomix"])
    prompt = list(range(1, 65))
    for model in (ours, theirs, cocomix):
        speed(model, tok, prompt, 8)
    base = {"device": device_name(), "mlx": mx.__version__, **DECODE, "vocab_size": 50257}
    a = alternate({"ours": ours, "mlx_lm": theirs}, tok, prompt, tokens, repeats)
    print(json.dumps({**base, "case": "llama_ntp_ours_vs_mlx_lm", **a,
                      "decode_ratio": ratio(a, "ours", "mlx_lm")}), flush=True)
    b = alternate({"cocomix": cocomix, "ntp": ours}, tok, prompt, tokens, repeats)
    print(json.dumps({**base, "case": "llama_cocomix_vs_ntp_decode", **b,
                      "decode_ratio": ratio(b, "cocomix", "ntp")}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    training(args.steps)
    decoding(args.tokens, args.repeats)


if __name__ == "__main__":
    main()
