"""Model construction from configs and from checkpoint ``config.json`` files."""

from __future__ import annotations

from typing import Any

import mlx.nn as nn

from ..config import ConceptConfig, Config, ModelConfig
from ..errors import ConfigError
from . import cocomix, gpt2, llama
from .base import init_weights

FAMILIES = {"gpt2": gpt2, "llama": llama}  # student families: model_type -> module
HF_TYPES = {"gpt2": "gpt2", "llama": "llama", "qwen3": "llama"}  # config.json model_type -> family
LLAMA_ONLY = ("n_kv_head", "head_dim", "intermediate_size", "rope_theta", "qk_norm",
              "tie_word_embeddings")


def swiglu_width(d: int) -> int:
    """The default SwiGLU width: 8/3 d rounded up to a multiple of 64 (the parameters of a 4d GELU
    MLP in three matrices)."""
    return -(-8 * d // 192) * 64


def family(model_type: str):
    """The family module of ``model_type`` (one line naming the supported ones otherwise)."""
    if model_type not in FAMILIES:
        hint = " (a Qwen3-style student is llama with --model.qk_norm true)" \
            if model_type == "qwen3" else ""
        raise ConfigError(f"unknown model.model_type {model_type!r}; supported students: "
                          f"{', '.join(FAMILIES)}{hint}")
    return FAMILIES[model_type]


def _llama_fields(cfg: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head or cfg.n_head,
        head_dim=cfg.head_dim or None,
        intermediate_size=cfg.intermediate_size or swiglu_width(cfg.n_embd),
        max_position_embeddings=cfg.n_positions, rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.layer_norm_epsilon, tie_word_embeddings=cfg.tie_word_embeddings,
        qk_norm=cfg.qk_norm)


def _gpt2_fields(cfg: ModelConfig) -> dict[str, Any]:
    default = ModelConfig()
    changed = [k for k in LLAMA_ONLY if getattr(cfg, k) != getattr(default, k)]
    if changed:
        raise ConfigError(f"model.{changed[0]} is a Llama-family option; GPT-2 students take "
                          "model.n_embd, n_layer, n_head, n_positions, layer_norm_epsilon, "
                          "dropout (or set --model.model_type llama)")
    return dict(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                n_layer=cfg.n_layer, n_head=cfg.n_head, layer_norm_epsilon=cfg.layer_norm_epsilon,
                embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, resid_pdrop=cfg.dropout)


def family_args(cfg: ModelConfig, concept: ConceptConfig | None = None, pause: bool = False):
    """The family ``ModelArgs`` (Hugging Face names) of ``cfg``; with ``concept``, the CoCoMix
    model's over that family. Every architectural check is the ``ModelArgs``' own; a failing one
    is a :class:`ConfigError`."""
    fam = family(cfg.model_type)
    if fam is llama and cfg.dropout:
        raise ConfigError("model.dropout is a GPT-2 option; Llama-family students train without "
                          "dropout (set it to 0)")
    if not cfg.head_dim and cfg.n_embd % cfg.n_head:
        raise ConfigError(f"model.n_head ({cfg.n_head}) must divide model.n_embd ({cfg.n_embd})"
                          + ("; or set model.head_dim" if fam is llama else ""))
    if fam is llama and (cfg.head_dim or cfg.n_embd // cfg.n_head) % 2:
        width = (f"model.head_dim ({cfg.head_dim})" if cfg.head_dim else
                 f"model.n_embd / model.n_head ({cfg.n_embd // cfg.n_head})")
        raise ConfigError(f"{width} is odd; RoPE rotates pairs of dimensions: give each head an "
                          "even width")
    if cfg.n_kv_head and cfg.n_head % cfg.n_kv_head:
        raise ConfigError(f"model.n_kv_head ({cfg.n_kv_head}) must divide model.n_head "
                          f"({cfg.n_head}): each key/value head serves a group of query heads")
    fields = _llama_fields(cfg) if fam is llama else _gpt2_fields(cfg)
    try:
        if concept is None:
            return fam.ModelArgs(**fields)
        block = {name: getattr(concept, name) for name in cocomix.CONCEPT_FIELDS if name != "pause"}
        return cocomix.args_class(fam.ModelArgs)(**fields, **block, pause=pause)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_model(cfg: ModelConfig, seed: int = 0, mode: str = "ntp",
                concept: ConceptConfig | None = None) -> nn.Module:
    """A freshly initialised student of ``cfg``'s family, initialised by parameter name
    (:func:`base.init_weights`): two models built from one seed share every value they share a
    name for.

    ``mode`` ``cocomix`` / ``pause`` builds the family's concept-mixing model
    (``models.cocomix``); ``ntp`` and ``kd`` build the plain family model.
    """
    fam = family(cfg.model_type)
    if mode in ("cocomix", "pause"):
        args = family_args(cfg, concept or ConceptConfig(), pause=mode == "pause")
        model = cocomix.model_class(fam.Model)(args)
    else:
        model = fam.Model(family_args(cfg))
    init_weights(model, seed)
    return model


def num_parameters(model: nn.Module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.parameters()))


def config_parameters(cfg: Config) -> int:
    """The parameter count of the model ``cfg`` trains (its mode and concept architecture)."""
    return num_parameters(build_model(cfg.model, mode=cfg.train.mode, concept=cfg.concept))


def widen(cfg: Config, target: int) -> Config:
    """Set ``cfg``'s width (a multiple of n_head, from its current width up) to the one whose
    parameter count is nearest ``target``, as the paper widens its NTP baselines to CoCoMix's
    count."""
    gaps = {}
    m = cfg.model  # a RoPE head needs an even width: Llama widths step by two per head
    rope_pairs = m.model_type == "llama" and not m.head_dim
    if rope_pairs and (m.n_embd // m.n_head) % 2:
        raise ConfigError(f"model.n_embd / model.n_head ({m.n_embd // m.n_head}) is odd")
    while True:
        count = config_parameters(cfg)
        gaps[cfg.model.n_embd] = abs(count - target)
        if count >= target:
            break
        cfg.model.n_embd += cfg.model.n_head * (2 if rope_pairs else 1)
    cfg.model.n_embd = min(gaps, key=gaps.get)
    return cfg


def hf_config(model: nn.Module) -> dict[str, Any]:
    """The ``config.json`` fields (Hugging Face names) that rebuild ``model``."""
    config = model.hf_config()
    if isinstance(model, cocomix.Model):
        config["cocomix"] = model.args.cocomix_block()
    return config


def config_from_hf(config: dict[str, Any]) -> Config:
    """The :class:`config.Config` whose model (and concept architecture) :func:`build_model`
    turns into the model of a checkpoint's ``config.json`` — the inverse of :func:`hf_config`;
    ``train.mode`` is ``cocomix`` / ``pause`` for a CoCoMix checkpoint, else ``ntp``."""
    kind = HF_TYPES.get(config.get("model_type"))
    if kind is None:
        raise ConfigError(f"only {', '.join(HF_TYPES)} checkpoints carry a student config, not "
                          f"{config.get('model_type')!r}")
    cfg = Config()
    m = cfg.model
    m.model_type = kind
    try:
        args = FAMILIES[kind].ModelArgs.from_dict(config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"unusable config.json: {e}") from None
    if kind == "gpt2":
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
                     "layer_norm_epsilon"):
            setattr(m, name, getattr(args, name))
        m.dropout = args.resid_pdrop
    else:
        m.vocab_size, m.n_positions, m.n_embd = (args.vocab_size, args.max_position_embeddings,
                                                 args.hidden_size)
        m.n_layer, m.n_head, m.n_kv_head = (args.num_hidden_layers, args.num_attention_heads,
                                            args.num_key_value_heads)
        m.head_dim, m.intermediate_size = args.head_dim, args.intermediate_size
        m.rope_theta, m.layer_norm_epsilon = args.rope_theta, args.rms_norm_eps
        m.qk_norm, m.tie_word_embeddings = args.qk_norm, args.tie_word_embeddings
    block = config.get("cocomix")
    if block:
        cfg.train.mode = "pause" if block.get("pause") else "cocomix"
        for name in ("concept_dim", "concept_num", "insert_layer", "mixing", "positions"):
            if name in block:
                setattr(cfg.concept, name, block[name])
    return cfg


def model_classes(config: dict[str, Any]):
    """``get_model_classes`` for ``mlx_lm.utils.load_model``: ours for GPT-2 and for CoCoMix over
    any student family; mlx-lm's for every other checkpoint (an NTP Llama student included)."""
    kind = HF_TYPES.get(config.get("model_type"))
    if kind is not None and "cocomix" in config:
        fam = FAMILIES[kind]
        return cocomix.model_class(fam.Model), cocomix.args_class(fam.ModelArgs)
    if kind == "gpt2":
        return gpt2.Model, gpt2.ModelArgs
    from ..compat import model_classes as mlx_lm_classes

    return mlx_lm_classes(config)
