"""TopK SAE: OpenAI semantics against NumPy, checkpoints."""

import mlx.core as mx
import numpy as np
import pytest

import cocomix_mlx as cm
from cocomix_mlx.errors import CheckpointError, ConfigError
from cocomix_mlx.models.sae import SAEConfig, TopKSAE, save_sae


def np_standardize(h, eps=1e-5):
    mu = h.mean(-1, keepdims=True)
    std = (h - mu).std(-1, ddof=1, keepdims=True)
    return (h - mu) / (std + eps), mu, std


def np_sae(p, h, k, normalize=True):
    """OpenAI sparse_autoencoder TopK forward: (latents, reconstruction)."""
    x, mu, std = np_standardize(h) if normalize else (h, 0.0, 1.0)
    pre = (x - p["pre_bias"]) @ p["encoder.weight"].T + p["latent_bias"]
    z = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[..., :k]
    np.put_along_axis(z, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    return z, (z @ p["decoder.weight"].T + p["pre_bias"]) * std + mu


def random_sae(d=24, c=96, k=8, normalize=True, seed=0):
    rng = np.random.default_rng(seed)
    p = {"pre_bias": rng.standard_normal(d) * 0.1, "encoder.weight": rng.standard_normal((c, d)) * 0.3,
         "latent_bias": rng.standard_normal(c) * 0.1 + 0.5, "decoder.weight": rng.standard_normal((d, c)) * 0.3}
    p = {n: v.astype(np.float32) for n, v in p.items()}
    sae = TopKSAE(SAEConfig(d=d, latents=c, k=k, normalize=normalize))
    sae.load_weights([(n, mx.array(v)) for n, v in p.items()], strict=True)
    return sae, p


@pytest.mark.parametrize("normalize", [True, False])
def test_encode_decode_match_numpy(normalize):
    sae, p = random_sae(normalize=normalize)
    h = (np.random.default_rng(1).standard_normal((3, 5, 24)) * 3 + 1).astype(np.float32)
    z, stats = sae.encode(mx.array(h), return_stats=True)
    rz, rh = np_sae({n: v.astype(np.float64) for n, v in p.items()}, h.astype(np.float64), 8, normalize)
    np.testing.assert_allclose(np.array(z), rz, atol=1e-4)
    np.testing.assert_allclose(np.array(sae.decode(z, stats)), rh, atol=1e-4)
    np.testing.assert_allclose(np.array(sae(mx.array(h))), rh, atol=1e-4)
    nonzero = (np.array(z) != 0).sum(-1)
    assert (nonzero <= 8).all() and (nonzero == 8).mean() > 0.9  # ReLU may zero a kept entry
    if normalize:  # the standardized space only by asking for it, never by forgetting the stats
        with pytest.raises(ValueError, match="standardizes its input"):
            sae.decode(z, None)
        mu, std = (np.array(a) for a in stats)
        np.testing.assert_allclose(np.array(sae.decode_standardized(z)) * std + mu, rh, atol=1e-4)


def test_exactly_k_active_when_preactivations_positive():
    sae, _ = random_sae(k=5)
    sae.latent_bias = mx.full((96,), 100.0)
    z = sae.encode(mx.random.normal((64, 24)))
    assert ((np.array(z) != 0).sum(-1) == 5).all()


def test_checkpoint_round_trip_and_errors(tmp_path):
    sae, p = random_sae()
    save_sae(sae, tmp_path, {"source_model": "gpt2", "layer": 5})
    loaded = cm.load_sae(tmp_path)
    assert loaded.cfg.layer == 5 and loaded.cfg.k == 8
    h = mx.random.normal((4, 24))
    assert mx.array_equal(loaded.encode(h), sae.encode(h))
    with pytest.raises(CheckpointError, match="no SAE"):
        cm.load_sae(tmp_path / "missing")


# ---- training ------------------------------------------------------------------------------------
def test_tangent_projection_and_unit_columns():
    from cocomix_mlx.sae_trainer import remove_parallel_component, unit_columns

    w = unit_columns(mx.random.normal((16, 40)))
    g = remove_parallel_component(mx.random.normal((16, 40)), w)
    assert mx.abs((g * w).sum(0)).max().item() < 1e-5
    assert mx.abs(mx.linalg.norm(w, axis=0) - 1).max().item() < 1e-5


def test_auxk_skipped_only_when_no_latent_is_dead():
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from cocomix_mlx.sae_trainer import sae_loss

    sae, _ = random_sae()
    h = mx.random.normal((32, 24), key=mx.random.key(3)) * 2
    grad = nn.value_and_grad(sae, lambda h, dead: sae_loss(sae, h, dead, 12, 1 / 32)[0])
    none_dead, skipped = grad(h, mx.zeros((96,), mx.bool_)), grad(h, None)
    assert none_dead[0].item() == skipped[0].item()
    for (name, a), (_, b) in zip(tree_flatten(none_dead[1]), tree_flatten(skipped[1])):
        assert mx.array_equal(a, b), name
    some_dead = grad(h, mx.arange(96) % 2 == 0)
    assert some_dead[0].item() > skipped[0].item()
    assert not mx.array_equal(some_dead[1]["encoder"]["weight"], skipped[1]["encoder"]["weight"])


def sae_trainer(teacher_dir, data, out, **kw):
    from cocomix_mlx.checkpoint import load_model
    from cocomix_mlx.sae_trainer import SAETrainConfig, SAETrainer

    teacher, _ = load_model(teacher_dir)
    cfg = SAETrainConfig(**{**dict(layer=0, latents=256, k=8, tokens=60 * 256, batch_tokens=256,
                                   seq_len=64, buffer_steps=8, log_every=1, save_every=0), **kw})
    return SAETrainer(cfg, teacher, data, out)


def check_position_zero_left_out(teacher, sae, data):
    """evaluate_sae against a NumPy recomputation in which position 0 is neither measured nor
    replaced."""
    from cocomix_mlx.models.backbone import backbone
    from cocomix_mlx.sae_analysis import _windows, evaluate_sae

    r = evaluate_sae(teacher, sae, 0, data, batches=1)
    bb = backbone(teacher)
    inputs, targets = _windows(data, "val", 8, min(128, bb.context), 1)[0]
    h, upper = bb.split(mx.array(inputs), 0)
    head = bb.head
    h = np.array(h, np.float64)
    z, stats = sae.encode(mx.array(h[:, 1:], mx.float32), return_stats=True)
    recon = np.array(sae.decode(z, stats), np.float64)
    x, rx = h[:, 1:].reshape(-1, h.shape[-1]), recon.reshape(-1, h.shape[-1])
    assert r["fvu"] == pytest.approx(((rx - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-4)
    xn = (x - x.mean(-1, keepdims=True)) / (x.std(-1, ddof=1, keepdims=True) + 1e-5)
    rn = np.array(sae.decode_standardized(z), np.float64).reshape(xn.shape)
    assert r["fvu_normalized"] == pytest.approx(((rn - xn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum(),
                                                rel=1e-4)

    def loss(hidden):
        logits = np.array(head(upper(mx.array(hidden, mx.float32))), np.float64)
        m = logits.max(-1, keepdims=True)
        lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
        return (lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]).mean()

    spliced = h.copy()
    spliced[:, 1:] = recon
    assert r["clean_loss"] == pytest.approx(loss(h), rel=1e-5)
    assert r["spliced_loss"] == pytest.approx(loss(spliced), rel=1e-5)
    assert r["l0"] == pytest.approx(float((np.array(z) > 0).sum(-1).mean()), rel=1e-6)


def test_short_run_learns_keeps_unit_decoder_and_resumes(tiny_teacher, mobydick_data, tmp_path):
    from cocomix_mlx.sae_analysis import evaluate_sae

    trainer = sae_trainer(tiny_teacher, mobydick_data, tmp_path / "a")
    last = trainer.train()
    assert last["fvu"] < 0.5 and last["l0"] <= 8
    assert mx.abs(mx.linalg.norm(trainer.sae.W_dec, axis=0) - 1).max().item() < 1e-4
    sae = cm.load_sae(tmp_path / "a")
    teacher, _ = cm.load(tiny_teacher)
    r = evaluate_sae(teacher, sae, 0, mobydick_data, batches=4)
    assert r["fvu"] < 0.5 and r["delta_loss"] < 1.0
    check_position_zero_left_out(teacher, sae, mobydick_data)

    check_resume_is_bit_exact(tiny_teacher, mobydick_data, tmp_path)


def check_resume_is_bit_exact(teacher, data, tmp_path, **kw):
    """A run stopped at its step-3 checkpoint and resumed logs the losses of an unbroken run."""
    import json

    full = sae_trainer(teacher, data, tmp_path / "full", tokens=6 * 256, save_every=3, **kw)
    full.train()
    part = sae_trainer(teacher, data, tmp_path / "part", tokens=6 * 256, save_every=3, **kw)

    class Stop(Exception):
        pass

    def stop(event, info):
        if event == "save" and info["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        part.train(stop)
    resumed = sae_trainer(teacher, data, tmp_path / "part", tokens=6 * 256, save_every=3, **kw)
    resumed.resume()
    resumed.train()
    losses = lambda p: [json.loads(x)["loss"] for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "part") == losses(tmp_path / "full") and len(losses(tmp_path / "full")) == 6
    return resumed


def test_buffer_reuse_and_lr_decay(tiny_teacher, mobydick_data, tmp_path):
    from cocomix_mlx.checkpoint import load_model
    from cocomix_mlx.data import TokenDataset
    from cocomix_mlx.sae_trainer import ActivationBuffer, SAETrainConfig

    cfg = SAETrainConfig(tokens=100 * 256, batch_tokens=256, warmup_steps=10, decay_fraction=0.2, lr=1e-3)
    s = np.arange(100)
    want = 1e-3 * np.minimum(1, (s + 1) / 10) * np.clip((100 - s) / 20, 0, 1)
    got = [cfg.lr_schedule()(mx.array(i)).item() for i in s]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert got[79] == pytest.approx(1e-3) and got[99] == pytest.approx(1e-3 / 20)

    teacher, _ = load_model(tiny_teacher)
    data = TokenDataset(mobydick_data, "train")
    rows = {}
    for reuse in (1, 2):
        c = SAETrainConfig(batch_tokens=64, seq_len=64, buffer_steps=2, reuse=reuse)
        buf = ActivationBuffer(teacher, data, c)
        rows[reuse] = [np.array(buf.batch(i)) for i in range(4 * reuse)]
    np.testing.assert_array_equal(np.concatenate(rows[2][:2]), np.concatenate(rows[1][:2]))
    np.testing.assert_array_equal(np.concatenate(rows[2][4:6]), np.concatenate(rows[1][2:4]))
    first, second = np.concatenate(rows[2][:2]), np.concatenate(rows[2][2:4])
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first[np.lexsort(first.T)], second[np.lexsort(second.T)])
    resumed = check_resume_is_bit_exact(tiny_teacher, mobydick_data, tmp_path, buffer_steps=2,
                                        reuse=2, decay_fraction=0.5, warmup_steps=1)
    last_lr = resumed.cfg.peak_lr() / 3  # the update of step 5 of 6, a third of the way down
    assert resumed.optimizer.learning_rate.item() == pytest.approx(last_lr)
    with pytest.raises(ConfigError):
        SAETrainConfig(reuse=0)


def test_auxk_revives_killed_latents(tiny_teacher, mobydick_data, tmp_path):
    revived = {}
    for coef in (0.0, 1 / 32):
        trainer = sae_trainer(tiny_teacher, mobydick_data, tmp_path / str(coef), auxk_coef=coef,
                              tokens=40 * 256, dead_tokens=256 * 5)
        killed = mx.arange(0, 256, 2)
        trainer.sae.latent_bias = trainer.sae.latent_bias.at[killed].add(-1.5)
        before = np.array(trainer.sae.encoder.weight[killed])
        trainer.train()
        after = np.array(trainer.sae.encoder.weight[killed])
        revived[coef] = float(np.abs(after - before).sum(-1).mean())
    assert revived[1 / 32] > 2 * revived[0.0], revived


def test_cli_width_mismatch_is_one_line_error(tiny_teacher, mobydick_data, tmp_path):
    from conftest import cocomix

    save_sae(TopKSAE(SAEConfig(d=32, latents=64, k=4, layer=0)), tmp_path)
    for cmd in ("eval", "describe"):
        extra = ["--out", tmp_path / "c.json"] if cmd == "describe" else []
        r = cocomix("sae", cmd, "--sae", tmp_path, "--teacher", tiny_teacher, "--data", mobydick_data, *extra)
        assert r.returncode == 2 and "width" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cocomix("sae", "train", "--teacher", tiny_teacher, "--data", mobydick_data, "--layer", "9",
                "--out", tmp_path / "x", "--latents", "64", "--k", "4", "--tokens", "512")
    assert r.returncode == 2 and "out of range" in r.stderr and not (tmp_path / "x").exists()


def test_cli_resume_with_more_tokens_extends_the_run(tiny_teacher, mobydick_data, tmp_path):
    import json

    from conftest import cocomix

    out = tmp_path / "sae"
    common = ["--teacher", tiny_teacher, "--data", mobydick_data, "--out", out]
    r = cocomix("sae", "train", *common, "--layer", "0", "--latents", "64", "--k", "4",
                "--tokens", "512", "--batch-tokens", "128", "--save-every", "2")
    assert r.returncode == 0, r.stderr
    window = json.loads((out / "trainer_state.json").read_text())["config"]
    r = cocomix("sae", "train", *common, "--resume", "--tokens", "768")
    assert r.returncode == 0, r.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["config"]["tokens"] == 768
    assert state["config"]["dead_tokens"] == max(128, 512 // 10) and window["dead_tokens"] == 0
    r = cocomix("sae", "train", *common, "--resume", "--tokens", "256")
    assert r.returncode == 2 and "already at step 6" in r.stderr


def test_shipped_smollm2_sae_is_what_its_manifest_and_the_study_say():
    """weights/smollm2-sae: the shape configs/study.toml asks for, fp16, a dictionary entry per
    latent, and recorded figures inside the bar (the figures themselves need SmolLM2 and its
    data; weights/smollm2_sae.py measures them before shipping)."""
    import json
    import tomllib

    import mlx.core as mx

    import cocomix_mlx as cm
    from conftest import WEIGHTS

    root = WEIGHTS / "smollm2-sae"
    want = tomllib.loads((WEIGHTS.parent / "experiments" / "strong_teacher" / "configs" /
                          "study.toml").read_text())["smol_sae"]
    sae = cm.load_sae(root)
    assert (sae.cfg.layer, sae.cfg.latents, sae.cfg.k) == (want["layer"], want["latents"], want["k"])
    assert sae.W_dec.dtype == mx.float16 and sae.W_dec.shape == (576, want["latents"])
    latents = json.loads((root / "concepts.json").read_text())["latents"]
    assert sorted(x["index"] for x in latents) == list(range(want["latents"]))
    manifest = json.loads((root / "manifest.json").read_text())["float16"]
    assert manifest["fvu_normalized"] <= 0.15 and manifest["dead_fraction"] <= 0.05
    assert manifest["delta_loss"] <= 0.3
