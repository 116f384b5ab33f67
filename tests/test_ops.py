"""Fast kernels against their textbook NumPy forms, values and gradients."""

import mlx.core as mx
import numpy as np
import pytest

from cocomix_mlx import ops
from cocomix_mlx.ops import cross_entropy, exp, gelu, head_cross_entropy


def np_ce_rows(logits, targets):
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[:, 0]
    return lse - logits[np.arange(len(targets)), targets]


def np_ce_grad(logits, targets):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(len(targets)), targets] -= 1
    return p / len(targets)


@pytest.mark.parametrize("n", [4001, 40001])  # MLX's fused form (decoding sizes), and ours
def test_gelu_matches_tanh_form(n):
    from cocomix_mlx.ops import SMALL

    assert (n <= SMALL) == (n == 4001)
    x = np.linspace(-8, 8, n).astype(np.float32)
    ref = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    assert np.abs(np.array(gelu(mx.array(x))) - ref).max() < 2e-6
    far = mx.array([-11.0, -30.0, -1e6, 40.0])
    grad = np.array(mx.grad(lambda z: gelu(z).sum())(far))
    assert np.isfinite(grad).all() and np.allclose(grad, [0, 0, 0, 1], atol=1e-6)
    x64 = np.linspace(-6, 6, 2001)
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
    du = np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x64**2)
    ref_grad = 0.5 * (1 + np.tanh(u)) + 0.5 * x64 * (1 - np.tanh(u) ** 2) * du
    grad = np.array(mx.grad(lambda z: gelu(z).sum())(mx.array(x64.astype(np.float32))))
    assert np.abs(grad - ref_grad).max() < 2e-6


def test_exp_is_accurate_everywhere_with_exact_edges():
    x = np.concatenate([np.linspace(-87.3, 88.7, 1_000_001), [-1e-30, 0.0, 1e-30]]).astype(np.float32)
    ours = np.array(exp(mx.array(x))).astype(np.float64)
    assert np.abs(ours / np.exp(x.astype(np.float64)) - 1).max() < 2e-7
    edges = np.array(exp(mx.array([-np.inf, -100.0, -87.5, 89.0, np.inf, np.nan], mx.float32)))
    assert edges[:3].tolist() == [0, 0, 0] and np.isposinf(edges[3:5]).all() and np.isnan(edges[5])
    g = np.array(mx.grad(lambda z: exp(z).sum())(mx.array([0.0, 1.5, -3.0])))
    np.testing.assert_allclose(g, np.exp([0.0, 1.5, -3.0]), rtol=2e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_value_and_grad(reduction):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((37, 101)) * 4).astype(np.float32)
    targets = rng.integers(0, 101, 37)
    out = np.array(cross_entropy(mx.array(logits), mx.array(targets), reduction))
    rows = np_ce_rows(logits.astype(np.float64), targets)
    ref = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    g = mx.grad(lambda z: cross_entropy(z, mx.array(targets)))(mx.array(logits))
    np.testing.assert_allclose(np.array(g), np_ce_grad(logits.astype(np.float64), targets), atol=1e-7)


def test_head_cross_entropy_split_equals_unsplit():
    rng = np.random.default_rng(1)
    h = mx.array(rng.standard_normal((4, 9, 16)).astype(np.float32))
    w = mx.array(rng.standard_normal((50, 16)).astype(np.float32) * 0.3)
    targets = mx.array(rng.integers(0, 50, (4, 9)))

    def head(x):
        return x @ w.T

    def loss(h, w_):
        return head_cross_entropy(h, targets, lambda x: x @ w_.T)

    ref_rows = np_ce_rows(np.array(head(h.reshape(-1, 16))).astype(np.float64), np.array(targets).reshape(-1))
    rows = np.array(head_cross_entropy(h, targets, head, "none"))
    assert rows.shape == (4, 9)
    np.testing.assert_allclose(rows.reshape(-1), ref_rows, rtol=1e-5)
    gh, gw = mx.grad(loss, argnums=(0, 1))(h, w)
    logits = np.array(h.reshape(-1, 16) @ w.T).astype(np.float64)
    dlogits = np_ce_grad(logits, np.array(targets).reshape(-1))
    np.testing.assert_allclose(np.array(gh).reshape(-1, 16), dlogits @ np.array(w), atol=1e-6)
    np.testing.assert_allclose(np.array(gw), dlogits.T @ np.array(h).reshape(-1, 16), atol=1e-6)


def test_multi_target_cross_entropy_is_mean_of_single_targets():
    rng = np.random.default_rng(2)
    logits = mx.array(rng.standard_normal((2, 5, 40)).astype(np.float32))
    labels = mx.array(np.stack([rng.permutation(40)[:4] for _ in range(10)]).reshape(2, 5, 4))

    def multi(z):
        return cross_entropy(z, labels, "mean")

    def single(z):
        return sum(cross_entropy(z, labels[..., i], "mean") for i in range(4)) / 4

    assert cross_entropy(logits, labels, "none").shape == (2, 5)
    np.testing.assert_allclose(multi(logits).item(), single(logits).item(), rtol=1e-6)
    np.testing.assert_allclose(np.array(mx.grad(multi)(logits)), np.array(mx.grad(single)(logits)),
                               atol=1e-7)


def _pairs(rng):
    """(name, kernel, textbook, args, differentiable argument indices) for every kernel."""
    f32 = np.float32
    x = mx.array(np.concatenate([np.linspace(-9, 9, 30001), rng.standard_normal(99)]).astype(f32))
    small = mx.array(rng.standard_normal(300).astype(f32) * 3)
    q, k, v = (mx.array(rng.standard_normal((2, 2, 256, 16)).astype(f32)) for _ in range(3))
    qd = q[:, :, -5:]  # decoding: the last 5 queries over all 256 keys
    mask = mx.array(rng.random((5, 256)) < 0.7) | (mx.arange(256) == 0)[None]
    z = mx.array(rng.standard_normal((70, 300)).astype(f32))
    logits = mx.array(rng.standard_normal((130, 97)).astype(f32) * 4)
    targets = mx.array(rng.integers(0, 97, 130))
    h = mx.array(rng.standard_normal((130, 24)).astype(f32))
    w = mx.array(rng.standard_normal((97, 24)).astype(f32) * 0.3)
    model = ops_model(rng)
    tokens = mx.array(rng.integers(0, 97, (2, 128)))
    return [
        ("exp", ops.exp, ops.exp_textbook, (x * 9,), (0,)),
        ("gelu (ours)", ops.gelu, ops.gelu_textbook, (x,), (0,)),
        ("gelu (fused)", ops.gelu, ops.gelu_textbook, (small,), (0,)),
        ("attention causal", ops.attention, ops.attention_textbook, (q, k, v, 0.25), (0, 1, 2)),
        ("attention decode", ops.attention, ops.attention_textbook, (qd, k, v, 0.25), (0, 1, 2)),
        ("attention masked", ops.attention, ops.attention_textbook,
         (qd, k, v, 0.25, mask), (0, 1, 2)),
        ("keep_topk", ops.keep_topk, ops.keep_topk_textbook, (z, 7), (0,)),
        ("cross_entropy", ops.cross_entropy, ops.cross_entropy_textbook, (logits, targets), (0,)),
        ("head_cross_entropy", lambda h, w: ops.head_cross_entropy(h, targets, lambda a: a @ w.T),
         lambda h, w: ops.head_cross_entropy_textbook(h, targets, lambda a: a @ w.T), (h, w),
         (0, 1)),
        ("lm_cross_entropy", lambda t: ops.lm_cross_entropy(model, t[:, :-1], t[:, 1:])[0],
         lambda t: ops.lm_cross_entropy_textbook(model, t[:, :-1], t[:, 1:]), (tokens,), ()),
    ]


def ops_model(rng):
    from cocomix_mlx.models import gpt2

    mx.random.seed(int(rng.integers(1 << 30)))
    return gpt2.Model(gpt2.ModelArgs(vocab_size=97, n_positions=128, n_embd=32, n_layer=2, n_head=4))


def _sum_of(fn, argnums, args):
    def scalar(*diff):
        full = list(args)
        for i, a in zip(argnums, diff):
            full[i] = a
        return fn(*full).astype(mx.float32).sum()
    return mx.grad(scalar, argnums=tuple(range(len(argnums))))(*(args[i] for i in argnums))


@pytest.mark.parametrize("device", __import__("cocomix_mlx.backend").backend.devices(), ids=str)
def test_every_kernel_equals_its_textbook_form(device):
    """Each fast kernel of ``ops`` and the one-line form beside it agree, values and gradients,
    on every device MLX has here (the CPU always; Metal or CUDA where present)."""
    with mx.stream(mx.default_stream(device)):
        old = mx.default_device()
        mx.set_default_device(device)
        try:
            for name, fast, textbook, args, argnums in _pairs(np.random.default_rng(7)):
                np.testing.assert_allclose(np.array(fast(*args)), np.array(textbook(*args)),
                                           rtol=3e-5, atol=3e-6, err_msg=name)
                if argnums:
                    for g, g_ref in zip(_sum_of(fast, argnums, args),
                                        _sum_of(textbook, argnums, args)):
                        np.testing.assert_allclose(np.array(g), np.array(g_ref), rtol=1e-4,
                                                   atol=2e-6, err_msg=f"{name} gradient")
        finally:
            mx.set_default_device(old)
