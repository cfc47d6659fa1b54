"""The benchmarks' printed tables: columns padded to their widest cell, two spaces apart."""

from __future__ import annotations


def table(rows: list[list[str]]) -> str:
    """``rows`` (the first is the header) as aligned text, no trailing spaces."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
