"""Writing results: atomic files (text, bytes, JSON, CSV, NPZ), one markdown table, one line per exception.

Every writer goes through a temporary file in the target directory and ``os.replace``, so a reader (or a crash)
never sees half a file; the parent directory is created. Files are world-readable (0644): results are for people.
This module imports nothing of ours, so every layer may use it.
"""
from __future__ import annotations

import csv
import io as _io
import json
import math
import numbers
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temp file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any, **dumps_kwargs: Any) -> Path:
    """``json.dumps(data, **dumps_kwargs)`` written atomically (``indent=1`` unless given)."""
    dumps_kwargs.setdefault("indent", 1)
    return atomic_write(path, json.dumps(data, **dumps_kwargs))


def csv_text(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV of ``rows`` restricted to ``columns`` (header first; None as an empty cell, other keys ignored)."""
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Path:
    """``csv_text(rows, columns)`` written atomically."""
    return atomic_write(path, csv_text(rows, columns))


def write_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez`` of ``arrays`` written atomically (the file name is kept as given, no ``.npz`` added)."""
    import numpy as np

    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write(path, buf.getvalue())


def write_figure(path: str | os.PathLike, fig: Any, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure saved atomically (format from the file suffix, PNG by default)."""
    path = Path(path)
    buf = _io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    return atomic_write(path, buf.getvalue())


def format_cell(v: Any, spec: str = "") -> str:
    """One markdown cell: None and NaN as ``-``, infinities as ``inf`` / ``-inf``, strings as they are; numbers
    through ``format(float(v), spec)`` (``"d"``: as an integer, ``"s"``: ``str``, ``""``: integers as they are and
    other numbers to 3 significant digits)."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "-"
    if spec == "s":
        return str(v)
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if spec == "d":
        return str(int(v))
    if spec:
        return format(f, spec)
    return str(v) if isinstance(v, numbers.Integral) else format(f, ".3g")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A GitHub markdown table: ``columns`` = ``[(header, key, format spec), ...]``, cells by ``format_cell``.
    Ends without a newline."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(format_cell(r.get(key), spec) for _, key, spec in columns) + " |")
    return "\n".join(lines)


def first_line(exc: BaseException, limit: int | None = None, with_type: bool = False) -> str:
    """The first non-empty line of ``str(exc)`` (the exception's type name when it has no message), prefixed by
    ``"TypeName: "`` when ``with_type``; cut to ``limit`` characters when given."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ("" if with_type else type(exc).__name__)
    if with_type:
        line = f"{type(exc).__name__}: {line}"
    return line[:limit] if limit is not None else line


def labelled_files(items: Sequence[str], what: str = "checkpoint") -> list[tuple[str, Path]]:
    """``["label=path", ...]`` command-line arguments as ``[(label, Path)]``: ValueError in one line for an item
    without ``label=``, a file that does not exist, or a label given twice."""
    out = []
    for it in items:
        label, sep, path = it.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"{what} argument {it!r} is not allowed; write label=<path>")
        if not Path(path).is_file():
            raise ValueError(f"{what} {path!r} (label {label!r}) does not exist")
        out.append((label, Path(path)))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{what} labels must differ, got {', '.join(labels)}")
    return out
