"""The table blocks of README.md, docs/results.md and docs/benchmarks.md: finding them,
checking each against its regeneration (registry.TABLES), and rewriting them.

In a document a table sits between `<!-- table NAME: python -m experiments.tables NAME -->`
and `<!-- end table -->`. A table with no raw files (a verdict table, or one whose output was
not kept) says so on the line above it: `<!-- markdown only: REASON -->`; the check refuses a
table that does neither."""

from __future__ import annotations

import pathlib
import re

from experiments.tables.registry import TABLES

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "results.md", ROOT / "docs" / "benchmarks.md", ROOT / "README.md")
BLOCK = re.compile(
    r"<!-- table (?P<name>[\w-]+): python -m experiments\.tables (?P=name) -->\n"
    r"(?P<body>.*?)<!-- end table -->",
    re.S,
)

ONLY = re.compile(r"^\s*<!-- markdown only: .+ -->$")
_ROW = re.compile(r"^\s*\|")
_RULE = re.compile(r"^\s*\|\s*:?-{3}")


def blocks(text: str) -> list[re.Match]:
    return list(BLOCK.finditer(text))


def _where(doc: pathlib.Path, line: int) -> str:
    return f"{doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc}:{line}"


def unlabelled(doc: pathlib.Path) -> list[str]:
    """The Markdown tables of `doc` outside a table block without a `markdown only` line
    right above them, each as 'doc:line'."""
    lines = BLOCK.sub(lambda b: "\n" * b.group(0).count("\n"), doc.read_text()).split("\n")
    out = []
    for i, line in enumerate(lines[:-1]):
        head = _ROW.match(line) and _RULE.match(lines[i + 1])
        if head and not (i and (_ROW.match(lines[i - 1]) or ONLY.match(lines[i - 1]))):
            out.append(_where(doc, i + 1))
    return out


def check() -> list[str]:
    """What differs: one line per document table that is not its regeneration, or unknown,
    and per table that neither is regenerated nor says why not."""
    problems = []
    for doc in DOCS:
        text = doc.read_text()
        problems += [
            f"{where}: a table with no raw files and no `<!-- markdown only: REASON -->` above it"
            for where in unlabelled(doc)
        ]
        for block in blocks(text):
            name = block["name"]
            line = text[: block.start()].count("\n") + 1
            where = _where(doc, line)
            if name not in TABLES:
                problems.append(
                    f"{where}: no table named {name!r} (experiments/tables/registry.py)"
                )
            elif block["body"] != TABLES[name]():
                problems.append(
                    f"{where}: table {name} differs from `python -m experiments.tables {name}`"
                )
    return problems


def write() -> list[str]:
    """Rewrites every document table from its raw files; returns the names rewritten."""
    done = []
    for doc in DOCS:
        text = doc.read_text()

        def fill(block: re.Match) -> str:
            done.append(block["name"])
            head = block.group(0)[: block.start("body") - block.start()]
            return head + TABLES[block["name"]]() + "<!-- end table -->"

        doc.write_text(BLOCK.sub(fill, text))
    return done
