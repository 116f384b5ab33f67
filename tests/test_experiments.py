"""The studies' shared report helpers (experiments/common.py)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _common():
    spec = importlib.util.spec_from_file_location("experiments_common", ROOT / "experiments" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_runs_reads_student_results_and_skips_other_records(tmp_path):
    common = _common()
    for variant, seed, ppl in (("ntp", 0, 170.0), ("ntp_base", 0, 160.0), ("cocomix", 12, 150.0)):
        (tmp_path / f"{variant}-s{seed}.json").write_text(
            json.dumps({"variant": variant, "seed": seed, "val": {"ppl": ppl}}))
    # label-store and teacher records sit beside them; "labels-smol.json" matches "*-s*.json"
    (tmp_path / "labels-smol.json").write_text(json.dumps({"kind": "attribution"}))
    (tmp_path / "own_teacher.json").write_text(json.dumps({"teacher_val": {"ppl": 100.0}}))
    runs = common.load_runs(tmp_path)
    assert {v: sorted(s) for v, s in runs.items()} == {"ntp": [0], "ntp_base": [0], "cocomix": [12]}
    assert common.paired(runs, "ntp_base", "ntp") == {0: -10.0}


def _strong(name: str, monkeypatch):
    """``experiments/strong_teacher/NAME.py`` as a module (it imports ``common``)."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(
        f"strong_{name}", ROOT / "experiments" / "strong_teacher" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strong_teacher_trend_is_paired_against_each_reference(tmp_path, monkeypatch):
    """Gaps are taken seed by seed against the named reference, and the fitted line
    ``gap = a + b ln(tokens)`` and its zero crossing are those of the data."""
    import math

    report = _strong("report", monkeypatch)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (tmp_path / "curves").mkdir()
    steps, per_step, a, b = [64 * i for i in range(1, 17)], 2048, 0.8, -0.06
    losses = {"ntp": lambda s: 5.0, "ntp_base": lambda s: 4.9,
              "cocomix": lambda s: 4.9 + a + b * math.log(s * per_step)}
    for variant, loss in losses.items():
        for seed in (0, 1):
            (tmp_path / f"{variant}-s{seed}.json").write_text(json.dumps(
                {"variant": variant, "seed": seed, "tokens": steps[-1] * per_step}))
            (tmp_path / "curves" / f"{variant}-s{seed}.jsonl").write_text("\n".join(
                json.dumps({"step": s, "val_ntp_loss": loss(s)}) for s in steps))
    runs = report.load_runs(tmp_path)
    base = report.gap_curves(runs, "cocomix", "ntp_base")
    widened = report.gap_curves(runs, "cocomix", "ntp")
    assert sorted(base) == [0, 1] and report.gap_curves(runs, "ntp", "ntp") == {}
    t = steps[-1] * per_step
    assert math.isclose(base[0][t], a + b * math.log(t), abs_tol=1e-9)
    assert math.isclose(widened[1][t] - base[1][t], -0.1, abs_tol=1e-9)
    fit = report.fit_trend(base)
    assert math.isclose(fit["b"], b, rel_tol=1e-6) and math.isclose(fit["a"], a, rel_tol=1e-6)
    assert fit["crossing"] is None  # a + b ln(2.1M) < 0: already below at the end
    late = report.fit_trend({s: {k: v + 0.1 for k, v in g.items()} for s, g in base.items()})
    assert math.isclose(late["crossing"], math.exp(-(a + 0.1) / b), rel_tol=1e-6)
    assert report.crossing(late, base) == report.fmt_tokens(late["crossing"])
    # a slope lost in the scatter between seeds names no crossing
    flat = {0: {t: 0.05 + 1e-4 * math.log(t) for t in base[0]},
            1: {t: -0.05 + 1e-4 * math.log(t) for t in base[0]}}
    flat[0][t] += 0.03
    assert report.crossing(report.fit_trend(flat), flat).startswith("—")


def test_strong_teacher_budgets_pair_the_ends_of_whole_runs(tmp_path, monkeypatch):
    """Each budget's results (``results/`` at 1, ``results/xS`` at S) give one paired gap per
    seed, ln of the perplexity ratio at the end of the run; the line through them is fitted on
    every budget, and the table has a column per budget."""
    import math

    report = _strong("report", monkeypatch)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    a, b, base = 0.9, -0.06, 2_097_152
    for scale, results in ((1, tmp_path), (0.5, tmp_path / "x0.5"), (0.25, tmp_path / "x0.25")):
        results.mkdir(exist_ok=True)
        tokens = int(scale * base)
        for seed in (0, 1):
            noise = 0.01 * (1 if seed else -1)  # the seeds straddle the line
            ppl = {"ntp_base": 150.0, "cocomix_own": 150.0 * math.exp(a + b * math.log(tokens)
                                                                       + noise)}
            for variant, value in ppl.items():
                (results / f"{variant}-s{seed}.json").write_text(json.dumps(
                    {"variant": variant, "seed": seed, "tokens": tokens, "val": {"ppl": value}}))
    (tmp_path / "xnotes").mkdir()  # not a budget
    assert list(report.budgets()) == [0.25, 0.5, 1.0]
    gaps = report.budget_gaps("cocomix_own", "ntp_base")
    assert sorted(gaps[0]) == [base // 4, base // 2, base]
    assert math.isclose(gaps[1][base], a + b * math.log(base) + 0.01, abs_tol=1e-9)
    fit = report.fit_trend(gaps, since=0)
    assert fit["points"] == 6 and math.isclose(fit["b"], b, abs_tol=1e-9)
    assert math.isclose(fit["crossing"], math.exp(-a / b), rel_tol=1e-6)
    assert report.budget_gaps("cocomix", "ntp_base") == {}
    assert report.budget_gaps("ntp_base", "ntp_base") == {}  # not a comparison
    table = report.budget_table()
    assert "gap at 0.5M (seeds) | gap at 1.0M (seeds) | gap at 2.1M (seeds)" in table
    row, = [line for line in table.splitlines() if line.startswith("| CoCoMix, own")]
    assert f"{a + b * math.log(base):+.3f} ± {0.02 / math.sqrt(2):.3f} (2)" in row
    assert report.fmt_tokens(math.exp(-a / b)) in row
    legend = report.plot_budgets(tmp_path / "budget_gaps.png")  # one panel: none vs widened NTP
    assert legend == ["CoCoMix, own small teacher", "line through all 6 runs", "its ±2 s.e. band"]
    assert (tmp_path / "budget_gaps.png").stat().st_size > 10_000

    # a replicate (another tokenizer and own teacher) is tabled beside the first set, never mixed
    assert report.replicate_table() == ""
    rep = tmp_path / "replicate" / "x0.25"
    rep.mkdir(parents=True)
    (rep.parent / "own_teacher.json").write_text(json.dumps({"teacher_val": {"ppl": 104.25}}))
    for seed, gap in ((0, 0.2), (1, 0.1), (2, 0.0)):
        for variant, value in (("ntp_base", 150.0), ("cocomix_own", 150.0 * math.exp(gap))):
            (rep / f"{variant}-s{seed}.json").write_text(json.dumps(
                {"variant": variant, "seed": seed, "tokens": base // 4, "val": {"ppl": value}}))
    assert report.budget_gaps("cocomix_own", "ntp_base") == gaps
    table = report.replicate_table()
    first, second = [line for line in table.splitlines() if line.startswith("| CoCoMix, own")]
    assert "| first | — |" in first and "| replicate | 104.2 |" in second
    assert second.endswith("| +0.100 ± 0.100 (3) | — | — |")
    assert f"{a + b * math.log(base // 4):+.3f} ± {0.02 / math.sqrt(2):.3f} (2)" in first
    pooled, = [line for line in table.splitlines() if "the sets pooled (9 runs)" in line]
    both = {**{("first", k): v for k, v in gaps.items()},
            **{("replicate", k): {base // 4: g} for k, g in enumerate((0.2, 0.1, 0.0))}}
    fit = report.fit_trend(both, since=0)
    assert f"slope {fit['b']:+.4f} ± {fit['se_b']:.4f}" in pooled
    assert set(report.set_gaps("cocomix_own", "ntp_base")) == {"first", "replicate"}
    legend = report.plot_budgets(tmp_path / "both.png")  # both sets in one panel, one line
    assert legend == ["CoCoMix, own small teacher, first set",
                      "CoCoMix, own small teacher, replicate set", "line through all 9 runs",
                      "its ±2 s.e. band"]
    assert (tmp_path / "both.png").stat().st_size > 10_000


def test_trend_crossing_range_is_where_the_confidence_band_holds_zero():
    """The budgets at which a crossing cannot be ruled out are those where the fitted line's
    ±z s.e. band (from the covariance of the least-squares coefficients, s²(XᵀX)⁻¹) contains 0,
    checked on a fine grid ahead of the data's centre."""
    import math

    import numpy as np

    spec = importlib.util.spec_from_file_location("trend", ROOT / "experiments" / "trend.py")
    trend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trend)
    rng = np.random.default_rng(0)
    budgets = [524_288, 1_048_576, 2_097_152]

    def runs(a, b, noise):
        return {seed: {t: a + b * math.log(t) + noise * rng.standard_normal() for t in budgets}
                for seed in range(5)}

    def grid_span(fit, z):
        x = np.linspace(fit["x_mean"], fit["x_mean"] + 12, 200_001)
        design = np.array([[1.0, math.log(t)] for g in gaps.values() for t in g])
        cov = fit["s2"] * np.linalg.inv(design.T @ design)
        sd = np.sqrt(cov[0, 0] + 2 * x * cov[0, 1] + x * x * cov[1, 1])
        assert np.allclose(trend.line_sd(fit, x), sd, rtol=1e-9)
        inside = np.abs(fit["a"] + fit["b"] * x) <= z * sd
        if not inside.any():
            return None
        hit = x[inside]
        return math.exp(hit[0]), (math.inf if inside[-1] else math.exp(hit[-1]))

    cases = {"steep": (0.9, -0.06, 0.01), "flat": (0.1, -0.002, 0.05), "growing": (-0.5, 0.05, 0.01)}
    for name, (a, b, noise) in cases.items():
        gaps = runs(a, b, noise)
        fit = trend.fit_trend(gaps, since=0)
        for z in (1.0, 2.0):
            span, want = trend.crossing_range(fit, z), grid_span(fit, z)
            if name == "growing":
                assert span is None and want is None
                continue
            assert math.isclose(span[0], want[0], rel_tol=1e-3)
            if name == "flat":
                assert span[1] == want[1] == math.inf
            else:
                assert math.isclose(span[1], want[1], rel_tol=1e-3)
    steep = trend.fit_trend(runs(0.9, -0.06, 0.01), since=0)
    lo, hi = trend.crossing_range(steep)
    assert lo < steep["crossing"] < hi and lo > budgets[-1]
    words = trend.band(steep)
    assert f"central line at {trend.fmt_tokens(steep['crossing'])}" in words
    assert f"to {trend.fmt_tokens(hi)} at ±2 s.e." in words
    flat = trend.fit_trend(runs(0.1, -0.002, 0.05), since=0)
    assert trend.band(flat).endswith(" on at ±2 s.e.)")
    # the same gap at every budget: a line all but flat, whose crossing lies past the float range
    level = {seed: {t: 0.1 for t in budgets} for seed in range(3)}
    fit = trend.fit_trend(level, since=0)
    assert fit["crossing"] is None and trend.crossing_range(fit) is None and trend.band(fit) == ""


def test_strong_teacher_budgets_nest_and_refuse_partial_blocks(monkeypatch):
    """A smaller budget's training blocks are among a larger one's, and a scale that does not
    give whole blocks and steps is refused with one line."""
    import pytest

    run = _strong("run", monkeypatch)
    total, block, tokens = 8_572_776, 8192, 2_097_152
    sets = {s: set(run.subset_blocks(total, int(s * tokens), block)) for s in (0.25, 0.5, 1, 2, 4)}
    assert sets[0.25] < sets[0.5] < sets[1] < sets[2] < sets[4]
    assert len(sets[2]) == 512
    for scale in (0.25, 2):
        run.check_scale(scale)
    for scale in (0.3, 0, -1, float("nan"), float("inf")):
        with pytest.raises(SystemExit, match="whole blocks"):
            run.check_scale(scale)


def _shards(data: Path, tokens: list[int]) -> None:
    import numpy as np

    data.mkdir(parents=True, exist_ok=True)
    np.asarray(tokens, dtype=np.uint16).tofile(data / "train.bin")
    np.asarray([5, 6, 7], dtype=np.uint16).tofile(data / "val.bin")
    (data / "meta.json").write_text(json.dumps({"dtype": "uint16", "tokenizer_id": "t"}))


def test_strong_teacher_refuses_to_mix_runs_from_rebuilt_inputs(tmp_path, monkeypatch):
    """A work directory rebuilt with other shards or labels cannot add runs to results made from
    the old ones: the runs would not be paired, and nothing would say so."""
    import pytest

    run = _strong("run", monkeypatch)
    from cocomix_mlx.label_store import data_identity

    work, results = tmp_path / "work", tmp_path / "results"
    common = _common()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit, match="cannot use .*a-file as a directory"):
        common.make_dirs(results, tmp_path / "a-file")  # --results naming a file
    with pytest.raises(SystemExit, match="no token shards"):  # students before the data stage
        common.check_data(results, work / "data")
    _shards(work / "data", [1, 2, 3, 4])
    common.check_data(results, work / "data")  # first runs: the shards are recorded
    first = json.loads((results / "data.json").read_text())
    common.check_data(results, work / "data")  # same shards: accepted
    _shards(work / "data", [1, 2, 3, 9])  # rebuilt, e.g. with another tokenizer
    with pytest.raises(SystemExit, match="other token shards"):
        common.check_data(results, work / "data")
    with pytest.raises(SystemExit, match="other token shards"):  # before any training
        common.train_students(results, [0], ["ntp"], None, tmp_path / "runs", work / "data", [])
    # a record that names only the tokenizer checks only the tokenizer
    (results / "data.json").write_text(json.dumps({"identity": None, "tokenizer_id": "t"}))
    common.check_data(results, work / "data")

    # results from before data.json existed: the data is taken from a label store's record
    old = tmp_path / "old"
    old.mkdir()
    meta = {part: {"identity": f"{part}-1"} for part in ("teacher", "sae")}
    meta["data"] = first
    (old / "labels-own.json").write_text(json.dumps(meta))
    _shards(work / "data", [1, 2, 3, 4])
    (work / "labels-own").mkdir()
    (work / "labels-own" / "meta.json").write_text(json.dumps(meta))
    run.check_labels(work, old)
    assert json.loads((old / "data.json").read_text())["identity"] == first["identity"]
    meta["teacher"]["identity"] = "teacher-2"  # the store was rebuilt from a retrained teacher
    (work / "labels-own" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="labels-own.json names another teacher"):
        run.check_labels(work, old)

    # rebuilding a store whose record names other inputs is refused before any labelling
    teacher, sae = tmp_path / "teacher", tmp_path / "sae"
    for path, files in ((teacher, ("config.json", "model.safetensors")),
                        (sae, ("config.json", "sae.safetensors"))):
        path.mkdir()
        for name in files:
            (path / name).write_bytes(name.encode())
    store = work / "labels-smol"
    (old / "labels-smol.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="another teacher, SAE or data"):
        run.build_store(teacher, sae, work / "data", store, {}, old)
    assert not store.exists() and not store.with_name(".labels-smol.partial").exists()
    assert data_identity(work / "data", {"tokenizer_id": "t"}) == first["identity"]


def test_position_study_interval_and_rule_follow_the_t_distribution(tmp_path, monkeypatch):
    """The paired gap's 95% interval is scipy's t-interval of the mean; the default becomes
    "consecutive" only when that interval lies below zero; the table reads the run files."""
    import numpy as np
    import pytest
    from scipy import stats

    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(
        "positions_report", ROOT / "experiments" / "positions" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    for gaps in ([0.0057, -0.0117], [0.01, -0.02, 0.004, 0.0], [-0.03, -0.02, -0.025]):
        mean, low, high = report.interval(gaps)
        ref = stats.t.interval(0.95, len(gaps) - 1, loc=np.mean(gaps), scale=stats.sem(gaps))
        assert (low, high) == pytest.approx(ref, abs=2e-4 * max(1.0, abs(mean)))
    assert report.decide([0.01, -0.02, 0.004, 0.0]) == "shared"
    assert report.decide([-0.03, -0.02, -0.025]) == "consecutive"
    assert report.decide([-0.03]).startswith("undecided")
    for variant, seed, loss in (("shared", 0, 5.0), ("consecutive", 0, 4.9), ("shared", 1, 5.1),
                                ("consecutive", 1, 5.05)):
        (tmp_path / f"{variant}-s{seed}.json").write_text(json.dumps({
            "variant": variant, "seed": seed, "val": {"loss": loss, "ppl": 2.718 ** loss},
            "tokens": 100, "params": 10, "machine": "test"}))
    text = report.table(tmp_path)
    assert "| 0 |" in text and "-0.1000" in text and "-0.0500" in text
    assert "**shared**" in text  # two seeds: [-0.1, -0.05] has a wide interval
