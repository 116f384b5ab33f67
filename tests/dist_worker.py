"""One data-parallel training step; run directly (1 process) or under ``mlx.launch -n 2``;
argv[2] names the student family (gpt2, the default, or llama).

Writes the updated parameters and the loss (rank 0 only) to the path given as argv[1].
"""

import cocomix_mlx  # noqa: F401

import sys

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from cocomix_mlx.config import ModelConfig, TrainConfig
from cocomix_mlx.models import build_model
from cocomix_mlx.objectives import get_objective
from cocomix_mlx.trainer import compile_steps, make_optimizer

group = mx.distributed.init()
rank, world = group.rank(), group.size()
family = sys.argv[2] if len(sys.argv) > 2 else "gpt2"
mcfg = ModelConfig(vocab_size=101, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                   model_type=family, n_kv_head=2 if family == "llama" else 0)
tcfg = TrainConfig(batch_size=4, seq_len=16, steps=10, lr=1e-2)
model = build_model(mcfg, seed=0)
optimizer = make_optimizer(tcfg)
optimizer.init(model.trainable_parameters())
steps = compile_steps(model, get_objective("ntp"), optimizer, tcfg, world)
rng = np.random.default_rng(7)
tokens = rng.integers(0, mcfg.vocab_size, size=(tcfg.batch_size, tcfg.seq_len + 1), dtype=np.int32)
rows = tcfg.batch_size // world
local = tokens[rank * rows:(rank + 1) * rows]
loss, _, norm = steps.fused(mx.array(local[:, :-1]), mx.array(local[:, 1:]))
loss = mx.distributed.all_sum(loss) / world
mx.eval(loss, norm, model.parameters())
if rank == 0:
    out = dict(tree_flatten(model.parameters()))
    out["loss"], out["grad_norm"] = loss, norm
    mx.save_safetensors(sys.argv[1], out)
