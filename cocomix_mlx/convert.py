"""PyTorch → MLX conversion and export back: Hugging Face GPT-2, official CoCoMix checkpoints,
OpenAI and SAELens TopK SAEs.

Pickled ``.bin`` / ``.pt`` files are read only with ``torch.load(weights_only=True)`` (torch is
the optional ``torch`` extra); a pickle that tries to build anything but tensors and plain
containers is refused. Outputs are written atomically: a failed conversion leaves nothing.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .checkpoint import load_model
from .files import atomic_directory, refuse_existing, save_weights, write_json
from .errors import CheckpointError, ConfigError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BUFFERS = (".attn.bias", ".attn.masked_bias")
CONCEPT_KEYS = ("pre_bias", "concept_predictor.weight", "concept_predictor.bias",
                "compress_layer.weight", "compress_layer.bias")


# ---- reading ---------------------------------------------------------------------------------
def load_pickle(path: Path) -> dict[str, Any]:
    """A ``torch.save``d dict, tensors as ``mx.array``; code-carrying pickles are refused."""
    try:
        import torch
    except ImportError:
        raise ConfigError(f"{path.name} is a PyTorch pickle; install torch to read it "
                          '(pip install "cocomix-mlx[torch]") or give .safetensors') from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on stderr
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (truncated), EOFError ...
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"refused {path}: the pickle holds code or objects other than "
                                  "tensors (only plain state dicts are loaded)") from None
        raise CheckpointError(f"cannot read {path}: {text}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    out = {}
    for k in list(data):  # pop each tensor as it is copied, so torch's copy is freed as we go
        v = data.pop(k)
        if isinstance(v, torch.Tensor):
            v = v.detach()
            out[k] = mx.array(v.float().numpy() if v.is_floating_point() else v.numpy())
        else:
            out[k] = v
    return out


_ST_DTYPES = {"F32": ("<f4", None), "F16": ("<f2", None), "BF16": ("<u2", "bfloat16"),
              "F64": ("<f8", None), "I64": ("<i8", None), "I32": ("<i4", None),
              "I16": ("<i2", None), "I8": ("i1", None), "U8": ("u1", None), "BOOL": ("?", None)}


def read_safetensors(path: Path) -> Iterator[tuple[str, mx.array]]:
    """``(name, array)`` pairs of a safetensors file, read one tensor at a time (each its own
    buffer, so dropping converted tensors frees memory as a conversion goes)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            base = 8 + n
            size = path.stat().st_size
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                if base + end > size:
                    raise ValueError(f"tensor {name} runs past the end of the file")
                np_dtype, mx_dtype = _ST_DTYPES[info["dtype"]]
                f.seek(base + start)
                data = np.frombuffer(f.read(end - start), dtype=np_dtype).reshape(info["shape"])
                array = mx.array(data)
                yield name, array.view(getattr(mx, mx_dtype)) if mx_dtype else array
    except (OSError, ValueError, KeyError, struct.error, json.JSONDecodeError,
            UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); the file is corrupt or truncated") from None


def load_tensors(path: Path) -> dict[str, Any]:
    """State dict of a file or a directory (safetensors, sharded safetensors, .bin/.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return load_tensors(path / name)
        index = path / "model.safetensors.index.json"
        if index.exists():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"corrupt {index}: {e}") from None
            weights: dict[str, Any] = {}
            for shard in shards:
                weights.update(load_tensors(path / shard))
            return weights
        raise CheckpointError(f"no model.safetensors, sharded index or pytorch_model.bin in {path}")
    if not path.exists():
        raise CheckpointError(f"not found: {path}")
    if path.suffix == ".safetensors":
        return dict(read_safetensors(path))
    return load_pickle(path)


def _float(w: dict[str, Any], dtype) -> dict[str, mx.array]:
    return {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and v.dtype != dtype else v
            for k, v in w.items() if isinstance(v, mx.array)}


# ---- GPT-2 -----------------------------------------------------------------------------------
def gpt2_weights_from_hf(sd: dict[str, Any], n_layer: int) -> dict[str, mx.array]:
    """Hugging Face (``transformer.``-prefixed or bare) GPT-2 keys → ours (``model.``-prefixed,
    Linear (out, in)); Conv1D weights transposed, mask buffers dropped, tied head checked."""
    sd = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in sd.items()}
    head = sd.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in sd and not mx.array_equal(head, sd["wte.weight"]):
        raise CheckpointError("lm_head.weight differs from wte.weight; only the tied GPT-2 head "
                              "is supported")
    out = {}
    for k in list(sd):
        v = sd.pop(k)  # released as we go, so a transposed copy never doubles the checkpoint
        if k.endswith(BUFFERS) or not isinstance(v, mx.array):
            continue
        if k.split(".", 2)[-1] in CONV1D and re.match(r"h\.\d+\.", k):
            v = mx.contiguous(v.T)
            mx.eval(v)
            mx.clear_cache()  # hand the original's buffer back instead of caching it
        out[f"model.{k}" if not k.startswith(CONCEPT_KEYS) else k] = v
    need = ["model.wte.weight", "model.wpe.weight", "model.ln_f.weight"] + \
           [f"model.h.{i}.attn.c_attn.weight" for i in range(n_layer)]
    missing = [k for k in need if k not in out]
    if missing:
        raise CheckpointError(f"missing tensors: {', '.join(missing[:4])}"
                              + (" ..." if len(missing) > 4 else ""))
    return out


def gpt2_weights_to_hf(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Ours → Hugging Face ``GPT2LMHeadModel`` keys (Conv1D (in, out); head tied, omitted)."""
    out = {}
    for k, v in weights.items():
        name = k[len("model."):] if k.startswith("model.") else k
        if name.split(".", 2)[-1] in CONV1D and re.match(r"h\.\d+\.", name):
            v = v.T
        out[f"transformer.{name}"] = v
    return out


def hf_gpt2_config(config: dict[str, Any]) -> dict[str, Any]:
    act = config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"activation {act!r} is not GPT-2's tanh GELU")
    keys = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon")
    try:
        return {k: config[k] for k in keys if k in config} | {
            k: int(config[k]) for k in ("vocab_size", "n_embd", "n_layer", "n_head")}
    except KeyError as e:
        raise CheckpointError(f"config.json lacks {e}") from None


def _tokenizer_into(src_dir: Optional[Path], tmp: Path) -> bool:
    """Copy or build tokenizer files from ``src_dir`` into ``tmp``; False when there are none."""
    from .tokenizer import TOKENIZER_FILES
    from .tokenizer import tokenizer_from_gpt2_files

    if src_dir is None:
        return False
    files = [f for f in TOKENIZER_FILES if (src_dir / f).exists()]
    if (src_dir / "tokenizer.json").exists():
        for f in files:
            (tmp / f).write_bytes((src_dir / f).read_bytes())
        return True
    for enc, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (src_dir / enc).exists() and (src_dir / merges).exists():
            built = tokenizer_from_gpt2_files(src_dir / enc, src_dir / merges, tmp / ".tok")
            for f in built.iterdir():
                f.rename(tmp / f.name)
            built.rmdir()
            return True
    return False



def _summary(model, out: Path) -> dict[str, Any]:
    """Check that ``out`` loads back with exactly ``model``'s tensors, and describe it."""
    loaded, config = load_model(out, lazy=True)
    mine = dict(tree_flatten(model.parameters()))
    seen = set()
    for k, v in read_safetensors(out / "model.safetensors"):
        if k not in mine or not mx.array_equal(v, mine[k]).item():
            raise CheckpointError(f"verification failed: {k} differs in {out}")
        seen.add(k)
        del v
        mx.clear_cache()
    if seen != mine.keys():
        raise CheckpointError(f"verification failed: {out} lacks tensors")
    dtypes = sorted({str(v.dtype).replace("mlx.core.", "") for v in mine.values()})
    return {"path": str(out), "tensors": len(mine), "parameters": sum(v.size for v in mine.values()),
            "dtype": ", ".join(dtypes), "tied_head": "lm_head.weight" not in mine, "model": type(loaded).__module__,
            "config": config}


def write_checkpoint(model, out: Path, tokenizer_src: Optional[Path],
                      extra: dict[str, Any]) -> dict[str, Any]:
    """Write ``model`` as a checkpoint in ``out``, verified (:func:`_summary`) before it moves
    into place; returns the summary."""
    from .checkpoint import write_model_files
    from .tokenizer import load_tokenizer

    def write(tmp: Path) -> None:
        has_tokenizer = _tokenizer_into(tokenizer_src, tmp)
        if has_tokenizer:
            eos = load_tokenizer(tmp).eos_token_id
            extra.setdefault("bos_token_id", eos)
            extra.setdefault("eos_token_id", eos)
        write_model_files(tmp, model, None, extra)

    return {**atomic_directory(out, write, verify=lambda tmp: _summary(model, tmp)),
            "path": str(out)}


def build_from(args_cls, model_cls, config: dict[str, Any], weights: dict[str, mx.array],
               dtype: str):
    """``model_cls(args_cls(**config))`` holding exactly ``weights`` (cast to ``dtype``)."""
    try:
        model = model_cls(args_cls(**config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"unusable config: {e}") from None
    try:
        model.load_weights(list(_float(weights, getattr(mx, dtype)).items()), strict=True)
    except ValueError as e:
        raise CheckpointError(f"the tensors do not fit a {config.get('model_type', 'model')} "
                              f"of this config: {e}") from None
    mx.eval(model.parameters())
    return model


def source_dir(src: Path) -> Path:
    return src if src.is_dir() else src.parent


def convert_gpt2(src: str | Path, out: str | Path, force: bool = False,
                 dtype: str = "float32") -> dict[str, Any]:
    """A Hugging Face GPT-2 directory or weights file → our (mlx-lm) checkpoint directory."""
    from .files import read_json
    from .models import gpt2

    src, out = Path(src), Path(out)
    refuse_existing(out, force, inputs=(src,))
    config = hf_gpt2_config(read_json(source_dir(src) / "config.json"))
    weights = gpt2_weights_from_hf(load_tensors(src), config["n_layer"])
    model = build_from(gpt2.ModelArgs, gpt2.Model, config, weights, dtype)
    return write_checkpoint(model, out, source_dir(src), {})


def read_run_yaml(src: Path) -> dict[str, Any]:
    """``key: value`` scalars of the official run's ``config.yaml`` beside ``src`` or its parent."""
    for path in (source_dir(src) / "config.yaml", source_dir(src).parent / "config.yaml"):
        if path.exists():
            values = {}
            for line in path.read_text(encoding="utf-8").splitlines():
                m = re.match(r"^([A-Za-z_]\w*)\s*:\s*([^#]*?)\s*(#.*)?$", line)
                if m and m.group(2):
                    values[m.group(1)] = m.group(2).strip("'\"")
            return values
    return {}


def convert_cocomix(src: str | Path, out: str | Path, concept_num: Optional[int] = None,
                    insert_layer: Optional[int] = None, sae_layer: Optional[int] = None,
                    force: bool = False, dtype: str = "float32") -> dict[str, Any]:
    """An official CoCoMix checkpoint (GPT-2 keys + ``transformer.pre_bias``,
    ``concept_predictor``, ``compress_layer``) → our CoCoMix checkpoint."""
    from .files import read_json
    from .models import cocomix, gpt2

    src, out = Path(src), Path(out)
    refuse_existing(out, force, inputs=(src,))
    config = hf_gpt2_config(read_json(source_dir(src) / "config.json"))
    run = read_run_yaml(src)
    weights = gpt2_weights_from_hf(load_tensors(src), config["n_layer"])
    missing = [k for k in CONCEPT_KEYS if k not in weights]
    if missing:
        raise CheckpointError(f"not a CoCoMix checkpoint: missing {', '.join(missing)}")

    def pick(flag, key):
        value = flag if flag is not None else run.get(key)
        if value is None:
            raise ConfigError(f"{key} is unknown: no config.yaml beside {src}; pass it as a flag")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key} in the config.yaml beside {src} must be an integer, not "
                              f"{value!r}; fix it or pass it as a flag") from None

    config.update(concept_dim=int(weights["concept_predictor.weight"].shape[0]),
                  concept_num=pick(concept_num, "concept_num"),
                  insert_layer=pick(insert_layer, "insert_layer_index"))
    model = build_from(cocomix.args_class(gpt2.ModelArgs), cocomix.model_class(gpt2.Model),
                       config, weights, dtype)
    sae = sae_layer if sae_layer is not None else run.get("sae_layer_index")
    extra = {"cocomix": {**model.args.cocomix_block(),
                         **({"sae_layer": int(sae)} if sae is not None else {})}}
    return write_checkpoint(model, out, source_dir(src), extra)


# ---- export -----------------------------------------------------------------------------------
def write_export(tmp: Path, src: Path, weights: dict[str, mx.array], hf: dict[str, Any],
                 block: Optional[dict[str, Any]], positions: bool = False) -> None:
    """An exported directory: the tokenizer of ``src`` (if any), float32 weights in PyTorch's
    safetensors flavour, ``config.json``, and for a CoCoMix ``block`` the official run's
    ``config.yaml`` (``positions``: with the slot-position rule of a RoPE student)."""
    from .checkpoint import copy_tokenizer

    try:
        copy_tokenizer(src, tmp)
    except CheckpointError:
        pass
    if block:
        lines = [f"concept_dim: {block['concept_dim']}", f"concept_num: {block['concept_num']}",
                 f"insert_layer_index: {block['insert_layer']}"]
        if positions:
            lines.append(f"concept_positions: {block.get('positions', 'shared')}")
        if "sae_layer" in block:
            lines.append(f"sae_layer_index: {block['sae_layer']}")
        (tmp / "config.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    save_weights(tmp / "model.safetensors", {k: v.astype(mx.float32) for k, v in weights.items()},
                 fmt="pt")
    write_json(tmp / "config.json", hf)


def _export(src: Path, out: Path, force: bool, want_cocomix: bool) -> tuple[Any, dict]:
    refuse_existing(out, force, inputs=(src,))
    model, config = load_model(src)
    if ("cocomix" in config) != want_cocomix or config.get("model_type") != "gpt2":
        kind = "a CoCoMix" if want_cocomix else "an NTP GPT-2"
        raise ConfigError(f"{src} is not {kind} checkpoint")
    if "quantization" in config:
        raise ConfigError(f"{src} is quantized; export the full-precision checkpoint")
    weights = gpt2_weights_to_hf(dict(tree_flatten(model.parameters())))
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
          "activation_function": "gelu_new", "tie_word_embeddings": True,
          **{k: config[k] for k in ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer",
                                    "n_head", "layer_norm_epsilon", "bos_token_id",
                                    "eos_token_id") if k in config},
          "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0}

    if want_cocomix:
        weights["lm_head.weight"] = weights["transformer.wte.weight"]
    atomic_directory(out, lambda tmp: write_export(tmp, src, weights, hf, config.get("cocomix")))
    return model, {"path": str(out), "tensors": len(weights),
                   "parameters": sum(v.size for v in weights.values())}


def export_gpt2(src: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Our NTP checkpoint → a Hugging Face GPT-2 directory (``GPT2LMHeadModel.from_pretrained``)."""
    return _export(Path(src), Path(out), force, want_cocomix=False)[1]


def export_cocomix(src: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Our CoCoMix checkpoint → the official layout (+ ``config.yaml`` with the concept settings)."""
    return _export(Path(src), Path(out), force, want_cocomix=True)[1]
