r"""Paired tests between any two methods of a finished run (not only against `local`).

  python -m experiments.compare --workdir=DIR --pairs=fecosr:fecosr_no_s2ce,fecosr:transfer

For each pair A:B and each market: the NDCG@10 difference A - B and a paired t-test over the
market's test users (per-user NDCG@10 averaged over the run's seeds), as results.json does for
every method against `local`. Reads DIR/results.json and the per-user test ranks that the run
wrote beside it (DIR/ranks.npz, or DIR/seed_<s>/ranks.npz for a run with several seeds; runs
of older versions kept them in their checkpoints' progress.json). Prints the table and writes
DIR/pairs.md and DIR/pairs.json (each write atomic). Nothing is run again.
"""

import sys

from absl import app, flags
from etils import epath

from fecosr_jax import errors
from fecosr_jax.report import method_pairs
from fecosr_jax.report import results as results_lib
from fecosr_jax.store.files import read_json, write_json_atomic, write_text_atomic

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's workdir (experiments.main).")
_PAIRS = flags.DEFINE_string("pairs", None, "Comma-separated METHOD_A:METHOD_B pairs.")
flags.mark_flags_as_required(["workdir", "pairs"])


def load_ranks(workdir: epath.Path, seeds: list[int] | None) -> dict:
    """{method: {market: [S, U] ranks}} from each seed's ranks.npz (beside its results.json),
    or, for runs of older versions, from its checkpoints' progress file."""
    dirs = [workdir / f"seed_{s}" for s in seeds] if seeds else [workdir]
    per_seed = []
    for d in dirs:
        if (d / "ranks.npz").exists():
            per_seed.append(results_lib.read_ranks(d / "ranks.npz"))
            continue
        progress = d / "checkpoints" / "progress.json"
        if not progress.exists():
            raise errors.BadInput(
                f"{d / 'ranks.npz'}: missing (and no {progress}): is {d} a finished run?"
            )
        per_seed.append(read_json(progress).get("ranks", {}))
    # Only methods with ranks from every seed are compared.
    return {
        m: by
        for m, by in results_lib.pool_ranks(per_seed).items()
        if all(len(r) == len(dirs) for r in by.values())
    }


def compare(workdir: str, pairs_text: str) -> str:
    """Writes WORKDIR/pairs.{json,md}; returns the Markdown table."""
    workdir = epath.Path(workdir)
    results_path = workdir / "results.json"
    if not results_path.exists():
        raise errors.BadInput(f"{results_path}: missing; is {workdir} a finished run's workdir?")
    try:
        pairs = method_pairs.parse_pairs(pairs_text)
    except ValueError as e:
        raise errors.BadInput(f"--pairs: {e}") from e
    results = read_json(results_path)
    seeds = results.get("seeds")
    try:
        table = method_pairs.pair_comparison(results, load_ranks(workdir, seeds), pairs)
    except ValueError as e:
        raise errors.BadInput(f"--pairs={pairs_text}: {e}") from e
    text = (
        f"# {results['dataset']}: paired comparisons\n\n"
        + method_pairs.pairs_markdown(table, results["markets"])
        + "\n"
        + method_pairs.pairs_seed_aware_markdown(table, results["markets"])
    )
    write_json_atomic(workdir / "pairs.json", {"seeds": seeds, "pairs": table})
    write_text_atomic(workdir / "pairs.md", text)
    return text


def main(argv):
    del argv
    try:
        print(compare(_WORKDIR.value, _PAIRS.value))
    except Exception as e:  # one line (exit 2: a flag or file to fix); --verbosity=1: traceback
        sys.exit(errors.report(e, verbosity=flags.FLAGS.verbosity, prog="experiments.compare"))


if __name__ == "__main__":
    app.run(main, flags_parser=errors.parse_flags)
