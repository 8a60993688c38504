"""A run's record in WORKDIR/checkpoints: progress.json and what a resume must match.

progress.json holds the run's config, each market's data fingerprint and every finished
method's per-market results and per-user test ranks, so a resumed run skips finished methods
and a finished run only reports. A re-run whose config (outside RESUMABLE_FIELDS) or data
differs is refused, naming what changed; each phase's arrays are in its own
checkpoint.PhaseCheckpoints. A finished run also records its config and data fingerprints
beside its results.json (INPUTS), so the same holds with checkpoints off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
from etils import epath

from fecosr_jax.errors import BadInput
from fecosr_jax.federated.privacy import DPConfig
from fecosr_jax.store.checkpoint import NullPhase, PhaseCheckpoints
from fecosr_jax.store.files import write_text_atomic

# Config fields (dotted when nested) that may change between a run and its resume: they do
# not change results (num_devices only the rounding of sums over markets, as a resume on
# another machine would).
RESUMABLE_FIELDS = (
    "plots",
    "tensorboard",
    "xla_flags",
    "compilation_cache",
    "checkpoint",
    "num_devices",
    "federated.dp.public",  # a declaration: what a private run may send without noise
)
# Config fields added in later versions: absent from an older run's config means this value.
# Dotted names ("model.norm") for nested fields.
ADDED_FIELDS = {
    "seeds": "1",
    "model.norm": "pre",
    "model.item_id_std": 0.0,
    "runs_per_step": 0,
    "compilation_cache": "",
    "num_devices": 0,
    "federated.dp": dataclasses.asdict(DPConfig()),  # off: runs before DP had none
    "finetune.markets_per_step": 0,
    "data.duplicates": "keep",  # runs before it kept exact duplicate rows
    "finetune.min_budget": 0.0,  # runs before it stopped on patience alone
    "data.newcomers": "",  # runs before it pretrained on every market
    "pretrained": "",  # runs before it pretrained in the run
    "data.finetune_markets": "",  # runs before it fine-tuned every market
    "data.catalogue": "interactions",  # runs before it took a market's items from its rows
}


class IncompatibleCheckpoint(BadInput):
    """The workdir holds a run whose config differs in fields that change results."""


def changed_fields(saved: dict, current: dict, prefix: str = "") -> dict[str, tuple]:
    """{dotted name: (saved value, current value)} for the fields whose values differ, ignoring
    RESUMABLE_FIELDS; a field of ADDED_FIELDS absent from `saved` has its old value there."""
    out = {}
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in RESUMABLE_FIELDS:
            continue
        absent = ADDED_FIELDS.get(name, "<absent>")
        a, b = saved.get(key, absent), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(changed_fields(a, b, f"{name}."))
        elif a != b:
            out[name] = (a, b)
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """The fields whose values differ (changed_fields), each as `name (checkpoint A, now B)`."""
    return [
        f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in changed_fields(saved, current).items()
    ]


def _json_ready(obj):
    """The config as JSON would round-trip it (tuples become lists)."""
    return json.loads(json.dumps(obj))


def data_fingerprints(splits) -> dict[str, str]:
    """{market: a BLAKE2b digest of its split arrays and catalogue}: what a run trained on."""
    out = {}
    for split in splits:
        h = hashlib.blake2b(digest_size=16)
        for field in dataclasses.fields(split):
            if field.name == "train_user":  # derived from the rows' making, not an input
                continue
            value = getattr(split, field.name)
            if isinstance(value, np.ndarray):
                value = np.ascontiguousarray(value)
                h.update(f"{field.name}{value.dtype}{value.shape}".encode())
                h.update(
                    value.tobytes() if value.dtype != object else repr(value.tolist()).encode()
                )
            else:
                h.update(f"{field.name}={value!r}".encode())
        out[split.name] = h.hexdigest()
    return out


# The key of a loaded pretrained model's fingerprint among a run's data fingerprints.
PRETRAINED = "config.pretrained"


def compare_data(where, saved: dict[str, str] | None, data: dict[str, str]) -> None:
    """Refuses data whose fingerprints (`data_fingerprints`, and PRETRAINED's) differ from
    the ones a run in `where` recorded (None: a run of an older version, which recorded
    none), naming the markets."""
    changed = sorted(m for m in {*(saved or {}), *data} if (saved or data).get(m) != data.get(m))
    markets = [m for m in changed if m != PRETRAINED]
    what = []
    if markets:
        what.append(f"market(s) {', '.join(markets)} changed (their files, or the split settings)")
    if PRETRAINED in changed:
        what.append(f"the pretrained model in {PRETRAINED} changed")
    if changed:
        raise IncompatibleCheckpoint(
            f"{where}: this workdir holds a run on other data: {'; '.join(what)} since it "
            "started. Use a new --workdir, or --overwrite to move this run aside"
        )


# Beside a finished run's results.json: the inputs it was made from, {"config", "data"}.
INPUTS = "inputs.json"


def check_finished(workdir, config_dict: dict, recorded: dict) -> None:
    """Refuses a re-run of a finished run (its `recorded` inputs, INPUTS) with a config that
    differs in fields that change results, naming them, as a resume does."""
    diffs = config_differences(recorded["config"], _json_ready(config_dict))
    if diffs:
        raise IncompatibleCheckpoint(
            f"{workdir}: this workdir holds a finished run with a different config: "
            + "; ".join(diffs)
            + ". Use a new --workdir, or --overwrite to move this run aside (nothing is "
            "deleted)."
        )


class RunCheckpoints:
    """WORKDIR/checkpoints: one PhaseCheckpoints per phase plus progress.json."""

    def __init__(
        self, workdir, config_dict: dict, options: dict, *, writes: bool = True, start=True
    ):
        self.root = epath.Path(workdir) / "checkpoints"
        self.options = options
        self.writes = writes  # False on processes other than 0 (they only read progress)
        self.enabled = bool(options.get("enabled", True))
        self.progress_path = self.root / "progress.json"
        self.phases: dict[str, PhaseCheckpoints | NullPhase] = {}
        config_dict = _json_ready(config_dict)
        progress = self._read_progress()
        self.resuming = progress is not None  # a run was started in this workdir before
        if progress is not None:
            diffs = config_differences(progress["config"], config_dict)
            if diffs:
                raise IncompatibleCheckpoint(
                    f"{self.root}: this workdir holds a run with a different config: "
                    + "; ".join(diffs)
                    + ". Use a new --workdir, --overwrite to move this run aside (nothing is "
                    "deleted), or restore these values to resume it."
                )
            self.progress = progress
        else:
            self.progress = {"config": config_dict, "methods": {}, "skipped": {}, "done": False}
        self.progress.setdefault("ranks", {})  # absent from runs of older versions
        if start:
            self.start()

    def check_data(self, data: dict[str, str]):
        """Records each market's fingerprint (`data_fingerprints`). A run resumed on other
        data is refused, naming the markets, so results of old and new data never mix."""
        compare_data(self.root, self.progress.get("data"), data)
        self.progress["data"] = data

    def start(self):
        """Writes progress.json: the workdir now holds this run (start=False in __init__
        defers it until the run's input has been checked)."""
        if self.enabled:
            self._write_progress()

    def _read_progress(self) -> dict | None:
        if not self.progress_path.exists():
            return None
        try:
            return json.loads(self.progress_path.read_text())
        except json.JSONDecodeError as e:
            raise IncompatibleCheckpoint(
                f"{self.progress_path}: unreadable ({e}); move the workdir aside to start over"
            ) from e

    def _write_progress(self):
        if not self.writes:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.progress_path, json.dumps(self.progress, indent=1) + "\n")

    def phase(self, name: str, *, best: bool = False):
        if name not in self.phases:
            if self.enabled:
                self.phases[name] = PhaseCheckpoints(
                    self.root / name,
                    keep=int(self.options.get("keep", 2)),
                    best=best,
                    async_save=bool(self.options.get("async_save", True)),
                    every=int(self.options.get("every", 1)),
                )
            else:
                self.phases[name] = NullPhase()
        return self.phases[name]

    def finished_method(
        self,
        method: str,
        table: dict | None = None,
        skipped: str | None = None,
        ranks: dict[str, list[int]] | None = None,
    ):
        """Records a finished method's per-market table and per-user test ranks ({market:
        ranks of its test users, in order}), or why it was skipped."""
        if skipped is not None:
            self.progress["skipped"][method] = skipped
        else:
            self.progress["methods"][method] = table
            if ranks is not None:
                self.progress["ranks"][method] = ranks
        if self.enabled:
            self._write_progress()

    def finished_run(self):
        self.progress["done"] = True
        if self.enabled:
            self._write_progress()

    def close(self):
        for phase in self.phases.values():
            phase.close()
