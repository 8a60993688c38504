"""Per-market statistics as dicts and Markdown tables (used by the stats CLI and the runner)."""

from __future__ import annotations

from collections.abc import Sequence

from fecosr_jax.data.market import Market, catalogue_overlap

MAX_OVERLAP_TABLE = 16  # larger market counts leave the overlap table out


def market_stats(markets: Sequence[Market]) -> list[dict]:
    """[{"market", "users", "items", "interactions"}] for each market."""
    return [
        {
            "market": m.name,
            "users": m.num_users,
            "items": m.num_items,
            "interactions": m.num_interactions,
        }
        for m in markets
    ]


def format_tables(markets: Sequence[Market]) -> str:
    """Markdown tables: sizes per market, then catalogue overlap (shared item ids)."""
    lines = [
        "| market | users | items | interactions | mean length |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m in markets:
        lines.append(
            f"| {m.name} | {m.num_users:,} | {m.num_items:,} | "
            f"{m.num_interactions:,} | {m.num_interactions / m.num_users:.1f} |"
        )
    if len(markets) > 1:
        shared = catalogue_overlap(markets) if len(markets) <= MAX_OVERLAP_TABLE else None
        lines.append("")
        if shared is None:
            lines.append(
                f"(catalogue overlap table left out for {len(markets)} > "
                f"{MAX_OVERLAP_TABLE} markets)"
            )
        else:
            names = [m.name for m in markets]
            lines.append("Catalogue overlap: items of the row market also in the column market")
            lines.append("| | " + " | ".join(names) + " |")
            lines.append("| --- |" + " ---: |" * len(names))
            for a, name in enumerate(names):
                cells = [
                    f"{shared[a, b]:,} ({shared[a, b] / shared[a, a]:.0%})"
                    for b in range(len(names))
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
