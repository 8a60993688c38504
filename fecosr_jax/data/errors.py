"""The one error type of the data layer: it names the file, line and field to fix."""

from __future__ import annotations

import os

from fecosr_jax.errors import BadInput


class DataError(BadInput):
    """Bad input data. The message says where (file, line, field) and what is wrong."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join([*where, message]) if where else message)
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
