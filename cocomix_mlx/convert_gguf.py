"""GGUF Llama-family models → mlx-lm ``llama`` checkpoints.

``mx.load`` reads GGUF, keeping Q4_0/Q4_1/Q8_0 blocks as MLX affine-quantized tensors
(``weight`` + ``scales`` + ``biases``). llama.cpp stores the Q and K projections with their rows
permuted for its RoPE layout; the permutation is undone here (on weights, scales and biases
alike), so the result uses Hugging Face's layout and standard RoPE. The tokenizer is rebuilt from
the GGUF metadata (tokens, merges, special ids) as a Hugging Face ``tokenizer.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx

from .files import atomic_directory, refuse_existing, save_weights, write_json
from .errors import CheckpointError, ConfigError

NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
         "ffn_norm": "post_attention_layernorm"}
TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _scalar(meta: dict, key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if isinstance(value, mx.array):
        value = value.item()
    return value


def _required(meta: dict, key: str) -> Any:
    value = _scalar(meta, key)
    if value is None:
        raise CheckpointError(f"the GGUF file has no {key}; it is not a complete Llama-family "
                              "model (convert it again with llama.cpp's convert_hf_to_gguf.py)")
    return value


def unpermute_rows(w: mx.array, n_head: int) -> mx.array:
    """Inverse of llama.cpp's ``permute`` (which views each head's rows as (2, r) and stores
    them as (r, 2)): view as (r, 2), store as (2, r)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_config(meta: dict) -> dict[str, Any]:
    arch = _scalar(meta, "general.architecture")
    if arch not in ("llama", "mistral"):
        raise ConfigError(f"GGUF architecture {arch!r} is not supported (Llama family only)")
    g = lambda key, default=None: _scalar(meta, f"{arch}.{key}", default)  # noqa: E731
    need = lambda key: int(_required(meta, f"{arch}.{key}"))  # noqa: E731
    heads = need("attention.head_count")
    return {"model_type": "llama", "hidden_size": need("embedding_length"),
            "num_hidden_layers": need("block_count"),
            "intermediate_size": need("feed_forward_length"),
            "num_attention_heads": heads,
            "num_key_value_heads": int(g("attention.head_count_kv", heads)),
            "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(g("rope.freq_base", 10000.0)),
            "max_position_embeddings": int(g("context_length", 2048)),
            "vocab_size": int(g("vocab_size", len(meta.get("tokenizer.ggml.tokens", [])))),
            "rope_traditional": False}


def map_weights(weights: dict[str, mx.array], config: dict[str, Any]) -> dict[str, mx.array]:
    """GGUF names → mlx-lm llama names, with Q/K rows un-permuted."""
    out = {}
    for name, w in weights.items():
        m = re.match(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases)$", name)
        if m:
            layer, part, kind = m.groups()
            if part not in NAMES:
                raise CheckpointError(f"unexpected GGUF tensor {name}")
            if part == "attn_q":
                w = unpermute_rows(w, config["num_attention_heads"])
            elif part == "attn_k":
                w = unpermute_rows(w, config["num_key_value_heads"])
            out[f"model.layers.{layer}.{NAMES[part]}.{kind}"] = w
            continue
        top, _, kind = name.rpartition(".")
        if top not in TOP:
            raise CheckpointError(f"unexpected GGUF tensor {name}")
        out[f"{TOP[top]}.{kind}"] = w
    return out


def gguf_tokenizer(meta: dict):
    """A Hugging Face byte-level BPE tokenizer from ``tokenizer.ggml.*`` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if _scalar(meta, "tokenizer.ggml.model") != "gpt2":
        raise ConfigError("only byte-level BPE GGUF tokenizers (tokenizer.ggml.model = gpt2) "
                          "are supported")
    tokens = list(_required(meta, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _scalar(meta, "tokenizer.ggml.pre") in ("smollm", "starcoder"):
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None:
        special = [tokens[i] for i, t in enumerate(types.tolist()) if t == 3]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    ids = {k: _scalar(meta, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown")}
    names = {k: tokens[v] if v is not None and v < len(tokens) else None for k, v in ids.items()}
    return tok, names, ids


def convert_gguf(src: str | Path, out: str | Path, dtype: Optional[str] = None,
                 force: bool = False) -> dict[str, Any]:
    """Convert a GGUF file; ``dtype`` (float16/bfloat16/float32) dequantizes, else quantized
    tensors stay quantized."""
    from transformers import PreTrainedTokenizerFast

    src, out = Path(src), Path(out)
    refuse_existing(out, force, inputs=(src,))
    try:
        weights, meta = mx.load(str(src), return_metadata=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read GGUF {src}: {str(e).splitlines()[0]}") from None
    config = llama_config(meta)
    weights = map_weights(weights, config)
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    quant = _quantization(weights, config)
    if quant and dtype:
        weights, quant = _dequantize(weights, quant, getattr(mx, dtype)), None
    if quant:
        config["quantization"] = quant
    tok, names, ids = gguf_tokenizer(meta)
    config.update(bos_token_id=ids["bos"], eos_token_id=ids["eos"])

    def write(tmp: Path) -> None:
        save_weights(tmp / "model.safetensors", weights)
        write_json(tmp / "config.json", config)
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=names["bos"],
                                eos_token=names["eos"], unk_token=names["unknown"],
                                clean_up_tokenization_spaces=False).save_pretrained(str(tmp))

    from .checkpoint import load_model

    model = atomic_directory(out, write, verify=lambda tmp: load_model(tmp)[0])
    return {"path": str(out), "tensors": len(weights), "architecture": "llama",
            "layers": config["num_hidden_layers"], "quantization": quant or "none",
            "tied_head": config["tie_word_embeddings"], "model": type(model).__module__}


def _quantization(weights: dict[str, mx.array], config: dict[str, Any]) -> Optional[dict]:
    """MLX quantization defaults read off a Q projection (mlx-lm infers any layer that differs,
    e.g. an 8-bit embedding, from its own tensor shapes)."""
    quantized = [k[: -len(".scales")] for k in weights if k.endswith(".scales")]
    if not quantized:
        return None
    hidden = config["hidden_size"]
    probe = next((k for k in quantized if k.endswith("q_proj")), quantized[0])
    group_size = hidden // weights[f"{probe}.scales"].shape[-1]
    bits = 32 * weights[f"{probe}.weight"].shape[-1] // hidden
    return {"group_size": int(group_size), "bits": int(bits)}


def _dequantize(weights: dict[str, mx.array], quant: dict, dtype) -> dict[str, mx.array]:
    out = {}
    for k, w in weights.items():
        if k.endswith((".scales", ".biases")):
            continue
        base = k[: -len(".weight")]
        if f"{base}.scales" in weights:
            scales = weights[f"{base}.scales"]
            in_features = scales.shape[-1] * quant["group_size"]
            w = mx.dequantize(w, scales, weights.get(f"{base}.biases"),
                              group_size=quant["group_size"], bits=32 * w.shape[-1] // in_features)
        out[k] = w.astype(dtype)
    return out
