"""Small file helpers shared by every layer: atomic writes and JSON of numpy/torch values.

They sit at the bottom of the package (no flatminima imports), so that the run store, the landscape
database of :mod:`flatminima.explore` and the reports all write files the same way: to a temporary name,
flushed and fsynced, then renamed over the target, so a killed process never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def to_json(obj: Any) -> str:
    """JSON with numpy/torch scalars and arrays converted to plain Python numbers and lists."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "item"):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(obj, default=default, sort_keys=True, allow_nan=True)
