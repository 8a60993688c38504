r"""Sweeps over the number of markets (and heterogeneity, overlap, alpha, tau_s, participation,
the privacy budget epsilon, seeds): one run per grid point, then one table and one plot.

  python launch/sweep.py --markets=1,2,4,8 --config=experiments/configs/test.py --workdir=DIR
  python launch/sweep.py --markets=8 --heterogeneity=0,0.5,1 --seeds=0,1,2 \
      --config=experiments/configs/synthetic_sweep.py --workdir=DIR \
      --config.methods=fedavg_ce,fecosr
  python launch/sweep.py ... --print_only     # the commands, one per line (for a cluster)
  python launch/sweep.py ... --collect_only   # the table and plot from finished runs

Each grid point runs in DIR/runs/<name> (e.g. M8_het0.5_seed1); arguments of the form
--config.FIELD=VALUE go to every run. Grid points that differ only in per-run values (--seeds,
--alpha, --temperature, a finite --epsilon: fecosr_jax.runs.groups) form a group: one process of
experiments.main trains them together on the run axis of the same compiled programs
(--run=NAME:..., one per point), --runs_per_process points at a time (0 = the whole group,
1 = a process per point).
The other axes change the data or the program: a process each. Processes run one after
another; a process's output goes to DIR/logs/<process>.log, linked from each of its runs as
runs/<name>/sweep.log. A run that already finished only reports (experiments.main resumes
from its workdir), so re-running the sweep after an interruption continues where it stopped.
SIGTERM stops the sweep: it is passed on to the process running, which saves its step and
exits 75; the sweep then starts nothing more, writes no table, and exits 75 (re-run the same
command to resume). Ctrl-C does the same (the terminal sends it to the process as well), and
a process that exits 75 on its own (stopped by SIGTERM) stops the sweep the same way.
Every point's config and each process's data are checked before anything is written (a bad
one: one line naming the run, exit 2). A failed process is reported and the others go on; the
sweep then exits 1. Flags are absl
flags, as for experiments/main.py (--helpfull lists them; the config file and its
--config.FIELD overrides are checked before anything runs); a flag that does not parse, or
an axis or --compare value the sweep cannot use, exits 2 with one line, before anything is
written.

DIR then holds sweep.json (one row per run, from the run's results.json and training.json:
the grid values, per method the mean test NDCG@10 / HR@10, the validation NDCG@10 and the
markets better / worse than local for that run's one trained model, the time per federated
round and the mean client-update cosine; per grid point the mean ± std over seeds,
fecosr_jax.report.results.mean_std, and the seed-aware tests against local over its seeds),
sweep.md (the grid points' table, and their markers against local) and
sweep.png (against the first swept axis, error bars = std over seeds: NDCG@10 per method,
seconds per round, the --compare gaps, the client-update cosines).

  python launch/sweep.py --heterogeneity=0,0.5,1 --overlap=0,1 --seeds=0,1,2 \
      --config=experiments/configs/synthetic_sweep.py --workdir=DIR \
      --config.methods=local,fecosr,fecosr_no_s2ce --compare=fecosr:fecosr_no_s2ce

--newcomers is leave-one-market-out: each value is a market held out of pretraining (a
newcomer: it fine-tunes from the model the others pretrained; config.data.newcomers), and
`none` is the whole federation, so each market is compared as a newcomer and as a member,
on the same splits and seeds. A held-out point fine-tunes its newcomer alone
(config.data.finetune_markets), as it would train beside the others, so the sweep
costs one whole run plus one pretraining and one market's fine-tuning per held-out market:

  python launch/sweep.py --newcomers=none,m0000,m0001,m0002 --seeds=0,1,2,3,4 \
      --config=experiments/configs/test.py --workdir=DIR --config.methods=local,fecosr

--epsilon sweeps differential privacy (docs/running.md "Differential privacy"): a finite value turns
federated.dp on with that target_epsilon, `inf` turns it off (the same run without noise or
clipping), so the privacy-utility curve is one command; `local` trains nothing that leaves
its market, so it is the line to beat. The finite budgets train together (each run's noise
multipliers are values of one program, and `local`, the same for every budget, trains once
per seed), inf in a second process:

  python launch/sweep.py --epsilon=1,2,4,8,inf --seeds=0,1,2 \
      --config=experiments/configs/ml100k_regions.py --workdir=DIR \
      --config.methods=local,fecosr --compare=fecosr:local \
      --config.data.catalogue=published --config.federated.weighting=uniform

(A private run sends nothing without noise that is not declared public: the published
catalogue and uniform weights, or config.federated.dp.public; docs/running.md.) The plain
round at inf differs from a private one in more than the noise: it draws windows, not
users, and weighs targets, not users, and nothing is clipped. --epsilon_inf=noiseless runs
inf as DP's own mechanism with sigma 0 instead (same sampling, clipping and weighting; the
finite budgets' program and process), so that the curve's drop from inf is the noise's:

  python launch/sweep.py --epsilon=1,2,4,8,inf --epsilon_inf=noiseless --seeds=0,1,2,3,4 ...
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
import shlex
import signal
import subprocess
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fecosr_jax import errors, preemption
from fecosr_jax.report import method_pairs, plots, sweep_results
from fecosr_jax.report import newcomers as newcomers_lib
from fecosr_jax.store.files import write_text_atomic

# Sweep axis: (flag, config field, short name in run names, type).
AXES = (
    ("markets", "synthetic.num_markets", "M", int),
    ("heterogeneity", "synthetic.heterogeneity", "het", float),
    ("overlap", "synthetic.overlap", "ovl", float),
    ("alpha", "federated.alpha", "alpha", float),
    ("temperature", "federated.temperature", "tau", float),
    ("clients_per_round", "federated.clients_per_round", "C", int),
    ("epsilon", "federated.dp.target_epsilon", "eps", float),  # inf: DP off (axis_overrides)
    ("newcomers", "data.newcomers", "new", str),  # none: every market pretrains
    ("seeds", "seed", "seed", int),
)
SYNTHETIC_AXES = ("markets", "heterogeneity", "overlap")
VALUE_AXES = ("alpha", "temperature", "seeds")  # per-run values: points share a process
# A noiseless epsilon inf (--epsilon_inf=noiseless): DP's mechanism with sigma 0, per run.
NOISELESS = {"federated.dp.target_epsilon": 0.0, "federated.dp.noise_multiplier": 0.0}


def is_value(flag: str, value, noiseless: bool = False) -> bool:
    """Whether a point's value of `flag` is a per-run value (fecosr_jax.runs.groups.VALUE_FIELDS),
    so that points differing in it share a process. A finite epsilon is (each run's noise
    multipliers are data); inf turns DP off, another program, unless `noiseless` (the DP
    program with sigma 0: a per-run value too)."""
    return flag in VALUE_AXES or (flag == "epsilon" and (noiseless or not math.isinf(value)))


def program_part(point: dict, noiseless: bool = False) -> dict:
    """A point's axes that decide its program: all but the per-run values; a finite epsilon
    (and a noiseless inf) counts as DP on ("dp")."""
    return {
        f: "dp" if f == "epsilon" and is_value(f, v, noiseless) else v
        for f, v in point.items()
        if f == "epsilon" or not is_value(f, v, noiseless)
    }


def define_flags():
    """The sweep's flags (defined when run as a program: the tests import this module beside
    experiments' own flags)."""
    config_flags.DEFINE_config_file("config", None, "config file (path[:arg]), as for main")
    flags.DEFINE_string("workdir", None, "the sweep's folder (runs/ inside)")
    flags.mark_flags_as_required(["config", "workdir"])
    for flag, field, _, kind in AXES:
        flags.DEFINE_list(flag, [], f"comma-separated {kind.__name__} values of config.{field}")
    flags.DEFINE_list(
        "compare",
        [],
        "method pairs A:B (comma-separated): the table and plot add the NDCG@10 gap A - B, "
        "per seed, then mean ± std (e.g. fecosr:fecosr_no_s2ce for S²CE against CE)",
    )
    flags.DEFINE_integer(
        "runs_per_process",
        0,
        "grid points that differ only in --seeds/--alpha/--temperature/a finite --epsilon "
        "train together in one process, this many at a time (0 = all of them; 1 = one "
        "process per point)",
        lower_bound=0,
    )
    flags.DEFINE_enum(
        "epsilon_inf",
        "off",
        ["off", "noiseless"],
        "what --epsilon=inf runs: off = DP off (the plain round: batches of windows drawn "
        "uniformly, each target weighing the same); noiseless = DP's mechanism with sigma 0 "
        "(Poisson sampling of users, each user's gradient clipped to C, over E), so that a "
        "curve's drop from inf is the noise's alone",
    )
    flags.DEFINE_bool("print_only", False, "print the commands only")
    flags.DEFINE_bool("collect_only", False, "only build the table and plot from DIR/runs")


def grid(values: dict[str, list[str]]) -> list[dict]:
    """Every combination of the swept values ({axis flag: its values as given}): [{flag:
    value}], in the order of AXES."""
    axes = []
    for flag, _, _, kind in AXES:
        given = [v for v in values.get(flag, []) if v.strip()]
        if not given:
            if values.get(flag):  # --alpha=, : given, but no value
                raise BadFlag(f"--{flag}={','.join(values[flag])}: no values")
            continue
        try:
            axes.append([(flag, kind(v)) for v in given])
        except ValueError as e:
            raise BadFlag(
                f"--{flag}={','.join(given)}: expected comma-separated {kind.__name__}s"
            ) from e
        if flag == "epsilon" and not all(v > 0 for _, v in axes[-1]):
            raise BadFlag(f"--epsilon={','.join(given)}: expected values > 0 (inf: DP off)")
    return [dict(point) for point in itertools.product(*axes)]


class BadFlag(ValueError):
    """A flag's value the sweep cannot use (exit 2, nothing written)."""


def run_name(point: dict) -> str:
    short = {flag: name for flag, _, name, _ in AXES}
    return "_".join(f"{short[f]}{v}" for f, v in point.items()) or "run"


def processes(
    points: list[dict], runs_per_process: int, noiseless: bool = False
) -> list[list[dict]]:
    """The grid points in processes: points with an equal `program_part` together (in grid
    order), at most `runs_per_process` per process (0 = no limit)."""
    groups: dict[tuple, list[dict]] = {}
    for point in points:
        groups.setdefault(tuple(program_part(point, noiseless).items()), []).append(point)
    size = runs_per_process or len(points) or 1
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def process_name(members: list[dict], part: int, noiseless: bool = False) -> str:
    """A process's name (its log's): the run's name when alone, else the axes its points
    share, with the index of the process."""
    if len(members) == 1:
        return run_name(members[0])
    shared = program_part(members[0], noiseless)
    return f"{run_name(shared) if shared else 'group'}_p{part}"


def axis_overrides(flag: str, value, noiseless: bool = False) -> list[str]:
    """The --config flags that give a run one axis value. Epsilon also switches DP: on with
    that target ("dp": on, the target a per-run value), or off for inf (`noiseless`: on, at
    sigma 0, NOISELESS). A held-out market (newcomers) is also the only market that
    fine-tunes: the comparison reads only its results, and it trains as beside the others
    (config.data.finetune_markets)."""
    field = {f: field for f, field, _, _ in AXES}[flag]
    if flag == "newcomers":  # a held-out market fine-tunes alone: only its results are read
        value = "" if value == "none" else value
        return [f"--config.{field}={value}", f"--config.data.finetune_markets={value}"]
    if flag == "epsilon":
        if value == "dp" or (math.isinf(value) and not noiseless):
            return [f"--config.federated.dp.enabled={value == 'dp'}"]
        targets = NOISELESS if math.isinf(value) else {field: value}
        return ["--config.federated.dp.enabled=True"] + [
            f"--config.{k}={v}" for k, v in targets.items()
        ]
    return [f"--config.{field}={value}"]


def point_config(config, point: dict, noiseless: bool = False):
    """The config one grid point runs with: `config` (the file and its --config overrides)
    with the point's axis values, as its --config flags (axis_overrides) set them."""
    out = config.copy_and_resolve_references()
    kinds = {flag: kind for flag, _, _, kind in AXES}
    for flag, value in point.items():
        for override in axis_overrides(flag, value, noiseless):
            field, _, text = override.removeprefix("--config.").partition("=")
            typed = text == "True" if text in ("True", "False") else kinds[flag](text)
            out.update_from_flattened_dict({field: typed})
    return out


def check_points(config, batches: list[list[dict]], noiseless: bool = False) -> None:
    """Every point's config and the data of each process, checked before the sweep writes
    anything (fecosr_jax.runs.inputs.check_inputs; the points of one process load the
    same data). A bad value or data file raises BadInput naming it."""
    from fecosr_jax.runs import inputs  # imports JAX: only when the sweep runs

    for members in batches:
        configs = [point_config(config, point, noiseless) for point in members]
        try:
            inputs.check_inputs(configs)
        except errors.BadInput as e:
            raise errors.BadInput(f"run {run_name(members[0])}: {e}") from e


def command(
    config: str,
    root: pathlib.Path,
    members: list[dict],
    overrides: list[str],
    python="python",
    noiseless: bool = False,
) -> list[str]:
    """experiments.main for the points of one process: a single point in ROOT/runs/<name>;
    several as runs of one group (--run=NAME:FIELD=VALUE,..., each in ROOT/runs/NAME)."""
    fields = {flag: field for flag, field, _, _ in AXES}
    run_field = {**fields, "seeds": "seed"}  # the name of a value in --run
    alone = len(members) == 1
    shared = members[0] if alone else program_part(members[0], noiseless)
    workdir = root / "runs" / run_name(members[0]) if alone else root / "runs"
    out = [
        python,
        "-m",
        "experiments.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *(flag for f, v in shared.items() for flag in axis_overrides(f, v, noiseless)),
        *overrides,
    ]
    if not alone:
        for point in members:
            values = [
                f"{k}={x}"
                for f, v in point.items()
                if is_value(f, v, noiseless)
                for k, x in (
                    NOISELESS.items() if f == "epsilon" and math.isinf(v) else [(run_field[f], v)]
                )
            ]
            out.append(f"--run={run_name(point)}:{','.join(values)}")
    return out


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return errors.EXIT_BAD_INPUT  # nothing was written


def run_process(cmd: list[str], log) -> tuple[int, bool]:
    """Runs one process of the sweep to its end, its output to the file `log`: (its exit
    code, whether the sweep was asked to stop meanwhile). A SIGTERM to the sweep goes on to
    the process (experiments.main saves its step and exits 75), so that stopping the sweep
    stops the run it is in instead of leaving it running without its sweep. Ctrl-C (SIGINT)
    reaches the process from the terminal itself and is not passed on (twice would stop it
    at once): the sweep waits for it and stops; Ctrl-C again interrupts the sweep at once."""
    child, sigterm = None, []

    def pass_on():
        sigterm.append(True)
        if child is not None:
            child.send_signal(signal.SIGTERM)

    with preemption.Handler(on_sigterm=pass_on, ctrl_c_note=None):  # the process says it
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if sigterm:  # arrived while it was being started
            child.send_signal(signal.SIGTERM)
        return child.wait(), preemption.requested()


def main(argv: list[str]) -> int:
    try:
        return run_sweep(argv)
    except KeyboardInterrupt:  # Ctrl-C while checking or collecting, or twice
        print(
            "interrupted (Ctrl-C): every run's saved steps stay. Re-run the same command to "
            f"resume (exit {errors.EXIT_INTERRUPTED}).",
            flush=True,
        )
        return errors.EXIT_INTERRUPTED


def run_sweep(argv: list[str]) -> int:
    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # as experiments.main: JAX logs at INFO
    if len(argv) > 1:
        return _error(
            f"unexpected arguments {argv[1:]}: only --config.FIELD=VALUE goes to the runs"
        )
    try:
        points = grid({flag: FLAGS[flag].value for flag, *_ in AXES})
        pairs = method_pairs.parse_pairs(",".join(FLAGS.compare)) if FLAGS.compare else []
    except BadFlag as e:
        return _error(str(e))
    except ValueError as e:
        return _error(f"--compare: {e}")
    axes = [flag for flag, *_ in AXES if FLAGS[flag].value]
    config, spec = FLAGS.config, FLAGS["config"].config_filename
    given = config_flags.get_override_values(FLAGS["config"])
    overrides = [f"--config.{field}={value}" for field, value in given.items()]
    noiseless = FLAGS.epsilon_inf == "noiseless"
    if noiseless and not any(math.isinf(p.get("epsilon", 0)) for p in points):
        return _error("--epsilon_inf=noiseless: --epsilon has no inf to run without noise")
    set_here = ["federated.dp.enabled", "federated.dp.target_epsilon"]
    set_here += ["federated.dp.noise_multiplier"] if noiseless else []
    clash = [f for f in set_here if f in given]
    if "epsilon" in axes and clash:
        return _error(f"--epsilon sets config.{clash[0]} for each run: drop --config.{clash[0]}")
    synthetic_axes = [a for a in axes if a in SYNTHETIC_AXES]
    if synthetic_axes and config.data.format != "synthetic":
        return _error(
            f"--{synthetic_axes[0]} sets config.synthetic.*, but {spec} loads "
            f"data.format={config.data.format!r}: sweep it over a synthetic config"
        )
    root = pathlib.Path(FLAGS.workdir).absolute()
    runs = [(root / "runs" / run_name(p), p) for p in points]
    batches = processes(points, FLAGS.runs_per_process, noiseless)
    if FLAGS.print_only:
        for members in batches:
            print(shlex.join(command(spec, root, members, overrides, noiseless=noiseless)))
        return 0
    if FLAGS.collect_only and not any((d / "results.json").exists() for d, _ in runs):
        return _error(f"--collect_only: no finished run of this grid under {root / 'runs'}")
    if not FLAGS.collect_only:
        try:
            check_points(config, batches, noiseless)
        except errors.BadInput as e:
            return errors.report(e)
    root.joinpath("runs").mkdir(parents=True, exist_ok=True)
    failed = []
    if not FLAGS.collect_only:
        root.joinpath("logs").mkdir(exist_ok=True)
        for i, members in enumerate(batches, 1):
            cmd = command(spec, root, members, overrides, sys.executable, noiseless)
            log_path = root / "logs" / f"{process_name(members, i, noiseless)}.log"
            print(f"[{i}/{len(batches)}] {shlex.join(cmd[1:])}", flush=True)
            for point in members:
                run_dir = root / "runs" / run_name(point)
                run_dir.mkdir(parents=True, exist_ok=True)
                link = run_dir / "sweep.log"
                if link.is_symlink() or not link.exists():
                    link.unlink(missing_ok=True)
                    link.symlink_to(os.path.relpath(log_path, run_dir))
            with open(log_path, "a") as log:
                rc, stopped = run_process(cmd, log)
            if stopped or rc == errors.EXIT_PREEMPTED:
                how = "its step saved" if rc == errors.EXIT_PREEMPTED else f"it ended, exit {rc}"
                print(
                    f"  stopped by SIGTERM or Ctrl-C ({how}): nothing more runs. Re-run the "
                    f"same command to resume. Its output: {log_path}",
                    flush=True,
                )
                return errors.EXIT_PREEMPTED
            if rc != 0:
                failed.append(log_path.name)
                print(f"  failed (exit {rc}); its output: {log_path}", flush=True)
    try:
        rows = [sweep_results.collect(run_dir, point) for run_dir, point in runs]
        ranks = {d.name: sweep_results.read_ranks(d) for d, _ in runs}
    except errors.BadInput as e:  # a run's file cut or broken: one line naming it
        return errors.report(e)
    summary = sweep_results.summarise(rows, axes, pairs, ranks)
    lomo = newcomers_lib.compare(rows, axes, ranks)
    record = {"rows": rows, "summary": summary, **({"newcomers": lomo} if lomo else {})}
    write_text_atomic(root / "sweep.json", json.dumps(record, indent=1))
    table = sweep_results.markdown(summary, rows, axes, spec, lomo)
    write_text_atomic(root / "sweep.md", table)
    plotted = plots.sweep(summary, axes, root / "sweep.png")
    print("\n" + table)
    written = ["sweep.json", "sweep.md", *(["sweep.png"] if plotted else [])]
    print(f"written in {root}: {', '.join(written)}")
    return 1 if failed or any(r["status"] != "done" for r in rows) else 0


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=errors.parse_flags)
