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


def test_strong_teacher_trend_is_paired_against_each_reference(tmp_path, monkeypatch):
    """Gaps are taken seed by seed against the named reference, and the fitted line
    ``gap = a + b ln(tokens)`` and its zero crossing are those of the data."""
    import math

    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # report.py imports common
    spec = importlib.util.spec_from_file_location(
        "strong_report", ROOT / "experiments" / "strong_teacher" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
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
