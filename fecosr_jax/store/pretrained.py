"""Pretrained models as artifacts (docs/design.md §2, "Pretrained models as artifacts").

Every run writes each pretraining it finishes to WORKDIR/pretrained/<key>/ (key: the
pretraining's name in the logs, e.g. federated_s2ce or source_s2ce@de):

  params/          the shared parameters (orbax StandardSave: no pickles)
  pretrained.json  {"format", "key", "model": the architecture (ModelConfig's fields),
                   "items": the item space a market's items enter through (text models: the
                   semantic-vector spec and dimension; item-ID models: the vocabulary),
                   "trained_on": {market: fingerprint of its split (resume.data_fingerprints)},
                   "rounds", "seed", "privacy" (each market's epsilon, DP on; else null),
                   "fingerprint" (of the parameters' bytes)}

`--config.pretrained=DIR` (local or gs://) makes a run load it instead of pretraining: the
methods that fine-tune from that pretraining start from these parameters
(fecosr_jax.runs.pretraining.Pretrainer). `check_fits` refuses, in one line, an export whose
architecture or item space does not fit the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from fecosr_jax.errors import BadInput, ConfigError
from fecosr_jax.model import ModelConfig
from fecosr_jax.store import checkpoint_layout, resume
from fecosr_jax.store.files import is_remote, write_text_atomic

FORMAT = "fecosr_jax.pretrained/1"
META = "pretrained.json"
# Model fields a run may set for itself: they change how it trains, not the parameters' shapes
# or meaning (the dropout rate, the compute dtype).
RUN_FIELDS = ("dropout", "dtype")


@dataclasses.dataclass(frozen=True)
class Export:
    """A read export: its pretrained.json (`meta`) and the folder it came from."""

    directory: str
    meta: dict

    @property
    def key(self) -> str:
        return self.meta["key"]

    def params(self, like):
        """The parameters, restored with the structure, shapes and dtypes of `like` (a model's
        initial parameters); refused (BadInput) when they differ or their bytes do not match
        the fingerprint."""
        path = _path(self.directory) / "params"
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            params = ocp.StandardCheckpointer().restore(path, target)
        except Exception as e:  # noqa: BLE001 - any failure is one line naming the folder
            raise BadInput(
                f"config.pretrained={self.directory}: its parameters do not load "
                f"({type(e).__name__}: {str(e)[:200]})"
            ) from None
        if fingerprint(params) != self.meta["fingerprint"]:
            raise BadInput(
                f"config.pretrained={self.directory}: its parameters do not match the "
                "fingerprint in pretrained.json (changed or corrupt)"
            )
        return params


def _path(directory) -> epath.Path:
    """`directory` as orbax needs it: absolute (a local path), or as given (gs://)."""
    directory = str(directory)
    return epath.Path(directory if is_remote(directory) else os.path.abspath(directory))


def fingerprint(params) -> str:
    """One BLAKE2b digest of every parameter's exact bytes (checkpoint_layout.fingerprint)."""
    leaves = ",".join(checkpoint_layout.fingerprint(params))
    return hashlib.blake2b(leaves.encode(), digest_size=16).hexdigest()


def write(directory, params, meta: dict, *, primary: bool = True) -> None:
    """Writes the export of `params` (host arrays) to `directory` with `meta`
    (pretrained.json's fields but "format" and "fingerprint"). An export already there with
    the same parameters is left as it is (a resumed run writes the same one again); the
    parameters are written before pretrained.json, which marks the export whole. In a run of
    several processes every one calls it (orbax's save is collective) and the `primary` one
    writes the files."""
    directory = _path(directory)
    meta = {"format": FORMAT, **meta, "fingerprint": fingerprint(params)}
    path = directory / META
    if path.exists() and json.loads(path.read_text()) == meta:
        return
    if primary:
        path.unlink(missing_ok=True)  # another export: replaced, pretrained.json last
        if (directory / "params").exists():
            (directory / "params").rmtree()
        directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "params", params)
    checkpointer.wait_until_finished()
    if primary:
        write_text_atomic(path, json.dumps(meta, indent=1) + "\n")


def read(directory: str) -> Export:
    """The export in `directory`; BadInput naming it when there is none or it is unreadable."""
    path = epath.Path(directory) / META
    if not path.exists():
        raise BadInput(
            f"config.pretrained={directory}: no {META} there (a run writes its pretrainings "
            "to WORKDIR/pretrained/<name>/)"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: not readable JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise BadInput(f"{path}: format {meta.get('format')!r}, this version reads {FORMAT!r}")
    return Export(str(directory), meta)


def model_fields(model: ModelConfig) -> dict[str, Any]:
    """The architecture as recorded: ModelConfig's fields but RUN_FIELDS."""
    return {k: v for k, v in dataclasses.asdict(model).items() if k not in RUN_FIELDS}


def check_fits(export: Export, model: ModelConfig, items: dict) -> None:
    """Refuses (ConfigError, one line) an export whose architecture or item space differs
    from the run's (`model`, `items`: what the run would pretrain), naming the first fields
    that differ (resume.changed_fields: nested fields by their dotted names)."""
    where = f"config.pretrained={export.directory}"
    for what, prefix, theirs, mine in (
        ("architecture", "model.", export.meta["model"], model_fields(model)),
        ("item space", "items.", export.meta["items"], items),
    ):
        changed = resume.changed_fields(theirs, json.loads(json.dumps(mine)), prefix)
        differ = [f"{k} is {a!r} there, {b!r} here" for k, (a, b) in changed.items()]
        if differ:
            raise ConfigError(f"{where}: another {what}: {'; '.join(differ[:3])}")
