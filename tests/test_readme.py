"""Every README code block marked ``<!-- runnable -->`` runs as written (on Moby-Dick, with the
shipped ``weights/`` reachable from the working directory as from the repository root)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import english_text

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def runnable_blocks():
    return re.findall(r"<!-- runnable -->\s*```bash\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_runnable_blocks():
    assert runnable_blocks()


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_readme_block_runs(index, tmp_path):
    (tmp_path / "my_text.txt").write_text(english_text(300_000))
    (tmp_path / "weights").symlink_to(ROOT / "weights")
    bindir = Path(sys.executable).parent
    script = "set -euo pipefail\n" + runnable_blocks()[index]
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
