"""Generic training loop: AdamW with PyTorch semantics, warmup + cosine schedule, clipping,
gradient accumulation, a compiled step, data parallelism, evaluation, atomic checkpoints and
bit-exact resume. Objectives plug in as functions ``(model, inputs, targets) -> (loss, metrics)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map, tree_unflatten

from . import files
from .checkpoint import write_model_files
from .rundir import RunDirectory, largest_magnitude
from .config import Config, dumps_toml, from_dict
from .data import BATCH_ORDERS, TokenDataset, check_vocab, load_meta
from .errors import CheckpointError, ConfigError
from .objectives import Objective

Callback = Callable[[str, dict[str, Any]], None]


def lr_schedule(cfg) -> Callable[[mx.array], mx.array]:
    """Linear warmup to the peak over ``warmup`` steps, then cosine to ``min_lr_ratio * peak``."""
    peak, warmup = cfg.lr, cfg.warmup()
    floor = peak * cfg.min_lr_ratio
    decay_steps = max(1, cfg.steps - warmup)

    def schedule(step: mx.array) -> mx.array:
        step = mx.array(step, dtype=mx.float32)
        warm = peak * (step + 1) / warmup
        progress = mx.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = floor + 0.5 * (peak - floor) * (1 + mx.cos(math.pi * progress))
        return mx.where(step < warmup, warm, cosine)

    return schedule


def make_optimizer(cfg) -> optim.Optimizer:
    """AdamW with bias correction (PyTorch semantics). ``decay_all=False`` exempts 1-D
    parameters (biases, LayerNorms) from weight decay."""
    kw = dict(learning_rate=lr_schedule(cfg), betas=[cfg.beta1, cfg.beta2], eps=cfg.eps,
              bias_correction=True)
    if cfg.decay_all:
        return optim.AdamW(weight_decay=cfg.weight_decay, **kw)
    return optim.MultiOptimizer(
        [optim.AdamW(weight_decay=cfg.weight_decay, **kw), optim.AdamW(weight_decay=0.0, **kw)],
        [lambda path, weight: weight.ndim >= 2],
    )


@dataclass
class Steps:
    fused: Callable  # (inputs, targets) -> (loss, metrics, grad_norm); updates the model
    grad: Callable  # (inputs, targets) -> (loss, metrics, grads)
    apply: Callable  # grads -> grad_norm; averages over processes, clips, updates
    eval: Callable  # (inputs, targets) -> (loss, metrics)


def compile_steps(model: nn.Module, objective: Objective, optimizer: optim.Optimizer, cfg,
                  world: int = 1) -> Steps:
    """The training and evaluation functions, compiled over model, optimizer and RNG state."""
    loss_and_grad = nn.value_and_grad(model, objective)

    def grad_step(inputs, targets):
        (loss, metrics), grads = loss_and_grad(model, inputs, targets)
        return loss, metrics, grads

    def apply_step(grads):
        if world > 1:
            grads = nn.average_gradients(grads)
        grads, norm = optim.clip_grad_norm(grads, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        optimizer.update(model, grads)
        return norm

    def fused_step(inputs, targets):
        loss, metrics, grads = grad_step(inputs, targets)
        return loss, metrics, apply_step(grads)

    def eval_step(inputs, targets):
        return objective(model, inputs, targets)

    if not cfg.compile:
        return Steps(fused_step, grad_step, apply_step, eval_step)
    state = [model.state, optimizer.state, mx.random.state]
    wrap = lambda f: mx.compile(f, inputs=state, outputs=state)  # noqa: E731
    return Steps(wrap(fused_step), wrap(grad_step), wrap(apply_step),
                 mx.compile(eval_step, inputs=state))


@dataclass
class RunState:
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0


class Trainer:
    """Train ``model`` on token shards with ``objective``; rank 0 writes ``out_dir``."""

    def __init__(self, cfg: Config, model: nn.Module, objective: Objective, data_dir: str | Path,
                 out_dir: str | Path):
        self.cfg, self.model, self.objective = cfg, model, objective
        self.out_dir = Path(out_dir)
        self.group = mx.distributed.init()
        self.rank, self.world = self.group.rank(), self.group.size()
        self.run_dir = RunDirectory(self.out_dir, writer=self.rank == 0)
        t = cfg.train
        if t.batch_size % self.world:
            raise ConfigError(f"batch_size {t.batch_size} is not divisible by {self.world} processes")
        if t.seq_len > cfg.model.n_positions:
            raise ConfigError(f"seq_len {t.seq_len} exceeds the model's n_positions "
                              f"{cfg.model.n_positions}; lower --seq-len or raise --n-positions")
        self.data_dir = Path(data_dir)
        self.meta = load_meta(self.data_dir)
        check_vocab(self.meta, cfg.model.vocab_size)
        self.train_data, self.val_data = open_datasets(cfg, self.data_dir)
        if t.batch_order not in BATCH_ORDERS:
            raise ConfigError(f"batch_order must be one of {', '.join(BATCH_ORDERS)}, not "
                              f"{t.batch_order!r}")
        if t.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, not {t.dtype}")
        if t.dtype != "float32":
            model.set_dtype(getattr(mx, t.dtype))
        self.optimizer = make_optimizer(t)
        self.optimizer.init(model.trainable_parameters())
        self.state = RunState()
        self._build_steps()

    def _build_steps(self) -> None:
        self.steps = compile_steps(self.model, self.objective, self.optimizer, self.cfg.train,
                                   self.world)

    def _local_rows(self, batch):
        """This process's share of the rows of every array in ``batch``."""
        def rows(array: np.ndarray) -> mx.array:
            n = array.shape[0] // self.world
            return mx.array(array[self.rank * n:(self.rank + 1) * n])

        return tree_map(rows, batch)

    def train_step(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[float, dict, float]:
        """One optimizer step on a global batch of ``grad_accum * batch_size`` rows."""
        t = self.cfg.train
        # Dropout randomness is a function of (seed, step, rank) alone, so a resumed run
        # draws the same masks as an uninterrupted one.
        mx.random.seed((t.seed * 1_000_003 + self.state.step) * 4099 + self.rank)
        if t.grad_accum == 1:
            loss, metrics, norm = self.steps.fused(self._local_rows(inputs), self._local_rows(targets))
            mx.eval(loss, metrics, norm, self.model.state, self.optimizer.state)
        else:
            total, sums, acc = 0.0, None, None
            for i in range(t.grad_accum):
                sl = slice(i * t.batch_size, (i + 1) * t.batch_size)
                loss, metrics, grads = self.steps.grad(
                    *self._local_rows(tree_map(lambda a: a[sl], (inputs, targets))))
                acc = grads if acc is None else tree_map(mx.add, acc, grads)
                sums = metrics if sums is None else tree_map(mx.add, sums, metrics)
                total = loss if i == 0 else total + loss
                mx.eval(acc, sums, total)
            scale = 1.0 / t.grad_accum
            norm = self.steps.apply(tree_map(lambda g: g * scale, acc))
            loss, metrics = total * scale, tree_map(lambda m: m * scale, sums)
            mx.eval(loss, metrics, norm, self.model.state, self.optimizer.state)
        if self.world > 1:
            loss, metrics = tree_map(lambda a: mx.distributed.all_sum(a) / self.world,
                                     (loss, metrics))
        return loss.item(), {k: v.item() for k, v in metrics.items()}, norm.item()

    def evaluate(self) -> dict[str, float]:
        t = self.cfg.train
        self.model.eval()
        total, sums, n = 0.0, {}, 0
        for inputs, targets in self.val_data.eval_batches(t.batch_size, t.seq_len, t.eval_batches):
            loss, metrics = self.steps.eval(*tree_map(mx.array, (inputs, targets)))
            total += loss.item()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            n += 1
        self.model.train()
        if n == 0:
            return {}
        out = {f"val_{k}": v / n for k, v in sums.items()}
        out["val_loss"] = total / n
        # perplexity is of the next-token loss alone (the objective may add concept or KD terms)
        out["val_ppl"] = math.exp(min(out.get("val_ntp_loss", out["val_loss"]), 50.0))
        return out

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self) -> None:
        if self.rank != 0:
            return
        mx.eval(self.model.parameters(), self.optimizer.state)
        state = {"step": self.state.step, "tokens": self.state.tokens,
                 "elapsed": self.state.elapsed, "world_size": self.world,
                 "config": self.cfg.to_dict(), "data_dir": str(self.data_dir)}

        def write(tmp: Path) -> None:
            write_model_files(tmp, self.model, self.data_dir / "tokenizer", {
                "bos_token_id": self.meta.get("eos_token_id"),
                "eos_token_id": self.meta.get("eos_token_id")})
            files.save_weights(tmp / "optimizer.safetensors", self.optimizer.state)
            (tmp / "config.toml").write_text(dumps_toml(self.cfg), encoding="utf-8")

        self.run_dir.save(write, state)

    def resume(self) -> None:
        """Restore weights, optimizer, RNG and counters from ``out_dir``."""
        state = self.run_dir.state()
        path = self.out_dir
        if state.get("world_size", 1) != self.world:
            raise CheckpointError(f"{path} was written by {state.get('world_size')} processes, "
                                  f"this run has {self.world}; resume with the same -n")
        weights = files.load_weights(path / "model.safetensors")
        try:
            self.model.load_weights(list(weights.items()), strict=True)
        except ValueError as e:
            raise CheckpointError(f"{path} does not match this model: {e}") from None
        opt_state = files.load_weights(path / "optimizer.safetensors")
        self.optimizer.state = tree_unflatten(list(opt_state.items()))
        self.state = RunState(step=state["step"], tokens=state["tokens"],
                              elapsed=state["elapsed"])
        self.run_dir.truncate(self.state.step)
        self._build_steps()

    # ---- loop -----------------------------------------------------------------------------
    def train(self, callback: Callback | None = None) -> dict[str, Any]:
        t = self.cfg.train
        callback = callback or (lambda event, info: None)
        tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
        batches = self.train_data.batches(t.batch_size * t.grad_accum, t.seq_len, t.seed,
                                          start_step=self.state.step, order=t.batch_order)
        self.model.train()
        mx.reset_peak_memory()
        schedule = lr_schedule(t)
        last: dict[str, Any] = {}
        window_time, window_tokens = 0.0, 0
        while self.state.step < t.steps:
            inputs, targets = next(batches)
            lr = schedule(self.state.step).item()
            start = time.perf_counter()
            loss, metrics, norm = self.train_step(inputs, targets)
            step_time = time.perf_counter() - start
            step = self.state.step + 1
            self.run_dir.check_finite(loss, step, "lower --lr or raise --warmup-steps and "
                                      "--resume")
            self.run_dir.check_finite(norm, step, "lower --lr or raise --warmup-steps and "
                                      "--resume", what="the gradient norm")
            self.state.elapsed += step_time
            window_time, window_tokens = window_time + step_time, window_tokens + tokens_per_step
            self.state.step, self.state.tokens = step, self.state.tokens + tokens_per_step
            last = {"step": step, "loss": loss, "lr": lr, "grad_norm": norm, **metrics,
                    "tokens_per_s": window_tokens / window_time}
            if step % t.log_every == 0 or step == t.steps:
                last["peak_memory_gb"] = mx.get_peak_memory() / 1e9
                self.run_dir.log(last)
                window_time, window_tokens = 0.0, 0
            callback("step", last)
            if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
                ev = self.evaluate()
                if ev:
                    self.run_dir.log({"step": step, **ev})
                    callback("eval", {"step": step, **ev})
                    last.update(ev)
            if (t.save_every and step % t.save_every == 0) or step == t.steps:
                self.run_dir.check_finite(largest_magnitude(self.model.parameters()), step, "lower --lr and --resume",
                                          what="a weight")
                self.save()
                callback("save", {"step": step, "path": str(self.out_dir)})
        return last


def open_datasets(cfg: Config, data_dir: Path) -> tuple[TokenDataset, TokenDataset]:
    """Training and validation shards; with a label store (CoCoMix), they carry its labels."""
    obj = cfg.objective
    if cfg.train.mode != "cocomix" or not obj.label_store or obj.lam == 0:
        return TokenDataset(data_dir, "train"), TokenDataset(data_dir, "val")
    from .labels import LabeledDataset, LabelStore

    store = LabelStore(obj.label_store)
    store.check(data_dir, kind=obj.labels, latents=cfg.concept.concept_dim, k_attr=obj.k_attr)
    return LabeledDataset(data_dir, "train", store), LabeledDataset(data_dir, "val", store)


def config_from_checkpoint(path: str | Path) -> Config:
    state = files.read_json(Path(path) / "trainer_state.json")
    return from_dict(state["config"])
