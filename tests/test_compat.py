"""What ``cocomix_mlx.compat`` relies on in mlx-lm: each test fails if mlx-lm changes it.

The rest of the package touches no private mlx-lm name (checked here too)."""

import ast
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from cocomix_mlx import compat

PACKAGE = Path(__file__).resolve().parents[1] / "cocomix_mlx"
PRIVATE = {"_detokenizer", "_maybe_trim_space", "_get_classes"}  # mlx-lm names compat uses


def test_model_classes_follow_mlx_lm_remapping():
    from mlx_lm.models import llama, qwen2

    assert compat.model_classes({"model_type": "llama"}) == (llama.Model, llama.ModelArgs)
    assert compat.model_classes({"model_type": "mistral"}) == (llama.Model, llama.ModelArgs)
    assert compat.model_classes({"model_type": "qwen2"}) == (qwen2.Model, qwen2.ModelArgs)
    with pytest.raises(ValueError):
        compat.model_classes({"model_type": "no_such_model"})


def test_attention_mask_for_prefill_decode_cache_and_window():
    from mlx_lm.models.cache import KVCache

    h = mx.zeros((1, 6, 4))
    assert compat.attention_mask(h) == "causal"
    assert compat.attention_mask(h[:, :1]) is None
    window = np.array(compat.attention_mask(h, window=3))  # a boolean (6, 6) band
    expected = np.tril(np.ones((6, 6), bool)) & ~np.tril(np.ones((6, 6), bool), -3)
    np.testing.assert_array_equal(window, expected)
    cache = KVCache()
    cache.update_and_fetch(mx.zeros((1, 1, 5, 2)), mx.zeros((1, 1, 5, 2)))
    mask = compat.attention_mask(h[:, :2], cache)  # two queries after five cached keys
    assert mask == "causal" or np.array(mask).shape[-2:] == (2, 7)


def test_the_detokenizer_hook_exists_and_keeps_the_space(tmp_path):
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer
    from mlx_lm.utils import load_tokenizer

    from cocomix_mlx.tokenizer import tokenizer_from_gpt2_files
    from conftest import gpt2_bpe_dir

    assert callable(BPEStreamingDetokenizer._maybe_trim_space)
    gpt2 = gpt2_bpe_dir()
    tok = load_tokenizer(tokenizer_from_gpt2_files(gpt2 / "encoder.json", gpt2 / "vocab.bpe",
                                                   tmp_path / "tok"))
    ids = tok.encode(" expected rain")

    def stream() -> str:
        d = tok.detokenizer
        d.reset()
        for i in ids:
            d.add_token(i)
        d.finalize()
        return d.text

    assert stream() == "expected rain"  # mlx-lm trims: the behaviour the hook exists for
    compat.keep_leading_space(tok)
    assert stream() == " expected rain"


def test_no_private_mlx_lm_name_outside_compat():
    """No module but compat imports an underscore name from mlx-lm or reads the tokenizer
    wrapper's private detokenizer."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlx_lm"):
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                offenders.append(f"{path.name}: {node.attr}")
    assert offenders == []


def module_graph() -> dict[str, set[str]]:
    """Package-internal imports (at any depth, lazy ones too): module → modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("cocomix_mlx"):
                continue
            for alias in node.names:  # "from . import files" names a module
                sub = f"{target}.{alias.name}"
                edges.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          else target)
    return graph


def test_the_package_has_no_import_cycle():
    graph = module_graph()
    assert "cocomix_mlx.files" in graph and graph["cocomix_mlx.files"] <= {"cocomix_mlx.errors"}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt == "cocomix_mlx":  # the package itself is the entry point
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join(trail + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
