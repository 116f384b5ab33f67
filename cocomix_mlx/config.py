"""Configuration dataclasses, named presets, TOML load/save and ``--key value`` overrides."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    """The student's shape. ``model_type`` picks the family (``models.FAMILIES``); the other keys
    are shared by both families, with GPT-2's names, or belong to the Llama family alone."""

    model_type: str = "gpt2"  # student family: gpt2 (learned positions, LayerNorm, GELU) or llama (RoPE, RMSNorm, SwiGLU, GQA)
    vocab_size: int = 8192  # tokens in the vocabulary (follows the data unless set)
    n_positions: int = 1024  # context length (gpt2: learned positions; llama: max_position_embeddings)
    n_embd: int = 256  # width d of the residual stream (llama: hidden_size)
    n_layer: int = 6  # number of transformer blocks
    n_head: int = 8  # attention (query) heads
    n_kv_head: int = 0  # llama: key/value heads, dividing n_head (0: n_head, no grouping)
    head_dim: int = 0  # llama: width of one head (0: n_embd // n_head)
    intermediate_size: int = 0  # llama: SwiGLU width (0: 8/3 n_embd rounded up to a multiple of 64)
    rope_theta: float = 10000.0  # llama: RoPE base
    qk_norm: bool = False  # llama: RMSNorm on each head's queries and keys (Qwen3)
    tie_word_embeddings: bool = True  # llama: the head is the embedding (gpt2: always)
    layer_norm_epsilon: float = 1e-5  # LayerNorm (gpt2) or RMSNorm (llama) epsilon
    dropout: float = 0.0  # gpt2: embedding, attention-probability and residual dropout (HF: 0.1)


@dataclass
class TrainConfig:
    """Optimizer, schedule, batching and bookkeeping for ``pretrain``."""

    mode: str = "ntp"  # objective: ntp, cocomix, kd or pause
    seq_len: int = 256  # tokens per training window
    batch_size: int = 8  # windows per step (split over data-parallel processes)
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    steps: int = 1000  # optimizer steps
    lr: float = 6e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decays to this fraction of lr
    warmup_steps: int = -1  # -1: steps // 300 (the paper's 1/300), at least 1
    weight_decay: float = 0.1  # AdamW decoupled weight decay
    decay_all: bool = True  # official runs decay every parameter; False exempts biases/norms/embeddings
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # global gradient-norm clip (0: off)
    dtype: str = "float32"  # float32, bfloat16 or float16 parameters and activations
    compile: bool = True  # mx.compile the training and evaluation steps
    seed: int = 0  # initialisation and batch order
    batch_order: str = "random"  # "random" windows | "windows": a permutation of aligned windows
    eval_every: int = 200  # steps between validation passes (0: never)
    eval_batches: int = 20  # validation batches per pass
    save_every: int = 500  # steps between checkpoints (the last step always saves)
    log_every: int = 10  # steps between rows of metrics.jsonl

    def warmup(self) -> int:
        return max(1, self.steps // 300) if self.warmup_steps < 0 else self.warmup_steps


@dataclass
class ConceptConfig:
    """CoCoMix's concept architecture: part of the model (its concept head, TopK, compression and
    mixing), saved in the checkpoint's ``config.json``.

    Names follow the official run config where one exists (``concept_dim`` = C latents,
    ``concept_num`` = TopK k, ``insert_layer`` = ``insert_layer_index``).
    """

    concept_dim: int = 32768  # concepts C: the SAE's latents (follows the SAE or label store)
    concept_num: int = 32  # concepts kept by the TopK before compression (k)
    insert_layer: int = 5  # the concept is mixed in before this block (0-based)
    mixing: str = "interleave"  # "interleave" | "add" (ablation) | "none" (no mixing, ablation)
    positions: str = "shared"  # RoPE position of a concept slot: "shared" with its token | "consecutive" slots


@dataclass
class ObjectiveConfig:
    """What the model is trained against beyond the next token: CoCoMix's teacher, SAE and
    labels, and the KD baseline's weight. Not part of the model."""

    teacher: str = ""  # checkpoint dir of the frozen teacher (cocomix and kd modes)
    sae: str = ""  # SAE dir trained on the teacher's layer ``sae_layer``
    sae_layer: int = 5  # teacher block whose output residual the SAE reads (0-based)
    k_attr: int = 4  # labels per position (``topK_attri``)
    lam: float = 0.1  # concept-loss weight (``lam_concept``)
    labels: str = "attribution"  # "attribution" | "activation" (ablation)
    label_store: str = ""  # labels computed ahead (`cocomix labels build`): no teacher in the step
    mask_zero_rows: bool = True  # drop all-zero-attribution positions from the concept loss
    kd_weight: float = 0.1  # KD baseline: NTP + kd_weight · KL(teacher ‖ student)


SECTIONS = ("model", "train", "concept", "objective")
# Keys that configs and checkpoints written before the objective had its own section keep under
# [concept] (and ``--concept.lam`` style overrides): read as their ``objective.*`` key.
_MOVED = {f.name for f in fields(ObjectiveConfig)}
_FIELD = re.compile(r"^    (\w+): [^=]+= (.+?)  # (.+)$")


# (key, low, high, what): the range each number must lie in; None leaves a side open. A value
# outside it (NaN and infinities included) is refused before anything runs.
_RANGES = [
    ("model.vocab_size", 1, None, "positive"), ("model.n_positions", 1, None, "positive"),
    ("model.n_embd", 1, None, "positive"), ("model.n_layer", 1, None, "positive"),
    ("model.n_head", 1, None, "positive"), ("model.layer_norm_epsilon", 0, None, ">= 0"),
    ("model.n_kv_head", 0, None, ">= 0"), ("model.head_dim", 0, None, ">= 0"),
    ("model.intermediate_size", 0, None, ">= 0"), ("model.rope_theta", 1e-6, None, "positive"),
    ("model.dropout", 0, 0.999, "in [0, 1)"),
    ("train.seq_len", 1, None, "positive"), ("train.batch_size", 1, None, "positive"),
    ("train.grad_accum", 1, None, "positive"), ("train.steps", 1, None, "positive"),
    ("train.lr", 1e-12, 10.0, "in (0, 10]"), ("train.min_lr_ratio", 0, 1, "in [0, 1]"),
    ("train.warmup_steps", -1, None, ">= -1"), ("train.weight_decay", 0, 10, "in [0, 10]"),
    ("train.beta1", 0, 0.999999, "in [0, 1)"), ("train.beta2", 0, 0.999999, "in [0, 1)"),
    ("train.eps", 1e-30, 1, "in (0, 1]"), ("train.grad_clip", 0, None, ">= 0 (0: off)"),
    ("train.eval_every", 0, None, ">= 0"), ("train.eval_batches", 0, None, ">= 0"),
    ("train.save_every", 0, None, ">= 0"), ("train.log_every", 1, None, "positive"),
    ("train.seed", 0, None, ">= 0"),
    ("concept.concept_dim", 1, None, "positive"), ("concept.concept_num", 1, None, "positive"),
    ("concept.insert_layer", 0, None, ">= 0"), ("objective.sae_layer", 0, None, ">= 0"),
    ("objective.k_attr", 1, None, "positive"), ("objective.lam", 0, 1e6, "in [0, 1e6]"),
    ("objective.kd_weight", 0, 1e6, "in [0, 1e6]"),
]


def validate(cfg: Config) -> Config:
    """Refuse settings no run can use (a NaN or infinite learning rate, zero steps, ...) with a
    one-line error naming the key."""
    for key, low, high, what in _RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not (math.isfinite(value) and (low is None or value >= low) and
                (high is None or value <= high)):
            raise ConfigError(f"{key} must be {what}, not {value}")
    return cfg  # the architecture's own checks (heads, head width) are models.family_args'


def describe_keys() -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` of every config key, from the dataclasses' own source (each
    field's comment is its meaning): the one source of the option list in ``pretrain --help``."""
    rows = []
    for section, cls in zip(SECTIONS, (ModelConfig, TrainConfig, ConceptConfig, ObjectiveConfig)):
        known = {f.name for f in fields(cls)}
        for line in inspect.getsource(cls).splitlines():
            m = _FIELD.match(line)
            if m and m.group(1) in known:
                rows.append((f"{section}.{m.group(1)}", m.group(2), m.group(3)))
    return rows


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    concept: ConceptConfig = field(default_factory=ConceptConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}


_CTX = dict(n_positions=1024)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "model": dict(n_embd=256, n_layer=6, n_head=8, n_positions=256),
        "train": dict(seq_len=256, batch_size=8, lr=1e-3, steps=600, eval_every=100, save_every=200),
    },
    "gpt2-124m": {
        "model": dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, **_CTX),
        "train": dict(seq_len=1024, batch_size=8, lr=6e-4),
    },
    "ntp-69m": {
        "model": dict(vocab_size=50257, n_embd=624, n_layer=8, n_head=8, **_CTX),
        "train": dict(seq_len=1024, batch_size=8, lr=6e-4),
    },
    "ntp-386m": {
        "model": dict(vocab_size=50257, n_embd=1072, n_layer=24, n_head=16, **_CTX),
        "train": dict(seq_len=1024, batch_size=8, lr=3e-4),
    },
    "cocomix-tiny": {
        "model": dict(n_embd=256, n_layer=6, n_head=8, n_positions=256),
        "train": dict(mode="cocomix", seq_len=256, batch_size=8, lr=1e-3, steps=600,
                      eval_every=100, save_every=200),
        "concept": dict(concept_dim=4096, insert_layer=3),
        "objective": dict(sae_layer=3),
    },
    "cocomix-69m": {
        "model": dict(vocab_size=50257, n_embd=512, n_layer=8, n_head=8, **_CTX),
        "train": dict(mode="cocomix", seq_len=1024, batch_size=8, lr=6e-4),
        "concept": dict(insert_layer=3),
    },
    "cocomix-386m": {
        "model": dict(vocab_size=50257, n_embd=1024, n_layer=24, n_head=16, **_CTX),
        "train": dict(mode="cocomix", seq_len=1024, batch_size=8, lr=3e-4),
        "concept": dict(insert_layer=5),
    },
    "cocomix-1.38b": {
        "model": dict(vocab_size=50257, n_embd=2048, n_layer=24, n_head=16, **_CTX),
        "train": dict(mode="cocomix", seq_len=1024, batch_size=8, lr=2e-4),
        "concept": dict(insert_layer=5),
    },
    "ntp-1.38b": {
        "model": dict(vocab_size=50257, n_embd=2096, n_layer=24, n_head=16, **_CTX),
        "train": dict(seq_len=1024, batch_size=8, lr=2e-4),
    },
}
# Llama-family students: the study's CPU shape, the paper's 69M budget (NTP at 68.5M parameters,
# CoCoMix at the width of cocomix-69m) and SmolLM2-135M's exact shape; each with its CoCoMix twin.
_LLAMA = dict(model_type="llama", n_layer=8)
_TINY_TRAIN = dict(seq_len=256, batch_size=8, lr=1e-3, steps=600, eval_every=100, save_every=200)
_SMOL = dict(model_type="llama", vocab_size=49152, n_embd=576, n_layer=30, n_head=9, n_kv_head=3,
             intermediate_size=1536, rope_theta=100000.0, n_positions=2048)
_SMOL_TRAIN = dict(seq_len=2048, batch_size=4, lr=3e-4)
PRESETS.update({
    "llama-tiny": {"model": dict(_LLAMA, n_embd=128, n_head=4, n_kv_head=2, n_positions=256),
                   "train": _TINY_TRAIN},
    "cocomix-llama-tiny": {
        "model": dict(_LLAMA, n_embd=128, n_head=4, n_kv_head=2, n_positions=256),
        "train": dict(_TINY_TRAIN, mode="cocomix"),
        "concept": dict(concept_dim=4096, insert_layer=3), "objective": dict(sae_layer=3)},
    "llama-69m": {"model": dict(_LLAMA, vocab_size=50257, n_embd=640, n_head=8, n_kv_head=4, **_CTX),
                  "train": dict(seq_len=1024, batch_size=8, lr=6e-4)},
    "cocomix-llama-69m": {
        "model": dict(_LLAMA, vocab_size=50257, n_embd=512, n_head=8, n_kv_head=4, **_CTX),
        "train": dict(mode="cocomix", seq_len=1024, batch_size=8, lr=6e-4),
        "concept": dict(insert_layer=3)},
    "smollm2-135m": {"model": _SMOL, "train": _SMOL_TRAIN},
    "cocomix-smollm2-135m": {"model": _SMOL, "train": dict(_SMOL_TRAIN, mode="cocomix"),
                             "concept": dict(insert_layer=5)},
})


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(name: str, value: Any, target_type: Any) -> Any:
    """Convert ``value`` (a TOML value or a command-line string) to the field's type."""
    kind = target_type if isinstance(target_type, type) else _TYPES[target_type]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
    elif kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif kind is int and not isinstance(value, bool):
        try:
            number = float(value) if isinstance(value, (str, float)) else value
            if isinstance(number, int) or number.is_integer():
                return int(number)
        except (ValueError, OverflowError):
            pass
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"config key '{name}' expects {kind.__name__}, got {value!r}")


def _section(cfg: Config, name: str):
    return getattr(cfg, name)


def _field_types(section) -> dict[str, Any]:
    return {f.name: f.type for f in fields(section)}


def set_value(cfg: Config, key: str, value: Any) -> str:
    """Set ``key`` (``train.lr``, or a bare ``lr`` if unambiguous; ``-`` may stand for ``_``);
    returns the full key it set (``train.lr``)."""
    key = key.lstrip("-").replace("-", "_")
    if "." in key:
        sec_name, name = key.split(".", 1)
        if sec_name == "concept" and name in _MOVED:
            sec_name = "objective"
        if sec_name not in SECTIONS:
            raise ConfigError(f"unknown config section '{sec_name}' (use model.*, train.*, "
                              "concept.* or objective.*)")
        owners = [sec_name] if name in _field_types(_section(cfg, sec_name)) else []
    else:
        name = key
        owners = [s for s in SECTIONS if name in _field_types(_section(cfg, s))]
    if not owners:
        raise ConfigError(f"unknown config key '{key}'; see `cocomix pretrain --help` for the keys")
    if len(owners) > 1:
        raise ConfigError(f"config key '{key}' is ambiguous; write {owners[0]}.{name}")
    section = _section(cfg, owners[0])
    setattr(section, name, _coerce(key, value, _field_types(section)[name]))
    return f"{owners[0]}.{name}"


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str]) -> set[str]:
    """Apply ``{key: value}`` or a ``["--key", "value", ...]`` list (also ``--key=value``);
    returns the full keys set (``{"train.lr", ...}``)."""
    if isinstance(overrides, list):
        items, args = [], list(overrides)
        while args:
            tok = args.pop(0)
            if not tok.startswith("--"):
                raise ConfigError(f"unexpected argument '{tok}'; overrides look like --train.lr 3e-4")
            if "=" in tok:
                items.append(tuple(tok.split("=", 1)))
            elif args and not args[0].startswith("--"):
                items.append((tok, args.pop(0)))
            else:
                raise ConfigError(f"override '{tok}' needs a value, e.g. {tok} 3e-4")
        overrides = dict(items)
    return {set_value(cfg, key, value) for key, value in overrides.items()}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    cfg = Config()
    for sec, values in PRESETS[name].items():
        for key, value in values.items():
            setattr(_section(cfg, sec), key, value)
    return cfg


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    cfg = base or Config()
    for sec, values in data.items():
        if sec not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"unknown config section '{sec}' (expected [model], [train], "
                              "[concept], [objective])")
        for key, value in values.items():
            set_value(cfg, f"{sec}.{key}", value)
    return cfg


def load_toml(path: str | Path) -> Config:
    """Read a TOML config; a ``preset = "name"`` top-level key starts from that preset."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None
    base = preset(data.pop("preset")) if "preset" in data else None
    return from_dict(data, base)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def dumps_toml(cfg: Config) -> str:
    lines = []
    for sec, values in cfg.to_dict().items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
