"""SAE training throughput. Prints one JSON line.

    python benchmarks/sae_train.py [--steps 20]

d=256, C=4096, k=32, 1024 activations per step: the compiled SAE step alone (activations
from the buffer; with no dead latent, and with half the latents dead so that AuxK runs) and end to end (including the teacher forward that fills the buffer; a random
d=256 L=6 GPT-2 teacher reading layer 3, random tokens).
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from cocomix_mlx.backend import device_name
from cocomix_mlx.config import ModelConfig
from cocomix_mlx.models import build_model
from cocomix_mlx.sae_trainer import SAETrainConfig, SAETrainer


def fake_data(root: Path, vocab: int, n: int) -> Path:
    data = root / "data"
    data.mkdir()
    tokens = np.random.default_rng(0).integers(0, vocab, n, dtype=np.uint16)
    tokens.tofile(data / "train.bin")
    (data / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": vocab}))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cocomix-sae-bench-"))
    teacher = build_model(ModelConfig(vocab_size=8192, n_embd=256, n_layer=6, n_head=8,
                                      n_positions=256))
    teacher.eval()
    cfg = SAETrainConfig(layer=3, latents=4096, k=32, tokens=10**9, batch_tokens=1024,
                         seq_len=128, buffer_steps=args.steps, save_every=0, log_every=10**9)
    trainer = SAETrainer(cfg, teacher, fake_data(root, 8192, 2_000_000), root / "sae")
    batch = trainer.buffer.batch(0)

    def rate() -> float:
        for _ in range(3):
            mx.eval(trainer.train_step(batch), trainer.sae.parameters(), trainer.optimizer.state)
        start = time.perf_counter()
        for _ in range(args.steps):
            mx.eval(trainer.train_step(batch), trainer.sae.parameters(), trainer.optimizer.state)
        return args.steps * cfg.batch_tokens / (time.perf_counter() - start)

    mx.reset_peak_memory()
    step_only = rate()
    since_fired = trainer.counters["since_fired"]
    trainer.counters["since_fired"] = since_fired.at[::2].add(cfg.dead_window())  # half dead
    step_auxk = rate()
    trainer.counters["since_fired"] = since_fired
    trainer.step = args.steps  # the next step fills a fresh buffer
    cfg.tokens = 2 * args.steps * cfg.batch_tokens
    start = time.perf_counter()
    trainer.train()
    end_to_end = args.steps * cfg.batch_tokens / (time.perf_counter() - start)
    print(json.dumps({"d": 256, "latents": 4096, "k": 32, "batch_tokens": 1024,
                      "sae_step_activations_per_s": round(step_only),
                      "sae_step_with_auxk_activations_per_s": round(step_auxk),
                      "end_to_end_activations_per_s": round(end_to_end),
                      "peak_memory_mb": round(mx.get_peak_memory() / 2**20, 1),
                      "device": device_name(), "mlx": mx.__version__}))


if __name__ == "__main__":
    main()
