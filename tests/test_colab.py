"""launch/colab.ipynb is a valid notebook and runs top to bottom (nbclient, a real kernel) on
the CPU with the tiny config: the install cell finds the package installed, the run cell runs
experiments.main, and the results cell shows the table that the run wrote."""

import base64
import json

import nbformat
import pytest

from tests.conftest import ROOT

NOTEBOOK = ROOT / "launch" / "colab.ipynb"


def test_notebook_is_valid_and_runs_with_the_tiny_config(tmp_path):
    nbclient = pytest.importorskip("nbclient", reason="dev dependency (requirements.txt)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert 'CONFIG = "experiments/configs/default.py"' in params.source  # the default run
    workdir = tmp_path / "workdir"
    params.source = "\n".join(
        [
            'REPO_URL = ""',
            'CONFIG = "experiments/configs/test.py"',
            f"WORKDIR = {str(workdir)!r}",
            # The notebook's plumbing, not the training, is under test: one method, one epoch.
            'EXTRA_FLAGS = ["--config.methods=local", "--config.finetune.max_epochs=1", '
            '"--config.checkpoint.enabled=False"]',
        ]
    )
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    outputs = {
        i: "".join(o.get("text", "") + str(o.get("data", {})) for o in c.get("outputs", []))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert "fecosr_jax is installed" in text
    assert "cpu" in text and "No GPU" in text
    results = json.loads((workdir / "results.json").read_text())
    assert sorted(results["methods"]) == ["local", "popularity"]
    last = outputs[max(outputs)]
    assert "methods: local, popularity" in last  # results.json sorts its keys
    assert "text/markdown" in last and "image/png" in last
    # What the notebook shows is what the run wrote: the whole table, and both plots.
    shown = [o.get("data", {}) for o in nb.cells[max(outputs)].get("outputs", [])]
    (markdown,) = [d["text/markdown"] for d in shown if "text/markdown" in d]
    assert markdown == (workdir / "results.md").read_text()
    images = [base64.b64decode(d["image/png"]) for d in shown if "image/png" in d]
    plots = [(workdir / n).read_bytes() for n in ("markets_ndcg10.png", "curves.png")]
    assert images == plots
