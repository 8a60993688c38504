"""The cells and rows of the documents' Markdown tables, written as the documents write them."""

from __future__ import annotations


def row(cells) -> str:
    """A Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def signed(x: float, digits: int = 4) -> str:
    """+0.0029 / −0.0017 (a minus sign, as the documents write it)."""
    return f"{x:+.{digits}f}".replace("-", "−")


def plain(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}".replace("-", "−")


def mean_std(stat, sign: bool = False) -> str:
    """[mean, std] as `mean ± std`."""
    return f"{(signed if sign else plain)(stat[0])} ± {stat[1]:.4f}"
