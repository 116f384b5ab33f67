"""The same training step in PyTorch (Hugging Face GPT2LMHeadModel + torch.optim.AdamW), for
comparison with ``train_step.py``. Needs the ``torch`` extra and transformers.

    python benchmarks/torch_step.py [--steps 5] [--config d256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).parent))
from train_step import CONFIGS  # noqa: E402


def run(name: str, spec: dict, steps: int) -> dict:
    m = spec["model"]
    cfg = GPT2Config(n_embd=m["n_embd"], n_layer=m["n_layer"], n_head=m["n_head"],
                     vocab_size=m["vocab_size"], n_positions=m["n_positions"],
                     embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    shape = (spec["batch_size"], spec["seq_len"])
    x = torch.randint(0, m["vocab_size"], shape, generator=g)
    y = torch.randint(0, m["vocab_size"], shape, generator=g)

    def step():
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    dt = statistics.median(times)
    tokens = shape[0] * shape[1]
    return {"config": name, "framework": "torch", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "tokens_per_s": round(tokens / dt, 1),
            "step_ms": round(dt * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS))
    args = parser.parse_args()
    for name in args.config or ["d256"]:
        print(json.dumps(run(name, CONFIGS[name], args.steps)), flush=True)


if __name__ == "__main__":
    main()
