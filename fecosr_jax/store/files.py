"""Writing run outputs to a local folder or an object store (gs://) through etils.epath.

Nothing is ever half-written: a local file is written to a temporary name and renamed; an
object store writes each object atomically (gs:// needs `pip install gcsfs`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import tempfile

from etils import epath

from fecosr_jax.errors import BadInput

REMOTE_PREFIXES = ("gs://", "s3://")


def is_remote(path) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def read_json(path):
    """A run's JSON file (results.json, training.json, ...); one that does not parse is a
    BadInput naming it (this module writes files whole, so something else cut it)."""
    path = epath.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: not readable JSON ({e}); is the run's file complete?") from e


def json_float(x) -> float | None:
    """A JSON-safe rounded float (None for None, NaN or Inf)."""
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def write_json_atomic(path, obj) -> None:
    """`obj` as indented JSON with sorted keys (results.json, config.json, ...)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path, data: bytes) -> None:
    """Writes `data` to `path` whole or not at all: a local file goes to a temporary file of
    its own in the same folder (two processes writing one path do not clash), then is
    renamed over `path`."""
    path = epath.Path(path)
    if is_remote(path):
        path.write_bytes(data)
        return
    fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a result file is not
        os.replace(tmp, os.fspath(path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def move_aside(path) -> str | None:
    """Renames a local folder to PATH.moved-<UTC time> (never deletes it); the new name, or
    None if there was nothing there."""
    path = epath.Path(path)
    if is_remote(path):
        raise BadInput(f"--overwrite: {path} is on an object store; move it aside yourself")
    if not path.exists() or not any(path.iterdir()):
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    target = path.parent / f"{path.name}.moved-{stamp}"
    path.rename(target)
    return str(target)
