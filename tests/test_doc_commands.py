"""Every command that README.md and docs/running.md show still runs as written.

Each command is read from the documents' ```bash blocks (a trailing backslash joins lines; a
comment after " #" is dropped). It is handed to the entry point it names, which parses its
flags without running anything. For experiments.main, and launch/sweep.py, that loads the
config file, applies every --config.FIELD override and runs the whole config check. A flag
that was renamed, a config field that moved or a value the check refuses fails here, naming
the document and the command. A command with no checker fails too, so that one is added.
"""

import configparser
import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DOCS = ("README.md", "docs/running.md")

# Parses each argv of one entry point in one process: {"module": M, "argvs": [[...], ...]};
# prints one line per argv, "ok" or what is wrong.
_CHECKER = r"""
import importlib.util, json, os, sys
from absl import flags

job = json.loads(sys.argv[1])
module, argvs = job["module"], job["argvs"]
FLAGS = flags.FLAGS
if module == "launch/sweep.py":
    spec = importlib.util.spec_from_file_location("sweep", module)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    sweep.define_flags()
else:
    entry = importlib.import_module(module)
from experiments.tables.registry import TABLES
from fecosr_jax.report import method_pairs
from fecosr_jax.runs import groups, typed_configs

for argv in argvs:
    # absl keeps parsed flags (and a config file's override flags) in the process: each argv
    # is parsed in a fork of this process, which has imported everything and parsed nothing.
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        continue
    try:
        sys.argv = [module, *argv]  # config_flags finds --config.FIELD overrides in sys.argv
        rest = FLAGS(sys.argv)
        if len(rest) > 1 and module != "experiments.tables":
            raise ValueError(f"unexpected arguments {rest[1:]}")
        if module in ("experiments.main", "launch/sweep.py"):
            typed_configs.check(FLAGS.config)
        if module == "experiments.main":
            for text in FLAGS.run:
                groups.run_config(FLAGS.config, groups.parse_run(text)[1])
        if module == "launch/sweep.py":
            sweep.grid({flag: FLAGS[flag].value for flag, *_ in sweep.AXES})
        if module == "experiments.compare":
            method_pairs.parse_pairs(FLAGS.pairs)
        if module == "experiments.tables":
            unknown = [n for n in rest[1:] if n not in TABLES]
            if unknown:
                raise ValueError(f"no table named {unknown}")
        print("ok", flush=True)
    except BaseException as e:  # absl's errors, a config error, a SystemExit
        print(f"{type(e).__name__}: {e}".replace("\n", " "), flush=True)
    os._exit(0)
"""


def doc_commands(doc: str) -> list[str]:
    """The commands of a document's ```bash blocks, one string each."""
    text = (ROOT / doc).read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.split(r"\s+#", line)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def entry_point(words: list[str]) -> tuple[str, list[str]] | None:
    """The module a command runs and its arguments; None for a command that runs no Python
    entry point of this project (checked otherwise)."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # environment variables
        words = words[1:]
    program, *args = words
    if program.endswith("python") or program.endswith("python3"):
        if args[0] == "-m":
            return args[1], args[2:]
        return args[0], args[1:]
    if program == "bash" and args[0] == "launch/run.sh":
        defaults = ["--config=experiments/configs/default.py", "--workdir=workdir/default"]
        return "experiments.main", defaults + args[1:]
    return None


def extras_and_pins() -> tuple[set[str], dict[str, str]]:
    """setup.cfg's extras, and the versions its extras pin (name -> version)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    pins = dict(re.findall(r"^\s*([\w.-]+)==([\w.]+)", "\n".join(extras.values()), re.M))
    return set(extras), pins


def other_command(command: str, words: list[str]) -> None:
    """Checks a command that runs no Python entry point: a launch script, an installation."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    program, *args = words
    if program == "bash":
        assert (ROOT / args[0]).is_file(), f"{command}: no {args[0]}"
        if args[0] == "launch/tpu_vm.sh":
            out = subprocess.run(
                ["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0 and "--dry-run" in args, f"{command}: {out.stderr}"
        return
    if program.endswith("pip"):
        extras, pins = extras_and_pins()
        for arg in args:
            named = re.fullmatch(r"-?e?\s*'?\.\[(\w+)\]'?", arg)
            if named:
                assert named[1] in extras, f"{command}: setup.cfg has no extra {named[1]!r}"
            pinned = re.fullmatch(r"([\w.-]+)==([\w.]+)", arg)
            if pinned:
                assert pins.get(pinned[1]) == pinned[2], f"{command}: setup.cfg pins otherwise"
        return
    raise AssertionError(f"{command}: no check for this kind of command (tests/{__name__})")


@pytest.fixture(scope="module")
def commands() -> list[tuple[str, str]]:
    found = [(doc, c) for doc in DOCS for c in doc_commands(doc)]
    assert len(found) >= 20, found  # both documents' blocks were read
    return found


def test_every_documented_command_parses(commands):
    jobs: dict[str, list] = {}
    for doc, command in commands:
        words = shlex.split(command)
        if words[0] == "bash" and words[1] == "launch/tpu_vm.sh" and "--" in words:
            # its arguments after -- go to experiments.main on the workers
            workdir = next(w for w in words if w.startswith("--workdir="))
            rest = words[words.index("--") + 1 :]
            jobs.setdefault("experiments.main", []).append((doc, command, [workdir, *rest]))
        found = entry_point(words)
        if found is None:
            other_command(command, words)
            continue
        module, args = found
        jobs.setdefault(module, []).append((doc, command, args))
    problems = []
    for module, items in jobs.items():
        job = json.dumps({"module": module, "argvs": [args for _, _, args in items]})
        out = subprocess.run(
            [sys.executable, "-c", _CHECKER, job],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = out.stdout.splitlines()
        assert out.returncode == 0 and len(lines) == len(items), out.stderr[-2000:]
        problems += [
            f"{doc}: {command}: {line}"
            for (doc, command, _), line in zip(items, lines, strict=True)
            if line != "ok"
        ]
    assert not problems, "\n".join(problems)


def test_a_broken_command_is_caught():
    # the checker is not a rubber stamp: a renamed flag, an unknown config field and a value
    # the config check refuses each come back named
    argvs = [
        ["--config=experiments/configs/test.py", "--workdir=w", "--rounds=3"],
        ["--config=experiments/configs/test.py", "--workdir=w", "--config.federated.alfa=0.5"],
        ["--config=experiments/configs/test.py", "--workdir=w", "--config.num_rounds=0"],
        ["--config=experiments/configs/test.py", "--workdir=w", "--config.num_rounds=3"],
    ]
    job = json.dumps({"module": "experiments.main", "argvs": argvs})
    out = subprocess.run(
        [sys.executable, "-c", _CHECKER, job], cwd=ROOT, capture_output=True, text=True
    )
    unknown, field, value, ok = out.stdout.splitlines()
    assert "rounds" in unknown and "alfa" in field and "num_rounds=0" in value, out.stdout
    assert ok == "ok"
