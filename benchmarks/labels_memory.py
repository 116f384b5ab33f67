"""Memory of ``labels build`` on a large token file: the build runs as a subprocess for
``--seconds``, its resident memory is sampled, then it is stopped. Prints one JSON line: RSS at
each sample (anonymous and file-backed), the anonymous peak, and how far the build got (tokens aligned or labelled so far).

    python benchmarks/labels_memory.py --teacher weights/teacher --sae weights/sae \
        --data BIG_DATA [--seconds 120] [--every 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident MB: the process's own memory, and the pages of the
    memory-mapped token and label files it has touched (page cache the kernel can reclaim)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return tuple(round(int(fields[k].split()[0]) / 1024, 1) for k in ("RssAnon", "RssFile"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--teacher", required=True)
    p.add_argument("--sae", required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--every", type=float, default=5)
    p.add_argument("build_args", nargs="*", help="more `labels build` options (after --)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    out = tmp / "store"
    cmd = [sys.executable, "-m", "cocomix_mlx.cli.app", "labels", "build", "--teacher",
           args.teacher, "--sae", args.sae, "--data", str(args.data), "--out", str(out),
           *args.build_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples, start = [], time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - start < args.seconds:
            time.sleep(args.every)
            samples.append([round(time.monotonic() - start), *rss_mb(proc.pid)])
    finally:
        proc.kill()
        proc.wait()
    partial = tmp / ".store.partial"
    progress = json.loads((partial / "progress.json").read_text()) \
        if (partial / "progress.json").exists() else {}
    aligned = (partial / "train.map.npy").exists()
    token_bytes = sum(f.stat().st_size for f in args.data.glob("*.bin"))
    print(json.dumps({"data_bytes": token_bytes, "teacher": args.teacher,
                      "peak_anon_mb": max(a for _, a, _ in samples) if samples else None,
                      "seconds_anon_file_mb": samples, "progress": progress,
                      "aligning": aligned and progress.get("train", {}).get("aligned", -1) < 0}))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
