"""The training step in PyTorch, for comparison with ``train_step.py``. Needs the ``torch`` extra
and transformers. Modes (``--mode``, repeatable; default all three, timed in one process):

* ``ntp``: Hugging Face GPT2LMHeadModel + torch.optim.AdamW, next-token cross-entropy.
* ``cocomix``: a PyTorch port of the official CoCoMix step (facebookresearch/RAM,
  projects/cocomix: ``GPT2CoCoMixModel`` and ``train_func/cocomix.py``), written from its
  description. Student: the GPT-2 blocks plus ``pre_bias``, ``concept_predictor`` (d→C) and
  ``compress_layer`` (C→d). Before block ``insert_layer`` the residual h is standardized
  (mean, unbiased std), the concept logits z = predictor(x - pre_bias) are kept at their top
  ``concept_num`` entries, compressed, de-standardized into a continuous concept c, and
  [h1, c1, h2, c2, ...] (2T slots) runs causally through the remaining blocks; the concept
  slots give the next-token logits (ln_f, tied head). As in the official model, the position
  embeddings are added once at the input (t = 0..T-1), so c_t shares h_t's position and nothing
  is re-encoded after interleaving. Labels come inside the step from a frozen teacher of the
  student's shape (random weights) and a random TopK SAE on its block ``sae_layer`` output:
  attribution a = (dL_teacher/dh @ W_dec) * SAE.encode(h), labels = top ``k_attr`` of a,
  positions with all-zero a left out. Loss = CE + lam * mean_i CE(z, label_i).
* ``cocomix-labels``: the same student step with the labels precomputed (no teacher, no SAE in
  the step): the student-only cost.

Each mode prints a JSON line; ``x_ntp`` is its step time over the NTP step time measured in the
same process (NTP is always timed first).

    python benchmarks/torch_step.py [--steps 5] [--config d256] [--mode ntp --mode cocomix ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).parent))
from train_step import CONFIGS  # noqa: E402

from cocomix_mlx.config import ConceptConfig, ObjectiveConfig  # noqa: E402

MODES = ("ntp", "cocomix", "cocomix-labels")
SAE_K = 32  # TopK of the SAE's activation


def gpt2(m: dict, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=m["n_embd"], n_layer=m["n_layer"],
                                      n_head=m["n_head"], vocab_size=m["vocab_size"],
                                      n_positions=m["n_positions"], embd_pdrop=0.0,
                                      attn_pdrop=0.0, resid_pdrop=0.0))


def embed(lm: GPT2LMHeadModel, x: torch.Tensor) -> torch.Tensor:
    tr = lm.transformer
    return tr.wte(x) + tr.wpe(torch.arange(x.shape[1], device=x.device))


def run_blocks(blocks, h: torch.Tensor) -> torch.Tensor:
    """Causal blocks without a mask (SDPA ``is_causal``, as flash-attn in the official run)."""
    for block in blocks:
        out = block(h)
        h = out[0] if isinstance(out, tuple) else out
    return h


def standardize(h: torch.Tensor, eps: float = 1e-5):
    mu = h.mean(-1, keepdim=True)
    std = (h - mu).std(-1, keepdim=True)  # unbiased, as torch.std in the official LN
    return (h - mu) / (std + eps), mu, std


class CoCoMixGPT2(nn.Module):
    """GPT-2 with the concept predictor and interleaved continuous concepts."""

    def __init__(self, m: dict, cc: ConceptConfig, seed: int = 0):
        super().__init__()
        self.lm = gpt2(m, seed)
        d, std = m["n_embd"], self.lm.config.initializer_range
        self.k, self.insert_layer = cc.concept_num, cc.insert_layer
        self.pre_bias = nn.Parameter(torch.zeros(d))
        self.concept_predictor = nn.Linear(d, cc.concept_dim)
        self.compress_layer = nn.Linear(cc.concept_dim, d)
        for lin in (self.concept_predictor, self.compress_layer):  # HF GPT-2 init
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor):
        """Next-token logits (B, T, V) from the concept slots, and concept logits (B, T, C)."""
        blocks = self.lm.transformer.h
        h = run_blocks(blocks[:self.insert_layer], embed(self.lm, x))
        xn, mu, std = standardize(h)
        z = self.concept_predictor(xn - self.pre_bias)
        keep = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, z.topk(self.k, -1).indices, True)
        c = (self.compress_layer(z * keep) + self.pre_bias) * std + mu
        h = torch.stack([h, c], 2).flatten(1, 2)  # (B, 2T, d): h1, c1, h2, c2, ...
        h = run_blocks(blocks[self.insert_layer:], h)
        return self.lm.lm_head(self.lm.transformer.ln_f(h[:, 1::2])), z


class TopKSAE(nn.Module):
    """OpenAI layout: pre_bias (d), encoder (C, d), latent_bias (C), decoder (d, C); random."""

    def __init__(self, d: int, latents: int, k: int, seed: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        enc = torch.randn(latents, d, generator=g) / d ** 0.5
        self.k = k
        self.register_buffer("pre_bias", torch.zeros(d))
        self.register_buffer("encoder", enc)
        self.register_buffer("latent_bias", torch.zeros(latents))
        self.register_buffer("decoder", enc.T.contiguous())

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        pre = (standardize(h)[0] - self.pre_bias) @ self.encoder.T + self.latent_bias
        top = pre.topk(self.k, -1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())


def attribution_labels(teacher, sae, x, y, layer: int, k_attr: int):
    """Top-``k_attr`` attribution latents per position and whether the attribution is non-zero."""
    blocks = teacher.transformer.h
    with torch.no_grad():
        h = run_blocks(blocks[:layer + 1], embed(teacher, x))
    h.requires_grad_(True)
    out = teacher.transformer.ln_f(run_blocks(blocks[layer + 1:], h))
    loss = F.cross_entropy(teacher.lm_head(out).flatten(0, 1), y.flatten())
    (g,) = torch.autograd.grad(loss, h)
    with torch.no_grad():
        a = (g @ sae.decoder) * sae.encode(h)
        return a.topk(k_attr, -1).indices, (a != 0).any(-1)


def concept_loss(z, labels, valid):
    """mean_i CE(z, label_i), averaged over the valid positions."""
    ce = -z.log_softmax(-1).gather(-1, labels).mean(-1)
    return (ce * valid).sum() / valid.sum().clamp(min=1)


def make_step(mode: str, spec: dict, x, y):
    m = spec["model"]
    cc = ConceptConfig(**spec.get("concept", CONFIGS["d256"]["concept"]))
    obj = ObjectiveConfig(**spec.get("objective", CONFIGS["d256"]["objective"]))
    model = (gpt2(m, 0) if mode == "ntp" else CoCoMixGPT2(m, cc)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1)
    labels = None
    if mode != "ntp":
        teacher = gpt2(m, 1).eval().requires_grad_(False)
        sae = TopKSAE(m["n_embd"], cc.concept_dim, SAE_K)
        labels = lambda: attribution_labels(teacher, sae, x, y, obj.sae_layer, obj.k_attr)  # noqa
        if mode == "cocomix-labels":
            fixed = labels()
            labels = lambda: fixed  # noqa: E731

    def step():
        if mode == "ntp":
            logits = model(x).logits
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        else:
            concept_labels, valid = labels()
            logits, z = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) \
                + obj.lam * concept_loss(z, concept_labels, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    return step


def time_step(step, steps: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(name: str, spec: dict, steps: int, modes: list[str]) -> list[dict]:
    m = spec["model"]
    g = torch.Generator().manual_seed(0)
    shape = (spec["batch_size"], spec["seq_len"])
    x = torch.randint(0, m["vocab_size"], shape, generator=g)
    y = torch.randint(0, m["vocab_size"], shape, generator=g)
    times = {}
    for mode in ["ntp"] + [md for md in modes if md != "ntp"]:
        times[mode] = time_step(make_step(mode, spec, x, y), steps)
    tokens = shape[0] * shape[1]
    return [{"config": name, "framework": "torch", "mode": mode, "torch": torch.__version__,
             "threads": torch.get_num_threads(),
             "tokens_per_s": round(tokens / times[mode], 1),
             "step_ms": round(times[mode] * 1000, 1),
             "x_ntp": round(times[mode] / times["ntp"], 2)} for mode in modes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS))
    parser.add_argument("--mode", action="append", choices=MODES)
    args = parser.parse_args()
    modes = list(dict.fromkeys(args.mode or MODES))
    for name in args.config or ["d256"]:
        for row in run(name, CONFIGS[name], args.steps, modes):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
