"""The command line of experiments.tables (the package docstring says what it does)."""

from __future__ import annotations

import sys

from absl import app, flags

from experiments.tables import docs
from experiments.tables.registry import FIGURES, TABLES
from experiments.tables.results import RAW

_CHECK = flags.DEFINE_bool(
    "check", False, "Check that every table in the docs is its regeneration."
)
_WRITE = flags.DEFINE_bool("write", False, "Rewrite every table in the docs from the raw files.")
_FIGURES = flags.DEFINE_bool(
    "figures",
    False,
    "Redraw every figure in docs/results/ (registry.FIGURES) from the raw files.",
)


def main(argv):
    names = argv[1:]
    if _FIGURES.value:
        for name, draw in FIGURES.items():
            draw(RAW / name)
            print(f"drew docs/results/{name}")
        return 0
    if _CHECK.value or _WRITE.value:
        if names:
            raise app.UsageError("--check and --write take no table names")
        problems = docs.check() if _CHECK.value else [f"rewrote {n}" for n in docs.write()]
        print("\n".join(problems) or "every table equals its regeneration")
        return 1 if _CHECK.value and problems else 0
    unknown = [n for n in names if n not in TABLES]
    if not names or unknown:
        raise app.UsageError(f"name a table ({', '.join(TABLES)}); unknown: {unknown}")
    for name in names:
        sys.stdout.write(TABLES[name]())


if __name__ == "__main__":
    app.run(main)
