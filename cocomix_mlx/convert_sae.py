"""TopK SAEs from OpenAI's ``sparse_autoencoder`` ``.pt`` state dicts and SAELens directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx

from .convert import load_tensors
from .errors import CheckpointError
from .files import atomic_directory, refuse_existing
from .models.sae import SAEConfig, TopKSAE, load_sae, save_sae


def _sae(d: int, latents: int, k: int, normalize: bool, weights: dict[str, mx.array],
         meta: dict[str, Any]) -> TopKSAE:
    try:
        sae = TopKSAE(SAEConfig(d=d, latents=latents, k=k, normalize=normalize, **meta))
        sae.load_weights([(n, v.astype(mx.float32)) for n, v in weights.items()], strict=True)
    except ValueError as e:
        raise CheckpointError(f"the SAE tensors have inconsistent shapes: {e}") from None
    mx.eval(sae.parameters())
    return sae


def from_openai(sd: dict[str, Any], meta: dict[str, Any]) -> TopKSAE:
    """OpenAI layout: ``encoder.weight`` (C, d), ``decoder.weight`` (d, C), ``pre_bias``,
    ``latent_bias``; ``activation: "TopK"`` (which implies input normalization) with
    ``activation_state_dict["k"]``. Statistics buffers are not needed for inference."""
    activation = sd.get("activation", "ReLU")
    if activation != "TopK":
        raise CheckpointError(f"activation {activation!r}: only TopK SAEs are supported")
    try:
        k = int(sd["activation_state_dict"]["k"])
        latents, d = sd["encoder.weight"].shape
        weights = {n: sd[n] for n in ("pre_bias", "encoder.weight", "latent_bias", "decoder.weight")}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"not an OpenAI TopK SAE state dict (missing {e})") from None
    return _sae(d, latents, k, True, weights, meta)


def from_saelens(weights: dict[str, Any], cfg: dict[str, Any], meta: dict[str, Any]) -> TopKSAE:
    """SAELens ``W_enc`` (d, C), ``W_dec`` (C, d), ``b_enc``, ``b_dec`` with a TopK activation;
    ``normalize_activations`` ``none`` or ``layer_norm``; ``b_dec`` subtracted from the input."""
    act = str(cfg.get("activation_fn_str", cfg.get("activation_fn", ""))).lower()
    if act != "topk":
        raise CheckpointError(f"activation {act or 'unknown'!r}: only TopK SAEs are supported")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in ("none", "layer_norm"):
        raise CheckpointError(f"normalize_activations={norm!r} has no TopKSAE equivalent")
    if not cfg.get("apply_b_dec_to_input", True) and mx.any(weights["b_dec"] != 0).item():
        raise CheckpointError("apply_b_dec_to_input=false with a non-zero b_dec has no "
                              "TopKSAE equivalent")
    try:
        k = int((cfg.get("activation_fn_kwargs") or {})["k"])
        d, latents = weights["W_enc"].shape
        mapped = {"encoder.weight": weights["W_enc"].T, "decoder.weight": weights["W_dec"].T,
                  "latent_bias": weights["b_enc"], "pre_bias": weights["b_dec"]}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"not a SAELens TopK SAE (missing {e})") from None
    meta = {"source_model": cfg.get("model_name"), "layer": cfg.get("hook_layer"), **meta}
    return _sae(d, latents, k, norm == "layer_norm", mapped, meta)


def convert_sae(src: str | Path, out: str | Path, force: bool = False,
                source_model: Optional[str] = None, layer: Optional[int] = None,
                location: Optional[str] = None) -> dict[str, Any]:
    """An OpenAI ``.pt`` or a SAELens directory → ``sae.safetensors`` + ``config.json``."""
    src, out = Path(src), Path(out)
    refuse_existing(out, force, inputs=(src,))
    meta = {k: v for k, v in (("source_model", source_model), ("layer", layer),
                              ("location", location)) if v is not None}
    if src.is_dir() and (src / "sae_weights.safetensors").exists():
        try:
            cfg = json.loads((src / "cfg.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {src / 'cfg.json'}: {e}") from None
        sae = from_saelens(load_tensors(src / "sae_weights.safetensors"), cfg, meta)
    elif src.is_file():
        sae = from_openai(load_tensors(src), meta)
    else:
        raise CheckpointError(f"{src}: expected an OpenAI .pt file or a SAELens directory "
                              "(sae_weights.safetensors + cfg.json)")
    loaded = atomic_directory(out, lambda tmp: save_sae(sae, tmp), verify=load_sae)
    return {"path": str(out), "d": loaded.cfg.d, "latents": loaded.cfg.latents,
            "k": loaded.cfg.k, "normalize": loaded.cfg.normalize, "layer": loaded.cfg.layer}
