"""The config overrides a model is built with: the ``--config-override`` files a run was trained and scored with
(read from its ``run.json`` ``config_stacks``), and those given to ``predict``/``serve`` now.

A run's training stack is ``train.json``, ``train_continual.json`` (``multi_gpu_train.json``), the run's own staged
files in ``RUN_DIR/configs/`` and, last, the user's overrides. The user's files are what inference needs too (a
network they changed must be built the same way); the bundle's configs and the staged files (dataset, checkpoint
folder, plan) are training matters. No torch here.
"""

from __future__ import annotations

from pathlib import Path

from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import read_user_json


def user_overrides_of_run(record: dict, run_dir: Path, bundle_dir: Path, run_json: Path) -> tuple[Path, ...]:
    """The user's override files of a run's recorded training stack (each must still exist)."""
    stack = (record.get("config_stacks") or {}).get("train") or []
    if not isinstance(stack, list) or not all(isinstance(p, str) for p in stack):
        raise UserError(f"{run_json}: config_stacks.train is not a list of config file paths")
    staged = (run_dir / "configs").absolute()
    bundle_configs = (bundle_dir / "configs").absolute()
    recorded = (record.get("bundle") or {}).get("path")
    skipped = {staged, bundle_configs} | ({(Path(recorded) / "configs").absolute()} if recorded else set())
    user = tuple(Path(p) for p in stack if Path(p).absolute().parent not in skipped)
    missing = [str(p) for p in user if not p.is_file()]
    if missing:
        raise UserError(
            f"{run_json}: the run was trained with the config override {missing[0]}, which no longer exists; "
            "put it back (the model is built as the run was trained)"
        )
    return user


def check_override_files(paths: list[Path]) -> tuple[Path, ...]:
    """``--config-override`` files given now: each must be a JSON object."""
    checked = []
    for path in paths:
        path = Path(path).absolute()
        if not path.is_file():
            raise UserError(f"{path}: --config-override file not found")
        if not isinstance(read_user_json(path, "config override"), dict):
            raise UserError(f"{path}: a config override must be a JSON object of config keys")
        checked.append(path)
    return tuple(checked)


def applicable_overrides(config_files: list[Path], files: tuple[Path, ...]) -> dict:
    """The entries of ``files`` that apply on top of ``config_files`` (see :func:`apply_overrides`), as one
    override mapping for a ``monai.bundle run`` command line."""
    if not files:
        return {}
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in config_files])
    applied: dict = {}
    apply_overrides(parser, files, applied)
    return applied


def apply_overrides(parser, files: tuple[Path, ...], applied: dict | None = None) -> list[str]:
    """Stack override files on a parsed inference config, key by key as ``monai.bundle`` does; keys whose parent the
    inference config lacks (``train#...``) concern training only and are skipped. Returns the skipped keys; the
    entries set go into ``applied`` when given."""
    skipped = []
    for path in files:
        for key, value in read_user_json(path, "config override").items():
            if key.startswith("+"):  # monai.bundle's append: a list is extended, a dict updated
                key, current = key[1:], parser.get(key[1:])
                if isinstance(current, list):
                    value = current + list(value)
                elif isinstance(current, dict):
                    value = current | dict(value)
            parent = key.rsplit("#", 1)[0] if "#" in key else None
            if parent is not None and parser.get(parent) is None:
                skipped.append(key)
                continue
            parser[key] = value
            if applied is not None:
                applied[key] = value
    return skipped
