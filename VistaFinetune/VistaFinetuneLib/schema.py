"""The JSON Schema of output.json, shipped in ``Resources/output_schema.json``."""

from __future__ import annotations

import json

from VistaFinetuneLib.resources import RESOURCES

SCHEMA_PATH = RESOURCES / "output_schema.json"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def schema_errors(document: dict) -> list[str]:
    """Every way ``document`` breaks the schema, as 'path: message' lines (empty when valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def validate_output(document: dict) -> None:
    """Raise ValueError listing every schema violation."""
    errors = schema_errors(document)
    if errors:
        raise ValueError("output.json does not match its schema:\n" + "\n".join(errors))
