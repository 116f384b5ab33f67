"""Process-level backend setup: a fast BLAS for MLX on Linux, device choice, environment report.

On Linux the pip ``mlx[cpu]`` wheel links a reference BLAS (a few GFLOP/s for fp32 matmul).
Loading an OpenBLAS with ``RTLD_GLOBAL`` *before* ``mlx`` is first imported makes MLX's
``cblas_sgemm`` calls bind to it (~40x faster, same results). This module does that on import, so
it must be imported before anything that imports ``mlx`` -- ``import cocomix_mlx`` does it first.

Where no system OpenBLAS is found, the one in the ``cmeel-openblas`` wheel (a dependency on
Linux) is loaded instead (:mod:`cocomix_mlx.wheel_blas`), so ``pip install`` alone gives the fast
BLAS where the CPU runs that build (the current one uses AVX-512; a test multiply in a child
process decides, once per machine, and a CPU without it keeps the reference BLAS with a warning).
Environment: ``COCOMIX_BLAS=off`` disables it, ``COCOMIX_BLAS=wheel`` takes the wheel's even
where a system one exists, ``COCOMIX_BLAS=/path/to/libopenblas.so`` picks a library. It is a
no-op on macOS (MLX uses Accelerate there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from dataclasses import dataclass

ENV_VAR = "COCOMIX_BLAS"
SYSTEM_BLAS_FIX = ("install the system OpenBLAS (Debian/Ubuntu: apt-get install "
                   "libopenblas0-pthread)")
SLOW_BLAS_FIX = f"pip install cmeel-openblas, or {SYSTEM_BLAS_FIX}"

_CANDIDATES = (
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


@dataclass
class BlasState:
    status: str  # "loaded", "disabled", "not-found", "too-late", "not-needed", "failed"
    library: str | None = None
    detail: str = ""


def _candidate_paths() -> list[str]:
    arch = platform.machine()
    arch = {"arm64": "aarch64", "AMD64": "x86_64"}.get(arch, arch)
    paths = [p.format(arch=arch) for p in _CANDIDATES]
    found = ctypes.util.find_library("openblas")
    if found:
        paths.append(found)
    return paths


def _setup_blas() -> BlasState:
    if sys.platform != "linux":
        return BlasState("not-needed", detail="MLX uses Accelerate/Metal on this platform")
    choice = os.environ.get(ENV_VAR, "").strip()
    if choice.lower() in ("off", "0", "no", "false", "none"):
        return BlasState("disabled", detail=f"{ENV_VAR}={choice}")
    if "mlx.core" in sys.modules:
        return BlasState(
            "too-late",
            detail="mlx was imported before cocomix_mlx; import cocomix_mlx first or set "
            "LD_PRELOAD to an OpenBLAS library",
        )
    if choice and choice.lower() != "wheel" and not os.path.exists(choice) and "/" in choice:
        return BlasState("failed", library=choice, detail=f"{ENV_VAR}: {choice} does not exist; "
                                                          f"{SLOW_BLAS_FIX}")
    if choice.lower() != "wheel":
        paths = [choice] if choice else _candidate_paths()
        for path in paths:
            if not (os.path.isabs(path) and not os.path.exists(path)):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    return BlasState("loaded", library=path, detail="system OpenBLAS"
                                     if not choice else f"{ENV_VAR}={choice}")
                except OSError as e:
                    if choice:
                        return BlasState("failed", library=path, detail=str(e))
    from . import wheel_blas

    try:
        library, gfortran = wheel_blas.load()
        return BlasState("loaded", library=library,
                         detail=f"OpenBLAS from the cmeel-openblas wheel, {gfortran}")
    except OSError as e:
        status = "failed" if choice else "not-found"
        fix = SYSTEM_BLAS_FIX if wheel_blas.find_openblas() else SLOW_BLAS_FIX
        return BlasState(status, detail=f"{e}; {fix}")


BLAS = _setup_blas()


def preloaded_blas() -> str | None:
    """Path of an OpenBLAS given through LD_PRELOAD, if any."""
    for part in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        if "blas" in os.path.basename(part):
            return part
    return None


def devices() -> list:
    """Every MLX device here: the CPU, and the GPU where Metal or CUDA is available."""
    import mlx.core as mx

    return [mx.cpu] + ([mx.gpu] if device_name() != "CPU" else [])


def device_name() -> str:
    import mlx.core as mx

    if mx.metal.is_available():
        return "Metal (GPU)"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "CUDA (GPU)"
    return "CPU"


def matmul_gflops(n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Measured fp32 ``n x n`` matmul throughput of MLX and of NumPy, in GFLOP/s."""
    import time

    import mlx.core as mx
    import numpy as np

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    mlx_time = (time.perf_counter() - start) / repeats
    an, bn = np.asarray(a), np.asarray(b)
    an @ bn
    start = time.perf_counter()
    for _ in range(repeats):
        an @ bn
    np_time = (time.perf_counter() - start) / repeats
    flops = 2.0 * n**3
    return {"mlx": flops / mlx_time / 1e9, "numpy": flops / np_time / 1e9}


def environment_report(measure: bool = True) -> dict[str, object]:
    """MLX version, device, BLAS state, memory and package versions (for ``cocomix doctor``)."""
    from importlib import metadata

    import mlx.core as mx

    versions = {}
    for pkg in ("cocomix-mlx", "mlx", "mlx-lm", "numpy", "sentencepiece", "transformers",
                "tokenizers", "huggingface-hub", "typer", "rich", "torch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total_ram = None
    report: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "device": device_name(),
        "default_device": str(mx.default_device()),
        "cpu_count": os.cpu_count(),
        "memory_gb": total_ram / 1e9 if total_ram else None,
        "blas": BLAS.status,
        "blas_library": BLAS.library or preloaded_blas(),
        "blas_detail": BLAS.detail,
        "packages": versions,
    }
    if measure:
        report["matmul_gflops"] = matmul_gflops()
    return report
