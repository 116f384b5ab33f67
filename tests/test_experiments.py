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
