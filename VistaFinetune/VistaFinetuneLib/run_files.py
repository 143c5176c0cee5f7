"""JSON files: those of a run directory, written atomically for readers in other processes, and JSON the
user or a bundle supplies, read with an error that names the file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from VistaFinetuneLib.errors import UserError


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, sort_keys=False)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json_atomic`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_user_json(path: Path, what: str = "JSON") -> Any:
    """Parse a JSON file the user or a bundle supplies; a :class:`UserError` names the file when that fails."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read the {what} ({error})") from None
