"""Conversion speed and memory for a 124M-parameter GPT-2-shaped checkpoint. Prints JSON.

    python benchmarks/convert.py [--format safetensors|bin]

Random weights in Hugging Face's layout (d=768, 12 blocks, V=50257, fp32) are written first;
then ``cocomix convert gpt2`` runs in a fresh process whose peak RSS is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_checkpoint(root: Path, fmt: str) -> Path:
    rng = np.random.default_rng(0)
    d, L, V, P = 768, 12, 50257, 1024
    w = {"transformer.wte.weight": (V, d), "transformer.wpe.weight": (P, d),
         "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
    for i in range(L):
        p = f"transformer.h.{i}."
        w.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,),
                  p + "ln_2.bias": (d,), p + "attn.c_attn.weight": (d, 3 * d),
                  p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d),
                  p + "attn.c_proj.bias": (d,), p + "mlp.c_fc.weight": (d, 4 * d),
                  p + "mlp.c_fc.bias": (4 * d,), p + "mlp.c_proj.weight": (4 * d, d),
                  p + "mlp.c_proj.bias": (d,)})
    arrays = {k: (rng.standard_normal(s, dtype=np.float32) * 0.02) for k, s in w.items()}
    src = root / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "vocab_size": V, "n_positions": P, "n_embd": d, "n_layer": L,
         "n_head": 12, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}))
    if fmt == "bin":
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, src / "pytorch_model.bin")
    else:
        import mlx.core as mx

        mx.save_safetensors(str(src / "model.safetensors"), {k: mx.array(v) for k, v in arrays.items()})
    return src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--format", choices=["safetensors", "bin"], default="safetensors")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cocomix-convert-bench-"))
    src = make_checkpoint(root, args.format)
    size = sum(f.stat().st_size for f in src.iterdir())
    hwm = "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    probe = f"import cocomix_mlx.cli.app, cocomix_mlx.convert, mlx.core as mx; mx.eval(mx.zeros(1)); {hwm}"
    run = (f"import sys; from cocomix_mlx.cli.app import app; "
           f"app(['convert', 'gpt2', {str(src)!r}, {str(root / 'out')!r}], standalone_mode=False); {hwm}")
    baseline = int(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                  text=True).stdout) * 1024
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", run], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = int(out.stdout.strip().splitlines()[-1]) * 1024
    print(json.dumps({"format": args.format, "parameters": 124_439_808,
                      "checkpoint_mb": round(size / 2**20, 1), "seconds": round(seconds, 2),
                      "peak_rss_mb": round(peak / 2**20, 1),
                      "process_baseline_mb": round(baseline / 2**20, 1),
                      "peak_over_size": round(peak / size, 2),
                      "peak_above_baseline_over_size": round((peak - baseline) / size, 2)}))


if __name__ == "__main__":
    main()
