"""Llama-family students to and from Hugging Face: ``export llama`` writes a directory that
``transformers`` loads as ``LlamaForCausalLM`` (``Qwen3ForCausalLM`` with QK-norm), and
``convert llama`` reads one back.

The key layout of our Llama student is Hugging Face's own, so the tensors pass unchanged. A
CoCoMix student adds its concept head under the backbone's prefix, as the GPT-2 export puts it
under ``transformer.``: ``model.pre_bias``, ``model.concept_predictor.{weight,bias}``,
``model.compress_layer.{weight,bias}``, with the concept settings in ``config.yaml``
(``concept_dim``, ``concept_num``, ``insert_layer_index``, ``concept_positions``, and
``sae_layer_index`` when known); transformers ignores those keys, and ``convert llama`` reads
them back into a CoCoMix checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from mlx.utils import tree_flatten

from .checkpoint import load_model
from .convert import (CONCEPT_KEYS, build_from, load_tensors, read_run_yaml, source_dir,
                      write_checkpoint, write_export)
from .errors import CheckpointError, ConfigError
from .files import atomic_directory, read_json, refuse_existing

HF_TYPES = ("llama", "qwen3")
UNSUPPORTED = {"rope_scaling": None, "attention_bias": False, "mlp_bias": False,
               "hidden_act": "silu", "layer_types": None, "sliding_window": None}


def export_llama(src: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Our Llama student (NTP or CoCoMix) → a Hugging Face ``LlamaForCausalLM`` directory."""
    src, out = Path(src), Path(out)
    refuse_existing(out, force, inputs=(src,))
    model, config = load_model(src)
    if config.get("model_type") not in HF_TYPES:
        raise ConfigError(f"{src} is a {config.get('model_type')!r} checkpoint; `export llama` "
                          "takes a Llama-family student (use `export gpt2` / `export cocomix` "
                          "for GPT-2)")
    if "quantization" in config:
        raise ConfigError(f"{src} is quantized; export the full-precision checkpoint")
    block = config.get("cocomix")
    if block and block.get("pause"):
        raise ConfigError(f"{src} is a pause model; only CoCoMix and NTP students export")
    weights = {("model." + k if k.startswith(CONCEPT_KEYS) else k): v
               for k, v in tree_flatten(model.parameters())}
    hf = {k: v for k, v in config.items() if k not in ("cocomix", "quantization")}
    atomic_directory(out, lambda tmp: write_export(tmp, src, weights, hf, block, positions=True))
    return {"path": str(out), "tensors": len(weights),
            "parameters": sum(v.size for v in weights.values()),
            "architecture": hf["architectures"][0], "cocomix": bool(block)}


def llama_config(config: dict[str, Any], src: Path) -> dict[str, Any]:
    """The fields of a Hugging Face Llama/Qwen3 ``config.json`` our student takes; one line
    naming what is supported for anything else."""
    kind = config.get("model_type")
    if kind not in HF_TYPES:
        hint = " (use `convert gpt2` / `convert cocomix`)" if kind == "gpt2" else ""
        raise ConfigError(f"{src} holds a {kind!r} model; `convert llama` takes llama or qwen3 "
                          f"checkpoints{hint}")
    for key, plain in UNSUPPORTED.items():
        if config.get(key, plain) not in (plain, ["full_attention"] * config.get(
                "num_hidden_layers", 0)):
            raise ConfigError(f"{src}: {key}={config[key]!r} is not supported by the Llama "
                              f"student (it takes {key}={plain!r}); load the model for "
                              "inference instead, e.g. as a teacher")
    rope = config.get("rope_parameters") or {}  # transformers >= 5 nests RoPE's settings here
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{src}: RoPE type {rope['rope_type']!r} is not supported by the Llama "
                          "student (it takes the default, unscaled RoPE); load the model for "
                          "inference instead, e.g. as a teacher")
    from .models import llama

    known = set(llama.ModelArgs.__dataclass_fields__)
    out = {k: v for k, v in config.items() if k in known}
    if "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    out.setdefault("tie_word_embeddings", False)  # Hugging Face's LlamaConfig default
    return out


def convert_llama(src: str | Path, out: str | Path, force: bool = False,
                  dtype: str = "float32", concept_num: Optional[int] = None,
                  insert_layer: Optional[int] = None) -> dict[str, Any]:
    """A Hugging Face Llama/Qwen3 directory or weights file → our checkpoint: an NTP Llama
    student (a plain mlx-lm ``llama`` checkpoint), or a CoCoMix one when the concept head and
    its ``config.yaml`` are there."""
    from .models import cocomix, llama

    src, out = Path(src), Path(out)
    refuse_existing(out, force, inputs=(src,))
    config = llama_config(read_json(source_dir(src) / "config.json"), src)
    weights = {k: v for k, v in load_tensors(src).items() if "rotary_emb.inv_freq" not in k}
    if config["tie_word_embeddings"]:
        weights.pop("lm_head.weight", None)
    concept = {k[len("model."):]: weights.pop(k) for k in list(weights)
               if k.startswith("model.") and k[len("model."):].startswith(CONCEPT_KEYS)}
    if not concept:
        model = build_from(llama.ModelArgs, llama.Model, config, weights, dtype)
        return write_checkpoint(model, out, source_dir(src), {})
    run = read_run_yaml(src)

    def pick(flag, key, default=None):
        value = flag if flag is not None else run.get(key, default)
        if value is None:
            raise ConfigError(f"{key} is unknown: no config.yaml beside {src}; pass it as a flag")
        return value

    try:
        config.update(concept_dim=int(concept["concept_predictor.weight"].shape[0]),
                      concept_num=int(pick(concept_num, "concept_num")),
                      insert_layer=int(pick(insert_layer, "insert_layer_index")),
                      positions=str(pick(None, "concept_positions", "shared")))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"not a complete CoCoMix head in {src}: {e}") from None
    model = build_from(cocomix.args_class(llama.ModelArgs), cocomix.model_class(llama.Model),
                       config, {**weights, **concept}, dtype)
    sae = run.get("sae_layer_index")
    extra = {"cocomix": {**model.args.cocomix_block(),
                         **({"sae_layer": int(sae)} if sae is not None else {})}}
    return write_checkpoint(model, out, source_dir(src), extra)
