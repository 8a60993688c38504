r"""Entry point: parse flags, hand the config to the library.

  python -m experiments.main --config=experiments/configs/default.py --workdir=DIR \
      [--config.field=value ...]

Several runs that differ only in per-run values (seed, alpha, tau_s, learning rates, FedProx
mu; fecosr_jax.runs.groups) train together on the run axis of the same compiled programs, each in
WORKDIR/NAME with the outputs of a run of its own:

  python -m experiments.main --config=... --workdir=DIR \
      --run=alpha0.2:federated.alpha=0.2 --run=alpha0.8:federated.alpha=0.8

Re-running with the same workdir resumes from WORKDIR/checkpoints. Exit codes
(fecosr_jax/errors.py): 0 done; 2 bad input (a config value, flag, data file or workdir: the
one-line message names it, nothing was written); 1 a failure while running (the message names
the round or market; the traceback with --verbosity=1 or FECOSR_TRACEBACK=1); 75 stopped on
SIGTERM or Ctrl-C after a checkpoint (re-run the same command to resume); 130 interrupted by
Ctrl-C pressed twice, or outside a training step (what was saved stays; re-run to resume).
"""

import os
import re
import signal
import sys


def _stopped_while_starting(signum, frame):
    # SIGTERM before main() runs (importing JAX takes seconds): nothing has been written.
    print(
        "stopped by SIGTERM while starting, before anything was written. Re-run the same "
        "command to start (exit 75).",
        flush=True,
    )
    os._exit(75)  # fecosr_jax.errors.EXIT_PREEMPTED, not imported yet


def _interrupted_while_starting(signum, frame):
    print("interrupted (Ctrl-C) while starting, before anything was written.", flush=True)
    os._exit(130)  # fecosr_jax.errors.EXIT_INTERRUPTED, not imported yet


signal.signal(signal.SIGTERM, _stopped_while_starting)
if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job's stays ignored
    signal.signal(signal.SIGINT, _interrupted_while_starting)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fecosr_jax import errors  # noqa: E402
from fecosr_jax.runs import experiment, inputs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.")
flags.mark_flags_as_required(["config", "workdir"])
_RUNS = flags.DEFINE_multi_string(
    "run",
    [],
    "NAME:FIELD=VALUE,...: one run of a group, in WORKDIR/NAME, with these per-run values "
    "(fields: seed, federated.alpha, federated.temperature, federated.client_lr, "
    "federated.server_lr, federated.fedprox_mu, finetune.lr, finetune.shared_lr_mult, "
    "model.dropout). "
    "Repeat for each run; all train together.",
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "Once the config and the data are checked, move an existing WORKDIR aside (to "
    "WORKDIR.moved-<UTC time>; nothing is deleted) and start a new run there, instead of "
    "resuming it or refusing a changed config or data.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process run: call jax.distributed.initialize() first (on a TPU VM pod slice every "
    "worker runs the same command and the cluster is auto-detected). See "
    "fecosr_jax/distributed.py.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: host:port of process 0 (default: auto)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: how many processes (default: auto)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index (default: auto)."
)


def _stopped(signum, frame):
    # SIGTERM outside a training loop (start-up, writing results): every file written so far
    # is whole, so the same command simply starts or finishes again.
    raise errors.Preempted("stopped by SIGTERM outside a training step")


def _usage(message: str):
    """A command line that cannot run: one line, exit 2, before anything is written."""
    sys.exit(errors.report(errors.BadInput(message)))


def main(argv):
    signal.signal(signal.SIGTERM, _stopped)  # the training loops install their own handler
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt
    if len(argv) > 1:
        _usage(f"unexpected arguments {argv[1:]}: every argument is a --flag")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    if config.get("xla_flags"):
        # Read when JAX starts its backend, which has not happened yet at this point.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {config.xla_flags}".strip()
    # JAX's persistent cache: a re-run, or another process with the same programs (a sweep),
    # loads them instead of compiling. JAX's own JAX_COMPILATION_CACHE_DIR, when set, wins
    # over config.compilation_cache. Every program is kept, the hundreds of small eager ones
    # too (by default JAX keeps only those that took >= 1 s).
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or config.get("compilation_cache")
    if cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if _DISTRIBUTED.value:
        from fecosr_jax import distributed

        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
        _usage("--coordinator_address, --num_processes and --process_id need --distributed")
    from fecosr_jax.runs import groups

    try:
        points = []
        for text in _RUNS.value:
            try:
                name, values = groups.parse_run(text)
                run_config = groups.run_config(config, values)
            except groups.GroupError as e:
                raise groups.GroupError(f"--run={text}: {e}") from e
            points.append((run_config, os.path.join(_WORKDIR.value, name)))
        if _OVERWRITE.value:
            from fecosr_jax import distributed
            from fecosr_jax.store import files

            # The config and the data are checked first: a bad value leaves the old run.
            inputs.check_inputs([c for c, _ in points] or [config])
            if distributed.is_primary():
                moved = files.move_aside(_WORKDIR.value)
                if moved:
                    print(f"--overwrite: the previous run is now in {moved}", flush=True)
            if _DISTRIBUTED.value:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("overwrite")
        if points:
            experiment.train_and_evaluate_group(points)
        else:
            experiment.train_and_evaluate(config, _WORKDIR.value)
    except errors.Preempted as e:
        print(f"{e}. Re-run the same command to resume (exit {errors.EXIT_PREEMPTED}).")
        sys.exit(errors.EXIT_PREEMPTED)
    except KeyboardInterrupt:  # Ctrl-C outside a training step, or twice: as after a kill
        print(
            "interrupted (Ctrl-C): every step saved before stays. Re-run the same command to "
            f"resume (exit {errors.EXIT_INTERRUPTED}).",
            flush=True,
        )
        sys.exit(errors.EXIT_INTERRUPTED)
    except Exception as e:  # one line for a person; the traceback with --verbosity=1
        if isinstance(e, errors.ConfigError) and (source := _config_source(str(e))):
            e.args = (f"{e} ({source})",)
        sys.exit(errors.report(e, verbosity=flags.FLAGS.verbosity))


def _config_source(message: str) -> str | None:
    """Where the config field a ConfigError names was set: the --config. flag(s) that set it
    or a field under it, else the config file."""
    named = re.search(r"\bconfig\.([\w.]+)", message)
    if named is None:
        return None
    field = named[1].rstrip(".")
    given = config_flags.get_override_values(flags.FLAGS["config"])
    flagged = [f"--config.{f}" for f in given if f == field or f.startswith(f"{field}.")]
    flagged += [f"--run={t}" for t in _RUNS.value if re.search(rf"[:,]{re.escape(field)}=", t)]
    if flagged:
        return "set by " + ", ".join(flagged)
    return f"set in {flags.FLAGS['config'].config_filename}"


if __name__ == "__main__":
    app.run(main, flags_parser=errors.parse_flags)
