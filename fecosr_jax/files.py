"""Writing run outputs to a local folder or an object store (gs://) through etils.epath.

Nothing is ever half-written: a local file is written to a temporary name and renamed; an
object store writes each object atomically (gs:// needs `pip install gcsfs`).
"""

from __future__ import annotations

from etils import epath

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
