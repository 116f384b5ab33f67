"""English text that ships with every Python: the offline default corpus.

``pydoc_data.topics`` (the language reference topics behind ``help()``) plus the docstrings of the
standard library's pure-Python modules, read with ``ast`` (nothing is imported or executed).
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages",
             "__pycache__", "ensurepip", "turtledemo", "tkinter", "venv"}


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc and len(doc) >= 80:
            out.append(doc.strip())
    return out


def python_docs(max_bytes: int = 4_000_000) -> str:
    """Documents separated by blank lines, at most ``max_bytes`` of UTF-8."""
    import pydoc_data.topics

    parts = [text.strip() for _, text in sorted(pydoc_data.topics.topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if SKIP_DIRS.intersection(path.relative_to(stdlib).parts):
            continue
        parts.extend(_docstrings(path))
    text, size = [], 0
    for part in parts:
        size += len(part.encode("utf-8")) + 2
        if size > max_bytes:
            break
        text.append(part)
    return "\n\n".join(text) + "\n"


def write_python_docs(path: str | Path, max_bytes: int = 4_000_000) -> Path:
    path = Path(path)
    path.write_text(python_docs(max_bytes), encoding="utf-8")
    return path
