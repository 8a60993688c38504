"""Shared test setup: 8 forced CPU devices (before JAX starts) and the ../shared/data paths."""

import os
import tempfile

# 8 CPU devices for the multi-device tests; the tests' models are tiny, so compile time
# dominates: compile with the test config's flags (experiments/configs/test.py FAST_COMPILE:
# same numbers, slower kernels; not imported here, as this runs before anything imports JAX).
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
    "--xla_cpu_use_fusion_emitters=false",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The equality tests compare two float32 code paths. On a GPU, XLA's default precision runs
# fp32 products in TF32 (10-bit mantissa): there the vmapped round ended 1.0e-5 away from the
# per-market loop on an H200 (docs/benchmarks.md). Full fp32 takes that rounding out of the
# tests. On CPU this changes nothing.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# One persistent compilation cache for this test process and the runs it starts (JAX's own
# variable, which experiments.main honours too): a program another test compiled loads
# instead of compiling again, also after the in-memory caches are cleared below. One folder
# per process (pytest-xdist workers too): JAX does not write its cache files atomically.
# Every program is kept (JAX keeps those that took >= 1 s, and at these sizes few do).
_CACHE = tempfile.mkdtemp(prefix="fecosr_test_xla_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import gc  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
XMREC_DIR = SHARED_DATA / "xmrec_electronics_5core"
ML100K_DIR = SHARED_DATA / "ml-100k"


def require(path: pathlib.Path) -> pathlib.Path:
    """Skips the test with a clear message when the shared data folder is absent."""
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (expected ../shared/data beside the repo)")
    return path


def row_cells(line: str) -> list[str]:
    """A Markdown table row's cells, without their padding or bold."""
    return [c.strip().strip("*") for c in line.strip("|").split("|")]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


# Test modules by their seconds of work on the 2-core CPU, the slowest first (measured with
# --durations=0, 2026-11-29). pytest-xdist (--dist loadfile --no-loadscope-reorder,
# pyproject.toml) hands each free worker the next module in collection order: the long
# modules start first and the short ones fill in at the end, where alphabetical order (or
# xdist's own, by test count) left a minute-long module to run alone while the other worker
# waited. A module missing from the list runs after them, in collection order.
SLOWEST_FIRST = (
    "test_resume",  # about 150 (its group of 3 seeds killed 3 times: 84 s, 2026-12-06)
    "test_runs",  # 134 s
    "test_experiment",  # 133
    "test_round",  # 100
    "test_newcomers",  # about 90 (2026-12-06)
    "test_multihost",  # 69
    "test_sweep",  # 61
    "test_privacy",  # 49
    "test_bench",  # 45
    "test_finetune",  # 34
    "test_doc_commands",  # 24
    "test_model",  # 24
    "test_colab",  # 15
    "test_losses",  # 14
    "test_bad_input",  # 10
    "test_groups",  # 9
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: order within


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module. An XLA CPU executable holds about
    25 memory mappings; the whole suite compiles thousands of programs in one process, and
    past the kernel's vm.max_map_count (65530) XLA crashed while compiling (SIGSEGV/SIGABRT
    in CI). Programs a later module needs again load from the cache above."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def xmrec_dir():
    return require(XMREC_DIR)


@pytest.fixture
def ml100k_dir():
    return require(ML100K_DIR)


def run_entry_point(module: str, argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
    """A command line run through an entry point's `main` as `python -m module` would run it
    (absl's app.run, sys.argv = argv), in a fork of the test process: no new interpreter, and
    absl's flags defined and parsed afresh (the flags other entry points imported into this
    process are dropped in the fork, and `module` is imported there again). For commands
    refused before they compute: a fork of a process that has run JAX must not use it. A fork
    still running after `timeout` seconds is killed and the test fails. Returns (exit code,
    stdout, stderr)."""
    import importlib
    import signal
    import sys
    import time
    import warnings

    from absl import app, flags

    from fecosr_jax import errors
    from fecosr_jax.runs import experiment  # noqa: F401 - imported once here, not in each fork

    with tempfile.TemporaryDirectory() as folder:
        out_path, err_path = os.path.join(folder, "out"), os.path.join(folder, "err")
        with warnings.catch_warnings():  # JAX warns of any fork; this child never runs JAX
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            pid = os.fork()
        if pid == 0:  # the child: the command line, then exit with its code
            code = 0
            try:
                for fd, path in ((1, out_path), (2, err_path)):
                    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT), fd)
                sys.stdout, sys.stderr = os.fdopen(1, "w"), os.fdopen(2, "w")
                names = {  # absl's own (--verbosity, ...) stay
                    flag.name
                    for owner, defined in flags.FLAGS.flags_by_module_dict().items()
                    if not owner.startswith("absl")
                    for flag in defined
                }
                for name in names & set(flags.FLAGS):
                    delattr(flags.FLAGS, name)
                sys.modules.pop(module, None)
                entry = importlib.import_module(module)
                if hasattr(entry, "define_flags"):  # a script defines its flags when run
                    entry.define_flags()
                sys.argv = list(argv)
                app.run(entry.main, flags_parser=errors.parse_flags)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - anything else is the harness's failure
                import traceback

                traceback.print_exc()
                code = 99
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"{' '.join(argv)}: still running after {timeout} s")
            time.sleep(0.01)
        with open(out_path) as out, open(err_path) as err:
            return os.waitstatus_to_exitcode(done[1]), out.read(), err.read()


def final_state(workdir, phase: str) -> tuple[int, list]:
    """(step, leaves as numpy arrays) of a phase's newest checkpoint in a run's workdir, read
    back with orbax."""
    import numpy as np
    import orbax.checkpoint as ocp

    directory = pathlib.Path(workdir) / "checkpoints" / phase
    with ocp.CheckpointManager(directory, item_names=("state", "meta")) as manager:
        step = manager.latest_step()
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, [np.asarray(x) for x in jax.tree.leaves(state["state"])]


def tree_state(path: pathlib.Path) -> dict[str, tuple[bytes, int]] | None:
    """Every file under `path` (relative name -> (bytes, mtime in ns)); None where `path` is
    absent. Two equal states: nothing was written, replaced, touched or removed there."""
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def refused_by_main(workdir: pathlib.Path, *flags: str, module="experiments.main") -> str:
    """experiments.main (or another entry point `module` with --config and --workdir: the
    sweep's launch.sweep) on the test config with `flags`, through its entry point
    (`run_entry_point`), which must refuse it as bad input: exit 2, one line "error: ...", no
    traceback, and the workdir as it was: absent, or an old run byte for byte unchanged with
    nothing moved aside beside it (--overwrite checks first). Returns that line."""
    argv = [
        module,
        f"--config={ROOT / 'experiments/configs/test.py'}",
        f"--workdir={workdir}",
        *flags,
    ]
    before, beside = tree_state(workdir), sorted(workdir.parent.iterdir())
    code, stdout, stderr = run_entry_point(module, argv)
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stdout + stderr, stderr
    assert tree_state(workdir) == before, f"{workdir} changed"
    assert sorted(workdir.parent.iterdir()) == beside, "something was written beside it"
    return stderr
