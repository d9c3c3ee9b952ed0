"""Markdown tables, the docs/benchmarks.md section writer and a rank correlation, shared by every benchmark."""
from __future__ import annotations

import json
import pathlib

import numpy as np


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """Lines of a Markdown table."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_section(marker: str, text: str, path: str = "docs/benchmarks.md"):
    p = pathlib.Path(path)
    doc = p.read_text() if p.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    p.write_text(doc)


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def dump_rows(path: str, rows) -> None:
    """A benchmark's raw rows as JSON, for the plotting examples (which never rerun the benchmark)."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rows, indent=1, default=float) + "\n")
