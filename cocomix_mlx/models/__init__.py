"""Model construction from configs and from checkpoint ``config.json`` files."""

from __future__ import annotations

from typing import Any

import mlx.nn as nn

from ..config import ConceptConfig, Config, ModelConfig
from ..errors import ConfigError
from . import cocomix, gpt2


def gpt2_args(cfg: ModelConfig) -> gpt2.ModelArgs:
    return gpt2.ModelArgs(
        vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, layer_norm_epsilon=cfg.layer_norm_epsilon,
        embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, resid_pdrop=cfg.dropout,
    )


def cocomix_args(cfg: ModelConfig, concept: ConceptConfig, pause: bool = False) -> cocomix.ModelArgs:
    base = gpt2_args(cfg).__dict__
    return cocomix.ModelArgs(**base, concept_dim=concept.concept_dim,
                             concept_num=concept.concept_num, insert_layer=concept.insert_layer,
                             mixing=concept.mixing, pause=pause)


def build_model(cfg: ModelConfig, seed: int = 0, mode: str = "ntp",
                concept: ConceptConfig | None = None) -> nn.Module:
    """A freshly initialised model for ``cfg`` (GPT-2 initialisation).

    ``mode`` ``cocomix`` / ``pause`` builds the concept-mixing model of ``models.cocomix``;
    ``ntp`` and ``kd`` build plain GPT-2.
    """
    if mode in ("cocomix", "pause"):
        try:
            args = cocomix_args(cfg, concept or ConceptConfig(), pause=mode == "pause")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        model = cocomix.Model(args)
    else:
        args = gpt2_args(cfg)
        model = gpt2.Model(args)
    gpt2.init_weights(model, args.n_layer, seed)
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
    while True:
        count = config_parameters(cfg)
        gaps[cfg.model.n_embd] = abs(count - target)
        if count >= target:
            break
        cfg.model.n_embd += cfg.model.n_head
    cfg.model.n_embd = min(gaps, key=gaps.get)
    return cfg


def hf_config(model: nn.Module) -> dict[str, Any]:
    """The ``config.json`` fields (Hugging Face names) that rebuild ``model``."""
    a = model.args
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": a.vocab_size, "n_positions": a.n_positions, "n_ctx": a.n_ctx,
        "n_embd": a.n_embd, "n_layer": a.n_layer, "n_head": a.n_head,
        "layer_norm_epsilon": a.layer_norm_epsilon, "embd_pdrop": a.embd_pdrop,
        "attn_pdrop": a.attn_pdrop, "resid_pdrop": a.resid_pdrop,
        "activation_function": "gelu_new", "tie_word_embeddings": True,
        **({"cocomix": a.cocomix_block()} if isinstance(a, cocomix.ModelArgs) else {}),
    }


def config_from_hf(config: dict[str, Any]) -> Config:
    """The :class:`config.Config` whose model (and concept architecture) :func:`build_model`
    turns into the model of a checkpoint's ``config.json`` — the inverse of :func:`hf_config`;
    ``train.mode`` is ``cocomix`` / ``pause`` for a CoCoMix checkpoint, else ``ntp``."""
    if config.get("model_type") != "gpt2":
        raise ConfigError(f"only GPT-2-family checkpoints carry a training config, not "
                          f"{config.get('model_type')!r}")
    cfg = Config()
    m = cfg.model
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon"):
        setattr(m, name, config[name])
    m.dropout = config.get("resid_pdrop", 0.0)
    block = config.get("cocomix")
    if block:
        cfg.train.mode = "pause" if block.get("pause") else "cocomix"
        for name in ("concept_dim", "concept_num", "insert_layer", "mixing"):
            setattr(cfg.concept, name, block[name])
    return cfg


def model_classes(config: dict[str, Any]):
    """``get_model_classes`` for ``mlx_lm.utils.load_model``: ours for GPT-2, mlx-lm's otherwise."""
    if config.get("model_type") == "gpt2" and "cocomix" in config:
        return cocomix.Model, cocomix.ModelArgs
    if config.get("model_type") == "gpt2":
        return gpt2.Model, gpt2.ModelArgs
    from ..compat import model_classes as mlx_lm_classes

    return mlx_lm_classes(config)
