"""launch/tpu_vm.sh: the dry run prints the whole command sequence, and a real run (against a
stand-in gcloud that records its arguments) runs exactly those commands, each remote command
valid bash, the archive holding the package, and the run on every worker with --distributed."""

import os
import shlex
import stat
import subprocess
import tarfile

from tests.conftest import ROOT

SCRIPT = ROOT / "launch" / "tpu_vm.sh"
JAX_VERSION = next(
    line.split("==")[1].split()[0]
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.startswith("jax==")
)
ARGS = [
    "--name=fx",
    "--zone=us-west4-a",
    "--accelerator=v5litepod-16",
    "--workdir=gs://bucket/runs/m256",
    "--spot",
    "--",
    "--config=experiments/configs/synthetic_sweep.py:256",
    "--config.data.path=it's here",
]
# Records each call (one line of shell words) and plays describe: "no such TPU VM".
FAKE_GCLOUD = """#!/usr/bin/env bash
printf '%q ' "$@" >> "$GCLOUD_LOG"; echo >> "$GCLOUD_LOG"
if [ "$4" = describe ]; then exit 1; fi
if [ "$4" = scp ]; then cp "$5" "$GCLOUD_LOG.archive"; fi
"""


def tpu_vm(*args, env=None, tmp_path=None):
    env = {**os.environ, **(env or {}), "TMPDIR": str(tmp_path)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )


def printed_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(x[2:]) for x in stdout.splitlines() if x.startswith("+ ")]


def remote_command(cmd: list[str]) -> str:
    (flag,) = [a for a in cmd if a.startswith("--command=")]
    return flag.removeprefix("--command=")


def test_dry_run_prints_every_step(tmp_path):
    out = tpu_vm(*ARGS[:5], "--dry-run", *ARGS[5:], tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    create, archive, scp, install, run = printed_commands(out.stdout)
    assert create == [
        *"gcloud compute tpus tpu-vm create fx --zone=us-west4-a".split(),
        "--accelerator-type=v5litepod-16",
        "--version=v2-alpha-tpuv5-lite",
        "--spot",
    ]
    assert archive[:2] == ["git", "-C"] and "archive" in archive
    assert scp[4] == "scp" and "--worker=all" in scp
    assert "--worker=all" in install and f'"jax[tpu]=={JAX_VERSION}"' in remote_command(install)
    assert "--worker=all" in run
    cd, main = remote_command(run).split(" && ")
    assert cd == "cd ~/fecosr_jax"
    assert shlex.split(main) == [
        ".venv/bin/python",
        "-m",
        "experiments.main",
        "--distributed",
        "--workdir=gs://bucket/runs/m256",
        "--config=experiments/configs/synthetic_sweep.py:256",
        "--config.data.path=it's here",
    ]
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


def test_run_executes_the_printed_commands(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "gcloud.log"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "GCLOUD_LOG": str(log)}
    out = tpu_vm(*ARGS, env=env, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    calls = [shlex.split(x) for x in log.read_text().splitlines()]
    printed = printed_commands(out.stdout)
    gcloud_printed = [c for c in printed if c[0] == "gcloud"]
    assert calls[0][3] == "describe"  # then create, since describe found none
    assert calls[1:] == [c[1:] for c in gcloud_printed]
    for cmd in calls:
        if cmd[3] == "ssh":  # every remote command is valid bash
            check = subprocess.run(["bash", "-n", "-c", remote_command(cmd)], capture_output=True)
            assert check.returncode == 0, (remote_command(cmd), check.stderr)
    with tarfile.open(f"{log}.archive") as tar:
        names = tar.getnames()
    assert {"fecosr_jax/requirements.txt", "fecosr_jax/experiments/main.py"} <= set(names)
    assert "fecosr_jax/fecosr_jax/federated/round.py" in names


def test_bad_options_are_named(tmp_path):
    out = tpu_vm("--zone=z", "--workdir=gs://b/w", tmp_path=tmp_path)
    assert out.returncode == 2 and "--name=NAME is required" in out.stderr
    out = tpu_vm("--name=n", "--zone=z", "--workdir=gs://b/w", "--bogus", tmp_path=tmp_path)
    assert out.returncode == 2 and "unknown option --bogus" in out.stderr
    out = tpu_vm(*ARGS[:5], "--dry-run", "--", "--workdir=/x", tmp_path=tmp_path)
    assert out.returncode == 2 and "--workdir=/x: tpu_vm.sh sets it" in out.stderr
    out = tpu_vm("--name=n", "--zone=z", "--workdir=/local", "--dry-run", tmp_path=tmp_path)
    assert out.returncode == 0 and "not a gs:// path" in out.stderr
