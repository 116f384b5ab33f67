"""Generation speed. Prints one JSON line per measurement.

    python benchmarks/generate.py [--tokens 128]

(a) our GPT-2 class vs mlx-lm's own ``gpt2`` on the same checkpoint; (b) CoCoMix vs NTP decode of
the same size; both timed in turn, in alternating order, ``--repeats`` times, medians; (c) KV-cached vs full recomputation for 512 generated tokens. Random weights,
d=256 L=6 H=8, GPT-2's vocabulary (V=50257; BPE files from ../shared/tokenizers/gpt2), greedy.
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

from cocomix_mlx.backend import device_name
from cocomix_mlx.checkpoint import write_model_files
from cocomix_mlx.config import ConceptConfig, ModelConfig
from cocomix_mlx.models import build_model
from cocomix_mlx.tokenizer import tokenizer_from_gpt2_files

SHAPE = dict(n_embd=256, n_layer=6, n_head=8, n_positions=1024)


def checkpoint(root: Path, mode: str, vocab: int) -> Path:
    path = root / mode
    path.mkdir()
    concept = ConceptConfig(concept_dim=4096, concept_num=32, insert_layer=3)
    model = build_model(ModelConfig(vocab_size=vocab, **SHAPE), mode=mode, concept=concept)
    write_model_files(path, model, root / "tok")
    return path


def speed(model, tokenizer, prompt: list[int], tokens: int) -> dict:
    last = None
    for last in stream_generate(model, tokenizer, mx.array(prompt), max_tokens=tokens,
                                sampler=make_sampler(temp=0.0)):
        pass
    return {"prompt_tps": round(last.prompt_tps, 1), "decode_tps": round(last.generation_tps, 1),
            "generated": last.generation_tokens}


def alternate(models: dict, tokenizer, prompt: list[int], tokens: int, repeats: int) -> dict:
    """Each model timed ``repeats`` times, in turn and in alternating order (a b, b a, a b,
    ...): all runs and medians."""
    runs: dict[str, list[dict]] = {name: [] for name in models}
    order = list(models.items())
    for i in range(repeats):
        for name, model in (order if i % 2 == 0 else order[::-1]):
            runs[name].append(speed(model, tokenizer, prompt, tokens))
    return {name: {"decode_tps": statistics.median(r["decode_tps"] for r in rs),
                   "prompt_tps": statistics.median(r["prompt_tps"] for r in rs),
                   "decode_runs": [r["decode_tps"] for r in rs]} for name, rs in runs.items()}


def ratio(result: dict, a: str, b: str) -> float:
    return round(result[a]["decode_tps"] / result[b]["decode_tps"], 3)


def recompute(model, prompt: list[int], tokens: int) -> float:
    """Greedy decoding that reruns the whole sequence for every token; returns tokens/s."""
    seq = list(prompt)
    start = time.perf_counter()
    for _ in range(tokens):
        seq.append(int(mx.argmax(model(mx.array([seq]))[0, -1]).item()))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--skip-recompute", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cocomix-bench-"))
    gpt2 = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt2"
    tokenizer_from_gpt2_files(gpt2 / "encoder.json", gpt2 / "vocab.bpe", root / "tok")
    vocab = 50257
    base = {"device": device_name(), "mlx": mx.__version__, **SHAPE, "vocab_size": vocab}
    ntp_dir, cocomix_dir = checkpoint(root, "ntp", vocab), checkpoint(root, "cocomix", vocab)
    prompt = list(range(1, 65))
    ours, tok = cocomix_mlx.load(ntp_dir)
    theirs, _ = mlx_lm.load(str(ntp_dir))
    cocomix, _ = cocomix_mlx.load(cocomix_dir)
    for model in (ours, theirs, cocomix):
        speed(model, tok, prompt, 8)
    a = alternate({"ours": ours, "mlx_lm": theirs}, tok, prompt, args.tokens, args.repeats)
    print(json.dumps({**base, "case": "ntp_ours_vs_mlx_lm", **a,
                      "decode_ratio": ratio(a, "ours", "mlx_lm")}))
    b = alternate({"cocomix": cocomix, "ntp": ours}, tok, prompt, args.tokens, args.repeats)
    print(json.dumps({**base, "case": "cocomix_vs_ntp_decode", **b,
                      "decode_ratio": ratio(b, "cocomix", "ntp")}))
    for name, model in (() if args.skip_recompute else (("ntp", ours), ("cocomix", cocomix))):
        cached = speed(model, tok, prompt, 512)["decode_tps"]
        full = recompute(model, prompt, 512)
        print(json.dumps({**base, "case": f"{name}_cached_vs_recompute_512", "cached_tps": cached,
                          "recompute_tps": round(full, 1), "speedup": round(cached / full, 2)}))


if __name__ == "__main__":
    main()
