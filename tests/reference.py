"""Independent NumPy re-implementations of the model equations (DESIGN §2), for tests."""

import math

import numpy as np


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def attention(x, p, n_head):
    """Causal multi-head attention with biases; weights in Linear (out, in) layout."""
    B, T, D = x.shape
    qkv = x @ p["c_attn.weight"].T + p["c_attn.bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    split = lambda a: a.reshape(B, T, n_head, D // n_head).transpose(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D // n_head)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    out = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
    return out @ p["c_proj.weight"].T + p["c_proj.bias"]


def block(x, p, n_head, eps=1e-5):
    sub = lambda prefix: {k[len(prefix) + 1:]: v for k, v in p.items() if k.startswith(prefix + ".")}
    x = x + attention(layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], eps), sub("attn"), n_head)
    h = layer_norm(x, p["ln_2.weight"], p["ln_2.bias"], eps)
    h = gelu_tanh(h @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"])
    return x + h @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]


def _blocks(x, w, start, stop, n_head, eps):
    for i in range(start, stop):
        prefix = f"h.{i}."
        x = block(x, {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}, n_head, eps)
    return x


def _model_weights(weights):
    return {k[len("model."):]: v.astype(np.float64) for k, v in weights.items() if k.startswith("model.")}


def gpt2_logits(weights: dict, tokens, n_layer, n_head, eps=1e-5):
    """GPT-2 forward from a flat ``model.*`` weight dict of NumPy arrays."""
    w = _model_weights(weights)
    x = w["wte.weight"][tokens] + w["wpe.weight"][:tokens.shape[1]]
    x = layer_norm(_blocks(x, w, 0, n_layer, n_head, eps), w["ln_f.weight"], w["ln_f.bias"], eps)
    return x @ w["wte.weight"].T


def standardize(h, eps=1e-5):
    mu = h.mean(-1, keepdims=True)
    std = (h - mu).std(-1, ddof=1, keepdims=True)
    return (h - mu) / (std + eps), mu, std


def cocomix_logits(weights: dict, tokens, n_layer, n_head, insert, k, eps=1e-5):
    """CoCoMix forward (DESIGN §2): (logits, concept logits)."""
    w = _model_weights(weights)
    c = {n: v.astype(np.float64) for n, v in weights.items() if not n.startswith("model.")}
    B, T = tokens.shape
    h = w["wte.weight"][tokens] + w["wpe.weight"][:T]
    h = _blocks(h, w, 0, insert, n_head, eps)
    x, mu, std = standardize(h)
    z = (x - c["pre_bias"]) @ c["concept_predictor.weight"].T + c["concept_predictor.bias"]
    keep = np.argsort(-z, axis=-1)[..., :k]
    zk = np.zeros_like(z)
    np.put_along_axis(zk, keep, np.take_along_axis(z, keep, -1), -1)
    concept = (zk @ c["compress_layer.weight"].T + c["compress_layer.bias"] + c["pre_bias"]) * std + mu
    mixed = np.empty((B, 2 * T, h.shape[-1]))
    mixed[:, 0::2], mixed[:, 1::2] = h, concept
    out = _blocks(mixed, w, insert, n_layer, n_head, eps)[:, 1::2]
    out = layer_norm(out, w["ln_f.weight"], w["ln_f.bias"], eps)
    return out @ w["wte.weight"].T, z


# ---- Llama family -------------------------------------------------------------------------------
def rms_norm(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, positions, theta=10000.0):
    """Rotary embedding (Hugging Face's rotate-half layout) of x (..., T, D) at ``positions`` (T,)."""
    D = x.shape[-1]
    inv = theta ** (-np.arange(0, D, 2) / D)
    angle = np.asarray(positions, np.float64)[:, None] * inv[None]
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def llama_block(x, p, heads, kv_heads, positions, theta=10000.0, eps=1e-5, qk_norm=False):
    """One pre-norm Llama block: GQA attention with RoPE at ``positions``, SwiGLU MLP."""
    B, T, _ = x.shape
    h = rms_norm(x, p["input_layernorm.weight"], eps)
    q, k, v = (h @ p[f"self_attn.{n}_proj.weight"].T for n in "qkv")
    split = lambda a, n: a.reshape(B, T, n, -1).transpose(0, 2, 1, 3)
    q, k, v = split(q, heads), split(k, kv_heads), split(v, kv_heads)
    if qk_norm:
        q = rms_norm(q, p["self_attn.q_norm.weight"], eps)
        k = rms_norm(k, p["self_attn.k_norm.weight"], eps)
    q, k = rope(q, positions, theta), rope(k, positions, theta)
    k, v = (np.repeat(a, heads // kv_heads, axis=1) for a in (k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    out = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, T, -1)
    x = x + out @ p["self_attn.o_proj.weight"].T
    h = rms_norm(x, p["post_attention_layernorm.weight"], eps)
    gate, up = h @ p["mlp.gate_proj.weight"].T, h @ p["mlp.up_proj.weight"].T
    return x + (gate / (1 + np.exp(-gate)) * up) @ p["mlp.down_proj.weight"].T


def llama_logits(weights: dict, tokens, heads, kv_heads, insert=None, k=None,
                 positions="shared", theta=10000.0, qk_norm=False, eps=1e-5):
    """A Llama forward from a flat weight dict (tied head); with ``insert`` the CoCoMix forward
    (concept mixed in before block ``insert``, slots placed by ``positions``): (logits, z)."""
    w = _model_weights(weights)
    n_layer = len({key.split(".")[1] for key in w if key.startswith("layers.")})
    layer = lambda i: {key[len(f"layers.{i}."):]: v for key, v in w.items()
                       if key.startswith(f"layers.{i}.")}
    B, T = tokens.shape
    h = w["embed_tokens.weight"][tokens]
    z = None
    for i in range(n_layer):
        if i == insert:
            c = {n: v.astype(np.float64) for n, v in weights.items() if not n.startswith("model.")}
            x, mu, std = standardize(h)
            z = (x - c["pre_bias"]) @ c["concept_predictor.weight"].T + c["concept_predictor.bias"]
            keep = np.argsort(-z, axis=-1)[..., :k]
            zk = np.zeros_like(z)
            np.put_along_axis(zk, keep, np.take_along_axis(z, keep, -1), -1)
            concept = (zk @ c["compress_layer.weight"].T + c["compress_layer.bias"]
                       + c["pre_bias"]) * std + mu
            mixed = np.empty((B, 2 * T, h.shape[-1]))
            mixed[:, 0::2], mixed[:, 1::2] = h, concept
            h = mixed
        slots = h.shape[1]
        pos = np.arange(slots) // 2 if slots == 2 * T and positions == "shared" else np.arange(slots)
        h = llama_block(h, layer(i), heads, kv_heads, pos, theta, eps, qk_norm)
    if insert is not None:
        h = h[:, 1::2]
    h = rms_norm(h, w["norm.weight"], eps)
    return h @ w["embed_tokens.weight"].T, z
