"""Where the real VISTA3D bundles come from: download one (pinned, checksummed) and describe a bundle folder.

``vista3d`` is the MONAI model-zoo bundle from NGC's monaihosting (what monai 1.4.0's ``monai.bundle.download``
fetches); ``nv-segment-ct`` / ``nv-segment-ctmr`` are Hugging Face snapshots of NVIDIA's repos, whose weights
``vista3d_pretrained_model/model.pt`` are staged to ``models/model.pt`` as the bundle configs expect.
A download goes to a hidden sibling folder and is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.bundle.variant import identify_variant
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import read_user_json

WEIGHTS = "models/model.pt"
HF_WEIGHTS = "vista3d_pretrained_model/model.pt"
CONFIGS = {
    "train": "configs/train.json",
    "train_continual": "configs/train_continual.json",
    "evaluate": "configs/evaluate.json",
    "inference": "configs/inference.json",
    "multi_gpu_train": "configs/multi_gpu_train.json",
    "mgpu_evaluate": "configs/mgpu_evaluate.json",
    "metadata": "configs/metadata.json",
    "label_dict": "configs/label_dict.json",
}
# monai 1.4.0's monaihosting model_info lists vista3d 0.4.1..0.5.4 (later versions moved to Hugging Face).
VISTA3D_NGC_RANGE = ("0.4.1", "0.5.4")


@dataclass(frozen=True)
class BundleSource:
    """A downloadable bundle: where it is hosted and the version (or git revision) pinned by default."""

    name: str
    host: str  # "monaihosting" or "huggingface"
    repo: str  # monai bundle name or Hugging Face repo id
    default_version: str  # a version, commit or (unpinned) branch

    def describe(self, version: str) -> str:
        if self.host == "monaihosting":
            return "monaihosting (NGC)"
        return f"huggingface.co/{self.repo}@{version}"


SOURCES = {
    "vista3d": BundleSource("vista3d", "monaihosting", "vista3d", "0.5.4"),
    # The revision the nv-segment-ct-finetune skill pins.
    "nv-segment-ct": BundleSource(
        "nv-segment-ct", "huggingface", "nvidia/NV-Segment-CT", "afb51518689f71e6abb367ee6301b2cd0225c66a"
    ),
    # No revision known to pin: the moving main branch, recorded as unpinned.
    "nv-segment-ctmr": BundleSource("nv-segment-ctmr", "huggingface", "nvidia/NV-Segment-CTMR", "main"),
}
# SHA-256 of models/model.pt per (name, version); a download whose weights differ from a listed value is refused.
# None are known yet: each download records what it got in download.json.
KNOWN_SHA256: dict[tuple[str, str], str] = {}


def is_pinned(source: BundleSource, version: str) -> bool:
    """A monaihosting version is immutable; on Hugging Face only a full commit hash is."""
    return source.host == "monaihosting" or re.fullmatch(r"[0-9a-f]{40}", version) is not None


def _in_ngc_range(version: str) -> bool:
    def key(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    try:
        return key(VISTA3D_NGC_RANGE[0]) <= key(version) <= key(VISTA3D_NGC_RANGE[1])
    except ValueError:
        return False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exception types a failed download raises (urllib, monai, huggingface_hub and its HTTP clients)."""
    errors: list[type[BaseException]] = [OSError, RuntimeError, ValueError, zipfile.BadZipFile, TimeoutError]
    for module, attribute in (("requests", "RequestException"), ("httpx", "HTTPError"), ("httpx", "TimeoutException")):
        try:
            errors.append(getattr(__import__(module), attribute))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _not_found(error: BaseException) -> bool:
    """True for an HTTP 404 / unknown repo or revision (a wrong version, not a network problem)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    remote = {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError"}
    if names & remote and "LocalEntryNotFoundError" not in names:  # the local one means offline
        return True
    return getattr(error, "code", None) == 404 or getattr(getattr(error, "response", None), "status_code", 0) == 404


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _download_monaihosting(source: BundleSource, version: str, work: Path, log: Callable[[str], None]) -> Path:
    import monai.bundle

    monai.bundle.download(name=source.repo, version=version, bundle_dir=str(work), source="monaihosting")
    bundle = work / source.repo
    if not bundle.is_dir():  # the archive's base folder has another name
        folders = [p for p in work.iterdir() if p.is_dir()]
        if len(folders) != 1:
            raise UserError(f"{source.repo} {version}: the downloaded archive holds no single bundle folder")
        bundle = folders[0]
    if not (bundle / WEIGHTS).is_file():
        _download_large_files(bundle, log)
    for archive in work.glob("*.zip"):
        archive.unlink()
    return bundle


def _download_large_files(bundle: Path, log: Callable[[str], None]) -> None:
    """Fetch what a model-zoo bundle lists in ``large_files.yml`` (its weights), checking each listed hash."""
    candidates = (bundle / "large_files.yml", bundle / "configs" / "large_files.yml")
    listing = next((p for p in candidates if p.is_file()), None)
    if listing is None:
        return
    import yaml
    from monai.apps.utils import download_url

    for entry in (yaml.safe_load(listing.read_text()) or {}).get("large_files", []):
        log(f"downloading {entry['url']} -> {entry['path']}")
        download_url(
            url=entry["url"],
            filepath=bundle / entry["path"],
            hash_val=entry.get("hash_val") or None,
            hash_type=entry.get("hash_type") or "md5",
        )


def _download_huggingface(source: BundleSource, version: str, work: Path) -> Path:
    import huggingface_hub

    bundle = work / source.name
    huggingface_hub.snapshot_download(repo_id=source.repo, revision=version, local_dir=str(bundle))
    return bundle


def _stage(bundle: Path) -> list[str]:
    """Put a Hugging Face snapshot's weights and metadata where the bundle configs look (hard link, else copy)."""
    staged = []
    for target, origin in ((WEIGHTS, HF_WEIGHTS), (CONFIGS["metadata"], "metadata.json")):
        if not (bundle / target).is_file() and (bundle / origin).is_file():
            (bundle / target).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(bundle / origin, bundle / target)
            except OSError:
                shutil.copy2(bundle / origin, bundle / target)
            staged.append(f"{origin} -> {target}")
    return staged


def download_bundle(name: str, dest_dir: Path, version: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Download bundle ``name`` into ``dest_dir/<name>``, write its download.json, and return the folder."""
    if name not in SOURCES:
        raise UserError(f"unknown bundle {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    version = version or source.default_version
    dest_dir = Path(dest_dir).absolute()
    final = dest_dir / name
    if final.exists():
        raise UserError(f"{final}: already exists; remove it or choose another --dir")
    if source.host == "monaihosting" and not _in_ngc_range(version):
        log(f"note: monai 1.4.0's monaihosting lists vista3d {VISTA3D_NGC_RANGE[0]} to {VISTA3D_NGC_RANGE[1]} only")
    if not is_pinned(source, version):
        log(f"note: {source.repo}@{version} is a moving branch, not a pinned revision; download.json records it")
    where = source.describe(version)
    created_dest = not dest_dir.exists()
    dest_dir.mkdir(parents=True, exist_ok=True)
    work = dest_dir / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        log(f"downloading {name} {version} from {where} ...")
        try:
            if source.host == "monaihosting":
                bundle = _download_monaihosting(source, version, work, log)
            else:
                bundle = _download_huggingface(source, version, work)
        except _network_errors() as error:
            if _not_found(error):
                raise UserError(
                    f"cannot download {name} {version} from {where}: not found ({_reason(error)}); check --version"
                ) from None
            raise UserError(
                f"cannot download {name} {version} from {where}: {_reason(error)}; you are offline or the host is "
                "unreachable — download it elsewhere and pass --bundle-dir"
            ) from None
        staged = _stage(bundle)
        if not (bundle / WEIGHTS).is_file():
            raise UserError(f"{name} {version} from {where}: the download holds no {WEIGHTS} or {HF_WEIGHTS}")
        log(f"checksumming {WEIGHTS} ...")
        digest = sha256_file(bundle / WEIGHTS)
        expected = KNOWN_SHA256.get((name, version))
        if expected is not None and digest != expected:
            raise UserError(
                f"{name} {version} from {where}: {WEIGHTS} has SHA-256 {digest}, expected {expected}; "
                "the download is corrupt or the file changed upstream; nothing was kept"
            )
        record = {
            "name": name,
            "version": version,
            "source": where,
            "repo": source.repo,
            "pinned": is_pinned(source, version),
            "sha256": digest,
            "sha256_expected": expected,
            "staged": staged,
            "files": sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()),
        }
        (bundle / "download.json").write_text(json.dumps(record, indent=2) + "\n")
        bundle.rename(final)
    except BaseException:
        if created_dest:
            shutil.rmtree(dest_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def bundle_info(bundle_dir: Path) -> dict:
    """Describe a bundle folder without writing to it: configs, weights checksum, label table, monai, CTMR."""
    bundle = Path(bundle_dir).absolute()
    if not (bundle / "configs").is_dir():
        problem = "does not exist" if not bundle.exists() else "has no configs/ folder"
        raise UserError(f"{bundle}: not a MONAI bundle folder (it {problem})")
    meta_path = bundle / CONFIGS["metadata"]
    meta = read_user_json(meta_path, "bundle metadata") if meta_path.is_file() else {}
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: not a JSON object")
    weights = next((bundle / p for p in (WEIGHTS, HF_WEIGHTS) if (bundle / p).is_file()), None)
    variant = identify_variant(bundle)
    try:
        catalog = LabelCatalog.from_bundle(bundle)
        labels = {
            "source": catalog.source,
            "classes": len(catalog.classes),
            "deprecated": [c.id for c in catalog.classes.values() if c.deprecated],
            "free_ids": catalog.free_ids(),
            "free_ids_text": catalog.free_ids_text(),
            "notes": catalog.notes,
            "error": None,
        }
    except UserError as error:
        labels = {"source": None, "classes": 0, "deprecated": [], "free_ids": [], "free_ids_text": None,
                  "notes": [], "error": str(error)}  # fmt: skip
    try:
        installed = metadata.version("monai")
    except metadata.PackageNotFoundError:
        installed = None
    download = bundle / "download.json"
    return {
        "path": str(bundle),
        "name": meta.get("name"),
        "version": meta.get("version"),
        "configs": {key: (bundle / path).is_file() for key, path in CONFIGS.items()},
        "weights": None
        if weights is None
        else {
            "path": weights.relative_to(bundle).as_posix(),
            "size_bytes": weights.stat().st_size,
            "sha256": sha256_file(weights),
        },
        "labels": labels,
        "monai_version": {"required": meta.get("monai_version"), "installed": installed},
        "variant": variant.to_json(),
        "ctmr": variant.family.name == "CT+MR",
        "image_key_needed": variant.image_key_needed,
        "download": read_user_json(download, "download record") if download.is_file() else None,
    }


def format_info(info: dict) -> list[str]:
    """The lines ``vista-finetune bundle info`` prints."""
    present = [k for k, ok in info["configs"].items() if ok]
    missing = [k for k, ok in info["configs"].items() if not ok]
    weights = info["weights"]
    labels = info["labels"]
    monai_v = info["monai_version"]
    lines = [
        f"bundle       {info['path']}",
        f"name         {info['name'] or '(no configs/metadata.json name)'} version {info['version'] or 'unknown'}",
        f"configs      {', '.join(present) or 'none'}" + (f" (missing: {', '.join(missing)})" if missing else ""),
        "weights      missing (models/model.pt)"
        if weights is None
        else f"weights      {weights['path']} {weights['size_bytes'] / 1e6:.1f} MB sha256 {weights['sha256']}",
        f"labels       {labels['classes']} classes from {labels['source']}"
        if labels["error"] is None
        else f"labels       none: {labels['error']}",
        f"monai        required {monai_v['required'] or 'unstated'}, installed {monai_v['installed'] or 'none'}",
    ]
    lines += _variant_lines(info)
    download = info["download"]
    if download:
        pin = "pinned" if download.get("pinned") else "UNPINNED (moving branch)"
        lines.append(f"download     {download.get('source')} {download.get('version')} ({pin})")
    return lines


def _variant_lines(info: dict) -> list[str]:
    """What ``bundle info`` says about the variant, the label table it resolves names against, and free ids."""
    variant, labels = info["variant"], info["labels"]
    lines = [f"variant      {variant['title']}: {variant['model_classes']} {variant['family']} classes, because"]
    lines += [f"               - {reason}" for reason in variant["reasons"]]
    if labels["error"] is None:
        lines.append(f"free ids     {labels['free_ids_text']}")
        if labels["deprecated"]:
            lines.append(f"deprecated   {', '.join(map(str, labels['deprecated']))} (never suggested)")
    if variant["modalities"]:
        lines.append(
            f"modality     {' | '.join(variant['modalities'])} (inference.json default {variant['default_modality']})"
        )
    needed = "needed: train.json/evaluate.json use @image_key without defining it" if info["image_key_needed"] else "no"
    lines.append(f"image_key    {needed}")
    return lines
