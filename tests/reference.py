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
