r"""Where the main job's time goes, from a finished run's own files: its metrics.jsonl (the
seconds at each logged round and epoch) and training.json (the seconds per phase), with the
wall time of the command that ran it, written as one JSON that docs/benchmarks.md's table is
regenerated from (experiments.tables bench_main_job).

  d=$(mktemp -d) && git clone . $d/fresh && cd $d/fresh && /usr/bin/time -f %e -o $d/wall \
      bash launch/run.sh
  python -m experiments.bench.main_job --workdir=$d/fresh/workdir/default \
      --wall_s=$(cat $d/wall) --commit=$(git -C $d/fresh rev-parse --short HEAD) \
      --json=docs/bench/main_job_DATE.json

The steps are metrics_log.steps; a step's "before" is the time from the previous step's last
line to its first (compiling, restoring, evaluating the step before, the first round or epoch
itself), its "span" the rest.
"""

from __future__ import annotations

from absl import app, flags

from experiments.bench import common
from experiments.tables import bench as bench_tables
from fecosr_jax.store import files, metrics_log
from fecosr_jax.store.files import write_json_atomic

_WORKDIR = flags.DEFINE_string("workdir", None, "a finished run's workdir", required=True)
_WALL = flags.DEFINE_float("wall_s", None, "the command's wall seconds, installation included")
_COMMIT = flags.DEFINE_string("commit", "", "the commit the run was made at")
_JSON = flags.DEFINE_string("json", None, "write the record here")


def record(workdir: str, wall_s: float | None, commit: str) -> dict:
    """The JSON this script writes (module docstring)."""
    training = files.read_json(f"{workdir}/{metrics_log.TRAINING}")
    return {
        "commit": commit,
        "wall_s": wall_s,
        "machine": common.machine(),
        "time": training["time"],
        "steps": metrics_log.steps(metrics_log.read_lines(workdir)),
    }


def main(argv):
    del argv
    result = record(_WORKDIR.value, _WALL.value, _COMMIT.value)
    print(bench_tables.main_job_table(result))
    if _JSON.value:
        write_json_atomic(_JSON.value, result)


if __name__ == "__main__":
    app.run(main)
