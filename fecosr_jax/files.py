"""Writing run outputs to a local folder or an object store (gs://) through etils.epath.

Nothing is ever half-written: a local file is written to a temporary name and renamed; an
object store writes each object atomically (gs:// needs `pip install gcsfs`).
"""

from __future__ import annotations

import datetime

from etils import epath

from fecosr_jax.errors import BadInput

REMOTE_PREFIXES = ("gs://", "s3://")


def is_remote(path) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def write_bytes_atomic(path, data: bytes) -> None:
    path = epath.Path(path)
    if is_remote(path):
        path.write_bytes(data)
        return
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)


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
