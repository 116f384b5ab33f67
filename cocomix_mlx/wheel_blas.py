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
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    return out


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "cocomix" / "blas"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:  # a read-only home
        return Path(tempfile.gettempdir()) / f"cocomix-blas-{os.getuid()}"


def load() -> tuple[str, str]:
    """Load the wheel OpenBLAS globally; returns ``(library path, how libgfortran was found)``.
    Raises ``OSError`` when no route works."""
    blas = find_openblas()
    if blas is None:
        raise OSError("cmeel-openblas is not installed (pip install cmeel-openblas)")
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
        how = f"libgfortran from {libs.name} ({src.name})"
    else:
        system = ctypes.util.find_library("gfortran")
        if not system:
            raise OSError("no libgfortran.so.5 in NumPy's or MLX's wheel nor on the system")
        ctypes.CDLL(system, mode=ctypes.RTLD_GLOBAL)
        how = f"the system's {system}"
    ctypes.CDLL(str(blas), mode=ctypes.RTLD_GLOBAL)
    return str(blas), how
