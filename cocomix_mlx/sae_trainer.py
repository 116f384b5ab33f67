"""Training TopK SAEs on a teacher's residual stream (Gao et al. 2024 recipe).

Activations of the teacher's block ``layer`` are streamed from the token shards through a
bounded shuffle buffer: every ``buffer_steps · reuse`` steps a fresh buffer of ``buffer_steps ×
batch_tokens`` activations is computed from random windows (a function of (seed, buffer index)
only, so a resumed run sees exactly the same batches) and shuffled, then read ``reuse`` times in
fresh orders; activations are never all in memory. Loss: normalized MSE of the standardized
input, plus 1/32 × AuxK (the top ``d/2`` dead latents reconstruct the residual). Decoder
columns stay unit-norm: the gradient component parallel to each column is removed before the
Adam step and the columns are renormalized after.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_unflatten

from . import files
from .data import TokenDataset, check_vocab, load_meta
from .errors import CheckpointError, ConfigError
from .models.backbone import backbone
from .models.sae import SAEConfig, TopKSAE, load_sae, save_sae
from .ops import topk_indices
from .rundir import RunDirectory, largest_magnitude


# (field, low, high, what): the range each setting must lie in (None: open above).
_SAE_RANGES = [
    ("layer", 0, None, ">= 0"), ("latents", 1, None, "positive"), ("k", 1, None, "positive"),
    ("tokens", 1, None, "positive"), ("batch_tokens", 1, None, "positive"),
    ("seq_len", 2, None, "at least 2"), ("buffer_steps", 1, None, "at least 1"),
    ("reuse", 1, None, "at least 1"), ("lr", 0, 1.0, "in [0, 1] (0: the default)"),
    ("warmup_steps", 0, None, ">= 0"), ("decay_fraction", 0, 1, "in [0, 1]"),
    ("auxk_coef", 0, None, ">= 0"), ("auxk", 0, None, ">= 0"), ("dead_tokens", 0, None, ">= 0"),
    ("seed", 0, None, ">= 0"), ("log_every", 1, None, "positive"),
    ("save_every", 0, None, ">= 0"),
]


@dataclass
class SAETrainConfig:
    layer: int = 0
    latents: int = 4096
    k: int = 32
    tokens: int = 2_000_000
    batch_tokens: int = 1024
    seq_len: int = 128
    buffer_steps: int = 32
    reuse: int = 1  # passes over each buffer, each in its own order
    lr: float = 0.0  # 0: 2e-4 / sqrt(latents / 2**14)
    warmup_steps: int = 100
    decay_fraction: float = 0.0  # final fraction of the steps over which lr falls linearly to 0
    auxk_coef: float = 1 / 32
    auxk: int = 0  # 0: d // 2
    dead_tokens: int = 0  # 0: min(10M, tokens // 10)
    seed: int = 0
    log_every: int = 10
    save_every: int = 500

    def __post_init__(self) -> None:
        for name, low, high, what in _SAE_RANGES:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= low and (high is None or value <= high)):
                flag = "lr-decay" if name == "decay_fraction" else name.replace("_", "-")
                raise ConfigError(f"--{flag} must be {what}, not {value}")
        if self.k > self.latents:
            raise ConfigError(f"--k ({self.k}) cannot exceed --latents ({self.latents})")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_tokens)

    def peak_lr(self) -> float:
        return self.lr or 2e-4 / math.sqrt(self.latents / 2**14)

    def dead_window(self) -> int:
        return self.dead_tokens or max(self.batch_tokens, min(10_000_000, self.tokens // 10))

    def lr_schedule(self) -> Callable[[mx.array], mx.array]:
        """Linear warmup to ``peak_lr``, constant, then (with ``decay_fraction``) linear to 0."""
        warmup, peak, steps = max(1, self.warmup_steps), self.peak_lr(), self.steps
        decay = max(1, round(self.decay_fraction * steps)) if self.decay_fraction > 0 else 0

        def lr(s: mx.array) -> mx.array:
            scale = mx.minimum(1.0, (s + 1) / warmup)
            if decay:
                scale = scale * mx.clip((steps - s) / decay, 0.0, 1.0)
            return peak * scale
        return lr


# ---- losses (one equation each) ---------------------------------------------------------------
def normalized_mse(reconstruction: mx.array, target: mx.array) -> mx.array:
    """mean over rows of ‖x̂ - x‖² / ‖x‖² (OpenAI's ``normalized_mean_squared_error``)."""
    return (((reconstruction - target) ** 2).mean(-1) / (target ** 2).mean(-1)).mean()


def fraction_of_variance_unexplained(reconstruction: mx.array, target: mx.array) -> mx.array:
    """‖x̂ - x‖² / ‖x - mean(x)‖² over the batch."""
    residual = ((reconstruction - target) ** 2).sum()
    return residual / ((target - target.mean(0, keepdims=True)) ** 2).sum()


def auxk_reconstruction(sae: TopKSAE, pre: mx.array, dead: mx.array, k_aux: int) -> mx.array:
    """Decoder output (no bias) of the ``k_aux`` largest ReLU'd pre-activations among dead latents."""
    masked = mx.where(dead, pre, -mx.inf)
    idx = topk_indices(masked, k_aux)
    values = mx.maximum(mx.take_along_axis(pre, idx, -1), 0) * mx.take(dead, idx)
    return sae.decoder(mx.put_along_axis(mx.zeros_like(pre), idx, values, -1))


def sae_loss(sae: TopKSAE, h: mx.array, dead: Optional[mx.array], k_aux: int, auxk_coef: float):
    """``(loss, (mse, auxk, fvu, l0, fired))`` for a batch of activations ``h`` (N, d).

    ``dead`` masks the latents the AuxK term may use; ``None`` (no latent is dead) leaves the
    term out, which is what it would contribute then: zero, and no gradient.
    """
    x, _ = sae.preprocess(h)
    pre = sae.pre_activations(x)
    idx, values = sae.select(pre)
    z = mx.put_along_axis(mx.zeros_like(pre), idx, values, -1)
    recon = sae.decoder(z) + sae.pre_bias
    mse = normalized_mse(recon, x)
    aux = mx.array(0.0)
    if dead is not None:
        residual = mx.stop_gradient(x - recon)
        aux = normalized_mse(auxk_reconstruction(sae, pre, dead, k_aux), residual)
        aux = mx.where(dead.any(), aux, 0.0)
    fired = mx.stop_gradient((z > 0).any(0))
    stats = (fraction_of_variance_unexplained(mx.stop_gradient(recon), x),
             (z > 0).sum(-1).astype(mx.float32).mean(), fired)
    return mse + auxk_coef * aux, (mse, aux) + stats


def remove_parallel_component(grad_dec: mx.array, w_dec: mx.array) -> mx.array:
    """Project each decoder column's gradient onto the tangent space of the unit sphere."""
    return grad_dec - (grad_dec * w_dec).sum(0, keepdims=True) * w_dec


def unit_columns(w: mx.array) -> mx.array:
    return w / mx.maximum(mx.linalg.norm(w, axis=0, keepdims=True), 1e-12)


# ---- activations ----------------------------------------------------------------------------
def activation_fn(teacher: nn.Module, layer: int) -> Callable[[mx.array], mx.array]:
    bb = backbone(teacher)
    bb.check_layer(layer)
    return mx.compile(lambda tokens: bb.residual(tokens, layer).astype(mx.float32))


class ActivationBuffer:
    """Shuffled activations of the teacher at ``layer``. Buffer b holds R = ``buffer_steps``
    batches and is read ``reuse`` times, each pass in its own order: step s reads pass
    (s // R) % reuse of buffer s // (R · reuse). Reuse trades fresh activations for fewer
    teacher forwards, which dominate the cost when the teacher is large."""

    def __init__(self, teacher: nn.Module, data: TokenDataset, cfg: SAETrainConfig):
        self.fn, self.data, self.cfg = activation_fn(teacher, cfg.layer), data, cfg
        self.current, self.rows = (-1, -1), None  # (buffer index, pass) that rows holds
        data._need(cfg.seq_len)

    def _fill(self, index: int) -> None:
        c = self.cfg
        need = c.buffer_steps * c.batch_tokens
        windows = -(-need // (c.seq_len - 1))
        rng = np.random.default_rng([c.seed, 7919, index])
        starts = rng.integers(0, len(self.data) - c.seq_len, size=windows)
        tokens = np.stack([self.data.tokens[s:s + c.seq_len] for s in starts]).astype(np.int32)
        parts = []
        for i in range(0, windows, 32):  # evaluated chunk by chunk: memory stays one chunk's
            parts.append(self.fn(mx.array(tokens[i:i + 32]))[:, 1:])
            mx.eval(parts[-1])
        self.acts = mx.concatenate(parts).reshape(-1, parts[0].shape[-1])[:need]
        self.first_order = rng.permutation(need)

    def _shuffle(self, index: int, rep: int) -> None:
        if index != self.current[0]:
            self.rows = None
            self._fill(index)
        order = self.first_order if rep == 0 else \
            np.random.default_rng([self.cfg.seed, 7919, index, rep]).permutation(len(self.first_order))
        self.rows = self.acts[mx.array(order)]
        if self.cfg.reuse == 1:  # no later pass reads the unshuffled copy: free it
            self.acts = None
        mx.eval(self.rows)
        self.current = (index, rep)

    def batch(self, step: int) -> mx.array:
        c = self.cfg
        chunk, i = divmod(step, c.buffer_steps)
        where = divmod(chunk, c.reuse)
        if where != self.current:
            self._shuffle(*where)
        return self.rows[i * c.batch_tokens:(i + 1) * c.batch_tokens]


def geometric_median(points: mx.array, iterations: int = 50) -> mx.array:
    """Weiszfeld's algorithm."""
    median = points.mean(0)
    for _ in range(iterations):
        w = 1.0 / mx.maximum(mx.linalg.norm(points - median, axis=-1), 1e-8)
        median = (points * w[:, None]).sum(0) / w.sum()
    return median


def init_sae(sae: TopKSAE, sample: mx.array, seed: int) -> None:
    """Unit-norm random decoder columns, encoder = decoderᵀ, pre_bias = geometric median of the
    (standardized) sample, zero latent bias."""
    d, C = sae.cfg.d, sae.cfg.latents
    w = unit_columns(mx.random.normal((d, C), key=mx.random.key(seed)))
    sae.decoder.weight = w
    sae.encoder.weight = w.T
    x, _ = sae.preprocess(sample)
    sae.pre_bias = geometric_median(x)
    sae.latent_bias = mx.zeros((C,))
    mx.eval(sae.parameters())


# ---- trainer ----------------------------------------------------------------------------------
class SAETrainer:
    """Train a TopK SAE on ``teacher``'s block ``cfg.layer``; ``out_dir`` holds the checkpoint."""

    def __init__(self, cfg: SAETrainConfig, teacher: nn.Module, data_dir: str | Path,
                 out_dir: str | Path, teacher_name: Optional[str] = None):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.run_dir = RunDirectory(self.out_dir)
        bb = backbone(teacher)
        bb.check_layer(cfg.layer)
        check_vocab(load_meta(data_dir), bb.vocab)
        cfg.seq_len = min(cfg.seq_len, bb.context)
        d = bb.width
        self.k_aux = cfg.auxk or d // 2
        try:
            sae_cfg = SAEConfig(d=d, latents=cfg.latents, k=cfg.k, layer=cfg.layer,
                                source_model=teacher_name, location="resid_post_mlp")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.sae = TopKSAE(sae_cfg)
        self.buffer = ActivationBuffer(teacher, TokenDataset(data_dir, "train"), cfg)
        self.optimizer = optim.Adam(
            learning_rate=cfg.lr_schedule(), betas=[0.9, 0.999], eps=6.25e-10, bias_correction=True)
        self.counters = {"since_fired": mx.zeros((cfg.latents,), mx.int32)}
        self.step = 0
        init_sae(self.sae, self.buffer.batch(0), cfg.seed)
        self.optimizer.init(self.sae.trainable_parameters())
        self._compile()

    def _dead(self) -> mx.array:
        return self.counters["since_fired"] >= self.cfg.dead_window()

    def _compile(self) -> None:
        """Two compiled steps, with and without the AuxK term: while no latent is dead the term
        is zero, and leaving it out skips its top-k over every latent and a decoder pass."""
        self._steps = {auxk: self._compile_step(auxk) for auxk in (True, False)}

    def _compile_step(self, auxk: bool):
        sae, cfg = self.sae, self.cfg
        loss_and_grad = nn.value_and_grad(
            sae, lambda h, dead: sae_loss(sae, h, dead if auxk else None, self.k_aux, cfg.auxk_coef))

        def step(h):
            dead = self._dead()
            (loss, (mse, aux, fvu, l0, fired)), grads = loss_and_grad(h, dead)
            grads["decoder"]["weight"] = remove_parallel_component(grads["decoder"]["weight"],
                                                                   sae.decoder.weight)
            self.optimizer.update(sae, grads)
            sae.decoder.weight = unit_columns(sae.decoder.weight)
            self.counters["since_fired"] = mx.where(fired, 0, self.counters["since_fired"] + h.shape[0])
            return {"loss": loss, "mse": mse, "auxk": aux, "fvu": fvu, "l0": l0,
                    "dead": dead.astype(mx.float32).mean()}

        state = [sae.state, self.optimizer.state, self.counters]
        return mx.compile(step, inputs=state, outputs=state)

    def train_step(self, h: mx.array) -> dict[str, mx.array]:
        """One compiled update on the activations ``h`` (N, d); returns its metrics (lazy)."""
        return self._steps[self._dead().any().item()](h)

    def save(self) -> None:
        state = {"step": self.step, "config": asdict(self.cfg), "k_aux": self.k_aux}

        def write(tmp: Path) -> None:
            save_sae(self.sae, tmp)
            files.save_weights(tmp / "optimizer.safetensors", self.optimizer.state)
            files.save_weights(tmp / "counters.safetensors", self.counters)

        self.run_dir.save(write, state)

    def resume(self) -> None:
        state = self.run_dir.state()
        path = self.out_dir
        saved = load_sae(path)
        if saved.cfg.d != self.sae.cfg.d or saved.cfg.latents != self.sae.cfg.latents:
            raise CheckpointError(f"{path} holds a different SAE shape; resume with its settings")
        self.sae.update(saved.parameters())
        self.optimizer.state = tree_unflatten(list(files.load_weights(path / "optimizer.safetensors").items()))
        self.counters.update(files.load_weights(path / "counters.safetensors"))
        self.step = state["step"]
        self.run_dir.truncate(self.step)
        self._compile()

    def train(self, callback: Optional[Callable[[str, dict], None]] = None) -> dict[str, Any]:
        cfg = self.cfg
        callback = callback or (lambda event, info: None)
        last: dict[str, Any] = {}
        while self.step < cfg.steps:
            start = time.perf_counter()
            out = self.train_step(self.buffer.batch(self.step))
            mx.eval(out, self.sae.parameters(), self.optimizer.state, self.counters)
            self.step += 1
            last = {"step": self.step, **{k: v.item() for k, v in out.items()},
                    "activations_per_s": cfg.batch_tokens / (time.perf_counter() - start)}
            self.run_dir.check_finite(last["loss"], self.step, "lower --lr and --resume")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.run_dir.log(last)
            callback("step", last)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                self.run_dir.check_finite(largest_magnitude(self.sae.parameters()), self.step,
                                          "lower --lr and --resume", what="an SAE weight")
                self.save()
                callback("save", {"step": self.step})
        return last


def sae_config_from_checkpoint(path: str | Path) -> SAETrainConfig:
    state = files.read_json(Path(path) / "trainer_state.json")
    names = {f.name for f in fields(SAETrainConfig)}
    return SAETrainConfig(**{k: v for k, v in state["config"].items() if k in names})
