"""What can stop a run, and the exit code an entry point gives it.

  bad input (exit 2): a config value, a flag, a data file or a workdir to fix. `BadInput` and
    its kinds (`ConfigError` here, fecosr_jax.data.DataError, fecosr_jax.runs.groups.GroupError,
    fecosr_jax.store.resume.IncompatibleCheckpoint); raised before the run writes anything.
  failure (exit 1): something went wrong while running (a non-finite loss, a full disk, a
    bug): `NonFiniteError`, `DiskFull` or any other exception.
  preempted (exit 75): SIGTERM or Ctrl-C; the last step was saved (`Preempted`, raised
    where fecosr_jax.preemption's flag is checked).
  interrupted (exit 130): Ctrl-C twice, or outside a training step; what was saved stays, as
    after a kill.

`report` prints one line, `error: WHAT`, and the traceback only when asked (absl's
--verbosity=1 or higher, or FECOSR_TRACEBACK=1). `parse_flags` gives a bad flag the same
form (absl's own parser prints "FATAL Flags parsing error" and exits 1).
"""

from __future__ import annotations

import os
import sys
import traceback

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: stopped after a checkpoint; re-run resumes
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C


class BadInput(ValueError):
    """Input to fix (config, flag, data, workdir). The message names what and where."""


class ConfigError(BadInput):
    """A config field out of range or of a wrong kind; the message names the field."""


def check_ranges(prefix: str, config, ranges: dict[str, bool | tuple[bool, str]]):
    """Raises ConfigError naming the first field of `config` whose check is False, as
    `{prefix}.{field}={value!r}: expected {what}` where the check is (ok, what it expects),
    else `{prefix}.{field}={value!r} is out of range`."""
    for name, check in ranges.items():
        ok, expected = check if isinstance(check, tuple) else (check, None)
        if not ok:
            value = f"{prefix}.{name}={getattr(config, name)!r}"
            raise ConfigError(
                f"{value}: expected {expected}" if expected else f"{value} is out of range"
            )


class NonFiniteError(RuntimeError):
    """A non-finite loss or parameter: the run stops and the last checkpoint stays good."""


class DiskFull(RuntimeError):
    """Too little space for the next checkpoint: the run stops before orbax starts writing it,
    and the checkpoints saved before stay intact (free space, then re-run to resume)."""


class Preempted(Exception):
    """SIGTERM or Ctrl-C arrived: a checkpoint was written; re-running the same command
    resumes."""


def exit_code(error: BaseException) -> int:
    if isinstance(error, Preempted):
        return EXIT_PREEMPTED
    return EXIT_BAD_INPUT if isinstance(error, BadInput) else EXIT_FAILURE


def wants_traceback(verbosity: int = 0) -> bool:
    return verbosity >= 1 or os.environ.get("FECOSR_TRACEBACK", "") not in ("", "0")


def report(error: BaseException, *, verbosity: int = 0, prog: str = "") -> int:
    """Prints `error` for a person (stderr; one line unless a traceback is wanted) and
    returns the exit code."""
    if wants_traceback(verbosity):
        traceback.print_exception(error, file=sys.stderr)
    code = exit_code(error)
    text = str(error) or type(error).__name__
    if code == EXIT_FAILURE and not isinstance(error, RuntimeError | OSError):
        text = f"{type(error).__name__}: {text}"  # an unexpected error: say which
    prefix = f"{prog}: " if prog else ""
    hint = (
        ""
        if wants_traceback(verbosity) or code != EXIT_FAILURE
        else (" (the traceback: --verbosity=1 or FECOSR_TRACEBACK=1)")
    )
    print(f"{prefix}error: {text}{hint}", file=sys.stderr, flush=True)
    return code


def parse_flags(argv: list[str], flag_values=None) -> list[str]:
    """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`: a flag that does
    not parse (unknown, a value of the wrong kind, a required one missing, a config file or
    --config.FIELD that does not load) is bad input: one line naming it, exit 2.
    `flag_values`: absl's FlagValues (default the global FLAGS)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        rest = flag_values(argv)
    except flags.Error as e:
        _bad_flag(" ".join(str(e).split()))
    except (AttributeError, KeyError) as e:  # config_flags: a --config.FIELD the config lacks
        field = str(e).strip("'\"")
        given = [
            a.split("=")[0]
            for a in argv[1:]
            if a.startswith("--config.") and field in a.split("=")[0].split(".")
        ]
        if not given:
            raise
        _bad_flag(f"{given[0]}: the config has no such field")
    for name in list(flag_values):  # config_flags reports a config file that fails to load later
        flag = flag_values[name]
        if flag.present and hasattr(flag, "config_filename"):
            try:
                flag.value.keys()
            except OSError as e:
                reason = str(e).strip().splitlines()[-1].strip()
                _bad_flag(f"--{name}={flag.config_filename}: {reason}")
    return rest


def _bad_flag(message: str):
    print(f"error: {message} (--helpfull lists the flags)", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)
