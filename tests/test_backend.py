"""The BLAS MLX binds to on Linux: the pip-wheel OpenBLAS route, and the slow-BLAS warning."""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from cocomix_mlx import wheel_blas

linux_wheel = pytest.mark.skipif(
    sys.platform != "linux" or wheel_blas.find_openblas() is None,
    reason="no cmeel-openblas wheel on this platform")

PROBE = """
import cocomix_mlx, json
import numpy as np
import mlx.core as mx
from cocomix_mlx.backend import environment_report
report = environment_report(measure=True)
rng = np.random.default_rng(0)
a = rng.standard_normal((300, 700)).astype(np.float32)
b = rng.standard_normal((700, 500)).astype(np.float32)
exact = a.astype(np.float64) @ b.astype(np.float64)
err = np.abs(np.array(mx.array(a) @ mx.array(b)) - exact).max() / np.abs(exact).max()
maps = sorted({l.split()[-1] for l in open("/proc/self/maps") if "gfortran" in l or "openblas" in l})
print(json.dumps({"blas": report["blas"], "library": report["blas_library"],
                  "detail": report["blas_detail"], "gflops": report["matmul_gflops"],
                  "error": float(err), "maps": maps}))
"""


def probe(blas: str, cache) -> dict:
    env = {**os.environ, "COCOMIX_BLAS": blas, "XDG_CACHE_HOME": str(cache)}
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())


@linux_wheel
def test_wheel_openblas_is_bound_and_matmuls_equal_numpys(tmp_path):
    wheel, reference = probe("wheel", tmp_path), probe("off", tmp_path)  # neither process dies
    if wheel["blas"] == "failed":  # a build this CPU cannot run is refused, never loaded
        assert "cannot be used here" in wheel["detail"] and "SIGILL" in wheel["detail"]
        assert "apt-get install" in wheel["detail"] and "pip install" not in wheel["detail"]
        assert not any("openblas.so" in m for m in wheel["maps"]) and wheel["error"] < 1e-5
        assert "avx512f" not in cpu_flags()  # the wheel's OpenBLAS is built for AVX-512
        return
    assert wheel["blas"] == "loaded" and "cmeel" in wheel["library"]
    assert any(m.endswith("cmeel.prefix/lib/libopenblas.so.0") for m in wheel["maps"])
    # libgfortran comes from a wheel (renamed copy in the cache), never from the system
    assert any(m.startswith(str(tmp_path)) and m.endswith("libgfortran.so.5")
               for m in wheel["maps"])
    assert not any(m.startswith(("/usr/lib", "/lib")) for m in wheel["maps"])
    assert reference["blas"] == "disabled" and not any("openblas.so" in m
                                                         for m in reference["maps"])
    for r in (wheel, reference):  # fp32 rounding of a 700-term dot product
        assert r["error"] < 1e-5


def soname(path) -> str:
    data = open(path, "rb").read()
    readelf = shutil.which("readelf")
    if readelf:  # an independent reading where binutils is installed
        out = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True).stdout
        return out.split("Library soname: [")[1].split("]")[0]
    strtab, entries = wheel_blas._dynamic(data)
    return wheel_blas._string(data, strtab + entries[14][0])


@linux_wheel
def test_renamed_copy_changes_only_the_soname(tmp_path):
    libs = wheel_blas._bundled_libs()
    if libs is None:
        pytest.skip("no wheel-bundled libgfortran")
    src = sorted(libs.glob("libgfortran*"))[0]
    before = src.read_bytes()
    copy = wheel_blas.renamed_gfortran(src, tmp_path)
    assert soname(copy) == "libgfortran.so.5" and soname(src) == src.name
    after = copy.read_bytes()
    assert len(after) == len(before) and src.read_bytes() == before
    at = before.index(src.name.encode() + b"\0")  # the SONAME string, rewritten in place
    assert after[at:at + 17] == b"libgfortran.so.5\0"
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert at <= changed[0] and changed[-1] < at + len(src.name)
    assert wheel_blas.renamed_gfortran(src, tmp_path) == copy  # made once
    with pytest.raises(OSError):
        wheel_blas._dynamic(b"\x7fELF" + struct.pack("<BB", 1, 1) + bytes(64))


def test_long_commands_warn_once_about_a_slow_blas(tmp_path):
    env = {**os.environ, "COCOMIX_BLAS": str(tmp_path / "missing" / "libopenblas.so")}
    r = subprocess.run([sys.executable, "-m", "cocomix_mlx.cli.app", "labels", "build",
                        "--teacher", str(tmp_path / "t"), "--sae", str(tmp_path / "s"), "--data",
                        str(tmp_path / "d"), "--out", str(tmp_path / "o")],
                       env=env, capture_output=True, text=True, timeout=300)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert lines[0].startswith("warning:") and "pip install cmeel-openblas" in lines[0]
    assert lines[1].startswith("error:")


def test_blas_probe_catches_a_crashing_child_and_remembers_it(tmp_path):
    """The verdict on a library comes from a child process (a SIGILL there, not here), once per
    key: the cached answer is reused without running the child again."""
    sigill = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    why = wheel_blas.probe(sigill, "lib-a", tmp_path)
    assert "SIGILL" in why and "instructions this machine lacks" in why
    ok = [sys.executable, "-c", "pass"]
    assert wheel_blas.probe(ok, "lib-a", tmp_path) == why  # remembered for this key
    assert wheel_blas.probe(ok, "lib-b", tmp_path) is None
    marker = tmp_path / "ran"
    again = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    assert wheel_blas.probe(again, "lib-b", tmp_path) is None and not marker.exists()
    assert "status 3" in wheel_blas.probe([sys.executable, "-c", "raise SystemExit(3)"], "lib-c",
                                          tmp_path)
    assert all(p.name.startswith("probe-") for p in tmp_path.iterdir())  # no temporary left
