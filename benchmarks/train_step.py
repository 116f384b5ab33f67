"""Training-step throughput. Prints one JSON line per config.

    python benchmarks/train_step.py [--steps 5] [--config d256] [--mode ntp --mode cocomix ...]
                                    [--labels]

``--labels``: the CoCoMix step reads its labels from a label store (random labels here; the
step's cost does not depend on their values) instead of running the teacher and SAE.

Figures: tokens/s, step ms (median), peak memory, achieved GFLOP/s (6N + 12·L·T·d per token,
PaLM's count; N includes the tied LM head) and its fraction of the fp32 matmul peak measured in
the same process.
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import json
import platform
import statistics
import time

import mlx.core as mx
import numpy as np

from cocomix_mlx.backend import BLAS, device_name, matmul_gflops
from cocomix_mlx import objectives
from cocomix_mlx.config import ConceptConfig, ModelConfig, ObjectiveConfig, TrainConfig
from cocomix_mlx.models import build_model
from cocomix_mlx.models.sae import SAEConfig, TopKSAE
from cocomix_mlx.trainer import compile_steps, make_optimizer

CONFIGS = {
    "d256": dict(model=dict(n_embd=256, n_layer=6, n_head=8, vocab_size=8192, n_positions=256),
                 batch_size=8, seq_len=256,
                 concept=dict(concept_dim=4096, concept_num=32, insert_layer=3),
                 objective=dict(sae_layer=3)),
    "d512": dict(model=dict(n_embd=512, n_layer=8, n_head=8, vocab_size=8192, n_positions=512),
                 batch_size=4, seq_len=512),
}


def step_flops(mcfg: ModelConfig, seq_len: int) -> float:
    d, L, V = mcfg.n_embd, mcfg.n_layer, mcfg.vocab_size
    n = 12 * L * d * d + V * d
    return 6 * n + 12 * L * seq_len * d


def make_objective(mode: str, mcfg: ModelConfig, concept: ConceptConfig, objective: ObjectiveConfig,
                   stored: bool = False):
    """The objective of ``mode`` with a random teacher of the student's shape and a random SAE
    (``stored``: CoCoMix with labels read from a label store, no teacher in the step)."""
    if mode in ("ntp", "pause"):
        return objectives.ntp
    if mode == "cocomix" and stored:
        return objectives.cocomix_from_store(objective)
    teacher = build_model(mcfg, seed=1)
    teacher.eval()
    teacher.freeze()
    if mode == "kd":
        return objectives.kd(teacher, objective.kd_weight)
    sae = TopKSAE(SAEConfig(d=mcfg.n_embd, latents=concept.concept_dim, k=32))
    sae.encoder.weight = sae.decoder.weight.T
    sae.freeze()
    return objectives.cocomix(teacher, sae, objective)


def run(name: str, spec: dict, steps: int, mode: str, peak: float, stored: bool = False) -> dict:
    mcfg = ModelConfig(**spec["model"])
    tcfg = TrainConfig(batch_size=spec["batch_size"], seq_len=spec["seq_len"], steps=1000,
                       mode=mode)
    concept = ConceptConfig(**spec.get("concept", {}))
    objective = ObjectiveConfig(**spec.get("objective", {}))
    model = build_model(mcfg, mode=mode, concept=concept)
    optimizer = make_optimizer(tcfg)
    optimizer.init(model.trainable_parameters())
    stored = stored and mode == "cocomix"
    fns = compile_steps(model, make_objective(mode, mcfg, concept, objective, stored), optimizer, tcfg)
    rng = np.random.default_rng(0)
    shape = (tcfg.batch_size, tcfg.seq_len)
    x = mx.array(rng.integers(0, mcfg.vocab_size, shape, dtype=np.int32))
    y = mx.array(rng.integers(0, mcfg.vocab_size, shape, dtype=np.int32))
    if stored:  # a batch as LabeledDataset gives it: (targets, labels, flags)
        labels = rng.integers(0, concept.concept_dim, (*shape, objective.k_attr), dtype=np.int32)
        y = (y, mx.array(labels), mx.full(shape, 2, mx.uint8))
    for _ in range(2):
        mx.eval(fns.fused(x, y), model.state, optimizer.state)
    mx.reset_peak_memory()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        mx.eval(fns.fused(x, y), model.state, optimizer.state)
        times.append(time.perf_counter() - start)
    dt = statistics.median(times)
    tokens = tcfg.batch_size * tcfg.seq_len
    gflops = step_flops(mcfg, tcfg.seq_len) * tokens / dt / 1e9
    return {"config": name, "mode": mode, "labels": "store" if stored else "step", "d": mcfg.n_embd, "L": mcfg.n_layer,
            "H": mcfg.n_head, "V": mcfg.vocab_size, "T": tcfg.seq_len, "B": tcfg.batch_size,
            "tokens_per_s": round(tokens / dt, 1), "step_ms": round(dt * 1000, 1),
            "peak_memory_mb": round(mx.get_peak_memory() / 2**20, 1),
            "achieved_gflops": round(gflops, 1), "matmul_peak_gflops": round(peak, 1),
            "fraction_of_peak": round(gflops / peak, 3), "device": device_name(),
            "blas": BLAS.status, "machine": platform.machine(), "mlx": mx.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS))
    parser.add_argument("--mode", action="append", default=None)
    parser.add_argument("--labels", action="store_true",
                        help="cocomix reads its labels from a store (no teacher in the step)")
    args = parser.parse_args()
    peak = matmul_gflops(1024)["mlx"]
    for name in args.config or ["d256"]:
        ntp_ms = None
        for mode in args.mode or ["ntp"]:
            row = run(name, CONFIGS[name], args.steps, mode, peak, args.labels)
            ntp_ms = row["step_ms"] if mode == "ntp" else ntp_ms
            if ntp_ms:
                row["x_ntp"] = round(row["step_ms"] / ntp_ms, 2)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
