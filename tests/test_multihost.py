"""Multi-host without a pod: two processes on localhost joined by jax.distributed (gloo
collectives, 2 forced CPU devices each) form one 4-device mesh. The federated round over it
equals the single-process round, and a whole 2-process run of experiments.main writes the same
results as one process, each file once, and resumes from its checkpoints."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from experiments.configs import test as test_config
from fecosr_jax.federated import round as fed_round
from fecosr_jax.runs import experiment
from tests import multihost_worker
from tests.conftest import ROOT

TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands: list[list[str]], env: dict | None = None) -> list[str]:
    """Starts the commands together, waits for all; returns their outputs (fails on rc != 0)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in commands
    ]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            outputs.append(out)
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"{p.args} exited {p.returncode}:\n{out[-4000:]}"
    return outputs


def test_two_process_round_equals_single_process_round(tmp_path):
    port = free_port()
    paths = [tmp_path / f"process{i}.npz" for i in range(2)]
    run_processes(
        [
            [sys.executable, "tests/multihost_worker.py", str(i), "2", str(port), str(paths[i])]
            for i in range(2)
        ]
    )
    results = [dict(np.load(p)) for p in paths]
    for r in results:  # a full disk on process 1 alone: both processes stop, naming it
        np.testing.assert_array_equal(r.pop("without_space"), [1])
    # One process, the same 4-device mesh shape (conftest forces 8 CPU devices).
    reference = multihost_worker.run_rounds(fed_round.make_mesh(jax.devices()[:4]))
    assert sorted(results[0]) == sorted(reference)
    for key, expected in reference.items():
        # Both processes hold the same replicated result, bit for bit.
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)
        # gloo's cross-process sum may add in another order than one process does.
        np.testing.assert_allclose(results[0][key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
    assert np.all(np.isfinite(reference["market_loss"]))


def command(workdir, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/test.py",
        f"--workdir={workdir}",
        "--config.methods=fecosr",
        "--config.num_rounds=2",
        "--config.finetune.max_epochs=1",
        "--config.num_devices=0",  # every device (the test config computes on one)
        "--config.plots=False",
        "--config.tensorboard=False",
        *extra,
    ]


def test_two_process_experiment_matches_one_process_and_resumes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # The same run in this process on 4 of its devices: the same mesh shape as 2 processes x 2.
    config = test_config.get_config()
    config.methods, config.num_rounds, config.finetune.max_epochs = "fecosr", 2, 1
    config.num_devices = 4
    config.plots, config.tensorboard = False, False
    experiment.train_and_evaluate(config, str(one))

    def two_processes():
        port = free_port()
        flags = ["--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
        return run_processes(
            [command(two, *flags, f"--process_id={i}") for i in range(2)],
            env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        )

    two_processes()
    expected = json.loads((one / "results.json").read_text())
    results = json.loads((two / "results.json").read_text())
    assert results == expected
    # Process 0 alone wrote the log: every round and epoch appears once.
    lines = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    steps = [(x["paradigm"], x["stage"], x["step"]) for x in lines]
    assert len(steps) == len(set(steps))
    assert [s for p, stage, s in steps if stage == "pretrain"] == [1, 2]

    # Resume: forget that fecosr finished. Both processes restore the pretraining (arrays
    # spanning both processes) and the fine-tuning (markets sharded over both) checkpoints.
    progress_path = two / "checkpoints" / "progress.json"
    progress = json.loads(progress_path.read_text())
    progress["methods"].clear()
    progress["done"] = False
    progress_path.write_text(json.dumps(progress))
    (two / "results.json").unlink()
    outputs = two_processes()
    assert "resuming from" in outputs[0]
    assert json.loads((two / "results.json").read_text()) == expected
