"""Progress for people: rate and ETA worked out by hand, time per phase, compile seconds; the
run's record of the code it trained with."""

import subprocess
import time
from importlib import metadata

import jax
import jax.numpy as jnp

from fecosr_jax import progress
from fecosr_jax.report import plots
from fecosr_jax.store import metrics_log


def test_rate_and_eta_by_hand():
    assert progress.rate_and_eta(10, 5.0, 30, "rounds") == "2.00 rounds/s, ETA 15 s"
    assert progress.rate_and_eta(2, 8.0, 60, "epochs") == "0.25 epochs/s, ETA 4.0 min"
    assert progress.rate_and_eta(0, 1.0, 5, "rounds") == ""  # nothing timed yet


def test_phase_times_and_the_compile_seconds_inside_them():
    times = progress.PhaseTimes()
    with times.phase("loading"):
        time.sleep(0.05)
    with times.phase("pretraining"):
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 17.25)(jnp.arange(7.0)).block_until_ready()
    with times.phase("loading"):
        time.sleep(0.05)
    assert list(times.seconds) == ["loading", "pretraining"]
    assert times.seconds["loading"] >= 0.1
    compiled = progress.compile_seconds() - times.compile_start
    assert 0 < compiled <= times.seconds["pretraining"]  # a new program compiled in there
    text = times.summary()
    assert text.startswith("time: loading ") and ", pretraining " in text and "total" in text
    with times.phase("fine-tuning"):
        pass
    with times.phase("loading"):  # shown in the phases' order, not the order they ran
        pass
    assert times.summary().index("pretraining") < times.summary().index("fine-tuning")
    time.sleep(0.1)  # outside every phase
    record = times.record()  # what training.json keeps: the same seconds, in the same order
    assert list(record) == ["loading", "pretraining", "fine-tuning", "other", "compiling", "total"]
    assert record["loading"] == round(times.seconds["loading"], 1) >= 0.1
    assert record["compiling"] <= record["pretraining"] <= record["total"]
    assert record["other"] >= 0.1  # the phases and the rest add up to the total
    assert abs(sum(record[p] for p in list(record)[:4]) - record["total"]) <= 0.25


def test_progress_lines_say_step_of_total_and_eta(tmp_path, capsys):
    log = metrics_log.RunLog(str(tmp_path), tensorboard=False, label="seed 1")
    for step in (1, 2, 3):
        log.log("fecosr", "pretrain", step, {"loss": 1.0 / step}, progress=True, total=10)
    lines = capsys.readouterr().out.splitlines()
    assert "seed 1 fecosr pretrain 1/10: loss 1.0000" in lines[0] and "ETA" not in lines[0]
    assert "seed 1 fecosr pretrain 3/10: loss 0.3333 (" in lines[2]
    assert "rounds/s, ETA " in lines[2]


def test_every_series_of_a_plot_is_distinguishable():
    styles = [plots.series_style(i) for i in range(40)]
    assert len(set(styles)) == 40
    # 11 methods (every method + popularity): the 11th shares a colour, not a look
    assert styles[10][0] == styles[0][0] and styles[10] != styles[0]


def test_a_run_records_the_commit_of_its_checkout_and_whether_it_was_modified(tmp_path):
    """metrics_log.code: a checkout's commit, "modified" by a changed tracked file and not by
    an untracked one; a folder that is no checkout (or another repository's subfolder, as a
    virtual environment inside one) gives the installed version instead."""
    repo = tmp_path / "repo"
    (repo / "fecosr_jax").mkdir(parents=True)
    tracked = repo / "fecosr_jax" / "x.py"
    tracked.write_text("a = 1\n")

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    (repo / "new.txt").write_text("untracked\n")
    assert metrics_log.code.__wrapped__(repo) == {"commit": head, "modified": False}
    tracked.write_text("a = 2\n")
    assert metrics_log.code.__wrapped__(repo) == {"commit": head, "modified": True}
    version = {"version": metadata.version("fecosr_jax")}
    assert metrics_log.code.__wrapped__(tmp_path) == version  # no checkout
    assert metrics_log.code.__wrapped__(repo / "fecosr_jax") == version  # inside another's
