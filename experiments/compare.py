r"""Paired tests between any two methods of a finished run (not only against `local`).

  python -m experiments.compare --workdir=DIR --pairs=fecosr:fecosr_no_s2ce,fecosr:transfer

For each pair A:B and each market: the NDCG@10 difference A - B and a paired t-test over the
market's test users (per-user NDCG@10 averaged over the run's seeds), as results.json does for
every method against `local`. Reads DIR/results.json and the per-user test ranks that the run
kept in its checkpoints (DIR/checkpoints/progress.json, or DIR/seed_<s>/checkpoints/... for a
run with several seeds; a run with --config.checkpoint.enabled=False keeps none). Prints the
table and writes DIR/pairs.md and DIR/pairs.json (each write atomic). Nothing is run again.
"""

import json
import sys

from absl import app, flags
from etils import epath

from fecosr_jax import reporting
from fecosr_jax.files import write_text_atomic

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's workdir (experiments.main).")
_PAIRS = flags.DEFINE_string("pairs", None, "Comma-separated METHOD_A:METHOD_B pairs.")
flags.mark_flags_as_required(["workdir", "pairs"])


def load_ranks(workdir: epath.Path, seeds: list[int] | None) -> dict:
    """{method: {market: [S, U] ranks}} from the progress file of each seed's checkpoints."""
    dirs = [workdir / f"seed_{s}" for s in seeds] if seeds else [workdir]
    per_seed = []
    for d in dirs:
        progress = d / "checkpoints" / "progress.json"
        if not progress.exists():
            raise ValueError(
                f"{progress}: missing. The per-user ranks are kept with the checkpoints; a run "
                "with --config.checkpoint.enabled=False has none"
            )
        per_seed.append(json.loads(progress.read_text()).get("ranks", {}))
    # Only methods with ranks from every seed are compared.
    return {
        m: by
        for m, by in reporting.pool_ranks(per_seed).items()
        if all(len(r) == len(dirs) for r in by.values())
    }


def compare(workdir: str, pairs_text: str) -> str:
    """Writes WORKDIR/pairs.{json,md}; returns the Markdown table."""
    workdir = epath.Path(workdir)
    results_path = workdir / "results.json"
    if not results_path.exists():
        raise ValueError(f"{results_path}: missing; is {workdir} a finished run's workdir?")
    try:
        pairs = reporting.parse_pairs(pairs_text)
    except ValueError as e:
        raise ValueError(f"--pairs: {e}") from e
    results = json.loads(results_path.read_text())
    seeds = results.get("seeds")
    try:
        table = reporting.pair_comparison(results, load_ranks(workdir, seeds), pairs)
    except ValueError as e:
        raise ValueError(f"--pairs={pairs_text}: {e}") from e
    text = f"# {results['dataset']}: paired comparisons\n\n" + reporting.pairs_markdown(
        table, results["markets"], seeds
    )
    reporting.write_json_atomic(workdir / "pairs.json", {"seeds": seeds, "pairs": table})
    write_text_atomic(workdir / "pairs.md", text)
    return text


def main(argv):
    del argv
    try:
        print(compare(_WORKDIR.value, _PAIRS.value))
    except ValueError as e:
        sys.exit(f"experiments.compare: {e}")


if __name__ == "__main__":
    app.run(main)
