"""OpenBLAS from pip wheels alone, for MLX on Linux (no system package, no compiler).

``cmeel-openblas`` ships a ``libopenblas.so.0`` that exports the standard ``cblas_*`` symbols MLX
calls, but it needs ``libgfortran.so.5``, which a fresh machine may not have. NumPy's wheel
carries a ``libgfortran`` (and its ``libquadmath``) under ``numpy.libs``, renamed by auditwheel
(e.g. ``libgfortran-040039e1-0352e75f.so.5.0.0``, and that is also its ``SONAME``), so the
dynamic linker does not take it for ``libgfortran.so.5``. We copy it once into a cache
directory with its ``SONAME`` string rewritten in place to ``libgfortran.so.5`` (shorter, so
nothing else in the file moves), load its dependencies and it with ``RTLD_GLOBAL``, then
OpenBLAS, whose dependency is then already satisfied (a system ``libgfortran.so.5`` only where
NumPy's wheel has none, so the route is the same on every machine). Nothing here imports
``mlx`` or ``numpy``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import struct
import sys
import tempfile
from pathlib import Path

GFORTRAN = "libgfortran.so.5"


def _site_dirs() -> list[Path]:
    return [Path(p) for p in dict.fromkeys(sys.path) if p and Path(p).is_dir()]


def find_openblas() -> Path | None:
    """``libopenblas.so.0`` of an installed ``cmeel-openblas``."""
    for site in _site_dirs():
        path = site / "cmeel.prefix" / "lib" / "libopenblas.so.0"
        if path.exists():
            return path
    return None


def _bundled_libs() -> Path | None:
    """A wheel's bundled-library folder holding a ``libgfortran`` (NumPy's, or mlx-cpu's)."""
    for name in ("numpy.libs", "mlx_cpu.libs"):
        for site in _site_dirs():
            if any((site / name).glob("libgfortran*")):
                return site / name
    return None


def _dynamic(data: bytes) -> tuple[int, dict[int, list[int]]]:
    """File offset of a 64-bit little-endian ELF's dynamic string table, and its dynamic
    entries (tag → values)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise OSError("not a 64-bit little-endian ELF library")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        kind, _, offset, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data,
                                                                    phoff + i * phentsize)
        if kind == 1:  # PT_LOAD
            loads.append((vaddr, offset, filesz))
        elif kind == 2:  # PT_DYNAMIC
            dynamic = (offset, filesz)
    if dynamic is None:
        raise OSError("no dynamic section")
    entries: dict[int, list[int]] = {}
    for at in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, at)
        if tag == 0:
            break
        entries.setdefault(tag, []).append(value)
    strtab = entries[5][0]  # DT_STRTAB, a virtual address
    for vaddr, offset, size in loads:
        if vaddr <= strtab < vaddr + size:
            return strtab - vaddr + offset, entries
    raise OSError("dynamic string table outside the loaded segments")


def _string(data: bytes, at: int) -> str:
    return data[at:data.index(b"\0", at)].decode()


def renamed_gfortran(src: Path, cache: Path) -> Path:
    """A copy of ``src`` whose ``SONAME`` is ``libgfortran.so.5`` (made once, atomically)."""
    stat = src.stat()
    key = hashlib.sha256(f"{src}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache / key / GFORTRAN
    if out.exists():
        return out
    data = bytearray(src.read_bytes())
    strtab, entries = _dynamic(data)
    start = strtab + entries[14][0]  # DT_SONAME
    end = data.index(b"\0", start)
    if end - start < len(GFORTRAN):
        raise OSError(f"{src.name}'s SONAME is too short to rename")
    data[start:end] = GFORTRAN.encode() + b"\0" * (end - start - len(GFORTRAN))
    _write_atomic(out, bytes(data))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a unique temporary sibling and a rename, so a process starting
    beside this one reads the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "cocomix" / "blas"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:  # a read-only home
        return Path(tempfile.gettempdir()) / f"cocomix-blas-{os.getuid()}"


def _load_gfortran() -> str:
    """Load a ``libgfortran.so.5`` globally (a wheel's renamed copy, else the system's); returns
    how it was found. Raises ``OSError`` when there is none."""
    libs = _bundled_libs()
    if libs is not None:
        src = sorted(libs.glob("libgfortran*"))[0]
        copy = renamed_gfortran(src, _cache_dir())
        data = copy.read_bytes()
        strtab, entries = _dynamic(data)
        for needed in (_string(data, strtab + v) for v in entries.get(1, [])):  # DT_NEEDED
            if (libs / needed).exists():  # e.g. its renamed libquadmath
                ctypes.CDLL(str(libs / needed), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(copy), mode=ctypes.RTLD_GLOBAL)
        return f"libgfortran from {libs.name} ({src.name})"
    system = ctypes.util.find_library("gfortran")
    if not system:
        raise OSError("no libgfortran.so.5 in NumPy's or MLX's wheel nor on the system")
    ctypes.CDLL(system, mode=ctypes.RTLD_GLOBAL)
    return f"the system's {system}"


# Run in a child process: load the library as ``load`` does and multiply two matrices of ones.
# A build for newer instructions than this CPU has (cmeel-openblas is built for AVX-512) dies
# there with SIGILL, not in the caller.
_PROBE = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("wheel_blas", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module._load_gfortran()
blas = ctypes.CDLL(sys.argv[2], mode=ctypes.RTLD_GLOBAL)
n = 256
a, c = (ctypes.c_float * (n * n))(*([1.0] * (n * n))), (ctypes.c_float * (n * n))()
f, i = ctypes.c_float, ctypes.c_int
row_major, no_trans = i(101), i(111)
blas.cblas_sgemm(row_major, no_trans, no_trans, i(n), i(n), i(n), f(1.0), a, i(n), a, i(n), f(0.0),
                 c, i(n))
sys.exit(0 if all(x == n for x in c) else 3)
"""


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def probe(command: list[str], key: str, cache: Path | None = None) -> str | None:
    """Run ``command`` once per ``key`` and remember the answer in the cache: ``None`` when it
    exits 0, otherwise why not (e.g. the signal that killed it)."""
    import subprocess

    path = (cache or _cache_dir()) / f"probe-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if path.exists():
        verdict = path.read_text()
        return verdict or None
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        r = subprocess.run(command, env=env, capture_output=True, timeout=120)
        code = r.returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"its test could not run ({e})"  # not remembered: may work next time
    verdict = "" if code == 0 else _why(code)
    try:  # a process starting beside us must never read a half-written verdict
        _write_atomic(path, verdict.encode())
    except OSError:
        pass
    return verdict or None


def _why(code: int) -> str:
    """A failed test's exit status in words."""
    import signal

    if code >= 0:
        return f"its test multiply exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    lacks = " (it was built for CPU instructions this machine lacks)" \
        if -code == signal.SIGILL else ""
    return f"its test multiply was killed by {name}{lacks}"


def load() -> tuple[str, str]:
    """Load the wheel OpenBLAS globally; returns ``(library path, how libgfortran was found)``.
    Raises ``OSError`` when no route works, or when the library cannot run on this CPU (checked
    once per machine in a child process, so a bad build is refused instead of killing us)."""
    blas = find_openblas()
    if blas is None:
        raise OSError("cmeel-openblas is not installed (pip install cmeel-openblas)")
    stat = blas.stat()
    why = probe([sys.executable, "-c", _PROBE, __file__, str(blas)],
                f"{blas}:{stat.st_size}:{stat.st_mtime_ns}:{_cpu_signature()}")
    if why:
        raise OSError(f"the cmeel-openblas library cannot be used here: {why}")
    how = _load_gfortran()
    ctypes.CDLL(str(blas), mode=ctypes.RTLD_GLOBAL)
    return str(blas), how
