"""Which VISTA3D bundle a folder holds, told from its configs and names rather than its metadata's channel count.

NV-Segment-CT 0.6.0's ``configs/metadata.json`` lists the 345-class CT+MR table although its model has the
132 CT classes (its ``label_dict.json`` has CT names); only NV-Segment-CTMR's ``inference.json`` chooses the
classes by ``modality`` (CT_BODY, MRI_BODY, MRI_BRAIN). So the variant is decided by, strongest first: the
modality choice its inference configuration really uses, the form of ``label_dict.json``, the files only one
variant ships (``docs/labels.json``, ``configs/label_mappings.json``), then the bundle's names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from VistaFinetuneLib.resources import RESOURCES
from VistaFinetuneLib.run_files import read_user_json

CT_CLASSES = 132  # VISTA3D CT ids 1..132
CTMR_CLASSES = 345  # NV-Segment-CTMR ids 1..345
# Ids the bundle's inference refuses as class prompts without points (scripts/evaluator.py check_prompts_format).
CT_REFUSED_PROMPTS = frozenset({16, 18, 129, 130, 131})
CTMR_REFUSED_PROMPTS = frozenset({16, 129, 130, 131, 133, *range(137, 146), 162})
CT_DEPRECATED = frozenset({16, 129, 130, 131})  # NV-Segment-CT marks these "(deprecated)"; model-zoo does not
MODALITY_CHOICE = re.compile(r"['\"]([A-Z][A-Z0-9_]+)['\"]\s*:")


@dataclass(frozen=True)
class Family:
    """The label space of a model: how many classes it knows and which of them are deprecated."""

    name: str
    model_classes: int
    deprecated: frozenset[int]
    refused_prompts: frozenset[int]


CT = Family("CT", CT_CLASSES, CT_DEPRECATED, CT_REFUSED_PROMPTS)
CTMR = Family("CT+MR", CTMR_CLASSES, CT_DEPRECATED, CTMR_REFUSED_PROMPTS)
TINY = Family("CT", CT_CLASSES, CT_DEPRECATED, frozenset())  # its evaluator checks only that prompts are < 255
VARIANTS = {
    "nv-segment-ct": ("NV-Segment-CT", CT),
    "nv-segment-ctmr": ("NV-Segment-CTMR", CTMR),
    "vista3d": ("MONAI model-zoo vista3d", CT),
    "tiny": ("VistaFinetune tiny reference bundle", TINY),
    "unknown": ("unrecognised VISTA3D bundle", CT),
}


@dataclass(frozen=True)
class Variant:
    """The variant found in a bundle folder, its label family, and the evidence for it."""

    key: str
    family: Family
    reasons: list[str] = field(default_factory=list)
    image_key_needed: bool = False
    modalities: list[str] = field(default_factory=list)
    default_modality: str | None = None

    @property
    def title(self) -> str:
        return VARIANTS[self.key][0]

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "family": self.family.name,
            "model_classes": self.family.model_classes,
            "reasons": list(self.reasons),
            "image_key_needed": self.image_key_needed,
            "modalities": list(self.modalities),
            "default_modality": self.default_modality,
        }


def _json(path: Path, what: str) -> Any:
    return read_user_json(path, what) if path.is_file() else None


def _channel_ids(meta: Any) -> list[int]:
    node = meta
    for key in ("network_data_format", "outputs", "pred", "channel_def"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return []
    return sorted(int(k) for k in node if str(k).strip().isdigit() and int(k) > 0)


def _modality_choice(inference: Any) -> tuple[list[str], str | None]:
    """The modality names the inference config picks classes by, and its default; ([], None) if it uses none."""
    if not isinstance(inference, dict) or "modality" not in inference:
        return [], None
    users = [key for key, value in inference.items() if key != "modality" and "@modality" in json.dumps(value)]
    if not users:
        return [], None
    choices = sorted({m for key in users for m in MODALITY_CHOICE.findall(json.dumps(inference[key]))})
    default = inference["modality"] if isinstance(inference["modality"], str) else None
    return choices or ([default] if default else []), default


def _uses_undefined_image_key(bundle: Path) -> bool:
    """True when train.json or evaluate.json refer to ``@image_key`` but train.json does not define it (CTMR)."""
    train = bundle / "configs" / "train.json"
    if not train.is_file():
        return False
    defined = isinstance(table := _json(train, "bundle config"), dict) and "image_key" in table
    texts = [p.read_text(errors="replace") for p in (train, bundle / "configs" / "evaluate.json") if p.is_file()]
    return not defined and any("@image_key" in text for text in texts)


def _tiny_name() -> str | None:
    meta = _json(RESOURCES / "TinyBundle" / "configs" / "metadata.json", "tiny bundle metadata")
    return meta.get("name") if isinstance(meta, dict) else None


def _name_hint(names: list[str]) -> str | None:
    """The variant a folder or download name points to (weak evidence)."""
    for name in names:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower())
        if "nv-segment-ctmr" in slug:
            return "nv-segment-ctmr"
        if "nv-segment-ct" in slug:
            return "nv-segment-ct"
        if slug.strip("-").startswith("vista3d"):
            return "vista3d"
    return None


def identify_variant(bundle_dir: Path) -> Variant:
    """Tell the variant of the bundle in ``bundle_dir`` (reads only) and say why."""
    bundle = Path(bundle_dir)
    configs = bundle / "configs"
    meta = _json(configs / "metadata.json", "bundle metadata")
    meta = meta if isinstance(meta, dict) else {}
    label_dict = _json(configs / "label_dict.json", "label table")
    modalities, default = _modality_choice(_json(configs / "inference.json", "inference config"))
    download = _json(bundle / "download.json", "download record")
    names = [bundle.name] + ([str(download["name"])] if isinstance(download, dict) and download.get("name") else [])
    channel_ids = _channel_ids(meta)
    reasons: list[str] = []
    key: str | None = None

    if modalities:
        key = "nv-segment-ctmr"
        reasons.append(f"configs/inference.json chooses its classes by modality ({', '.join(modalities)})")
    elif (configs / "inference.json").is_file():
        reasons.append("configs/inference.json uses no modality choice (one CT class list)")
    if isinstance(label_dict, dict) and label_dict:
        objects = all(isinstance(v, dict) for v in label_dict.values())
        ids = [v.get("index") if isinstance(v, dict) else v for v in label_dict.values()]
        top = max((i for i in ids if isinstance(i, int)), default=0)
        if objects:
            key = key or "nv-segment-ctmr"
            reasons.append(f"configs/label_dict.json has {len(label_dict)} CT+MR entries (objects with datasets)")
        else:
            key = key or ("nv-segment-ct" if top <= CT_CLASSES else None)
            reasons.append(f"configs/label_dict.json has {len(label_dict)} names with ids up to {top}")
    if (configs / "label_mappings.json").is_file():
        key = key or "nv-segment-ctmr"
        reasons.append("configs/label_mappings.json (per-dataset CT+MR mappings) is present")
    if (bundle / "docs" / "labels.json").is_file() and not (configs / "label_dict.json").is_file():
        key = key or "vista3d"
        reasons.append("docs/labels.json instead of configs/label_dict.json (the model-zoo layout)")
    if meta.get("name") and meta.get("name") == _tiny_name():
        key = key or "tiny"
        reasons.append(f"configs/metadata.json names it {meta['name']!r}")
    hint = _name_hint(names)
    if hint is not None:
        if key is None:
            key = hint
            reasons.append(f"the name {names[-1] if len(names) > 1 else names[0]!r} says {VARIANTS[hint][0]}")
        elif hint != key:
            reasons.append(f"the name says {VARIANTS[hint][0]}, but the configs above decide")
    if key is None:
        key = "unknown"
        if channel_ids and channel_ids[-1] > CT_CLASSES:
            reasons.append(
                f"only configs/metadata.json's channel count ({len(channel_ids)} classes) suggests CT+MR; "
                "without an inference.json or label_dict.json to confirm it, the CT+MR table is used"
            )
            return _variant(bundle, key, CTMR, reasons, modalities, default)
        reasons.append("nothing identifies it; the 132-class CT table is assumed")
    family = VARIANTS[key][1]
    if channel_ids and channel_ids[-1] > family.model_classes:
        reasons.append(
            f"configs/metadata.json lists {len(channel_ids) + 1} output channels (background and ids up to "
            f"{channel_ids[-1]}), but "
            f"this model has {family.model_classes} {family.name} classes: names resolve against those"
        )
    return _variant(bundle, key, family, reasons, modalities, default)


def _variant(
    bundle: Path, key: str, family: Family, reasons: list[str], modalities: list[str], default: str | None
) -> Variant:
    return Variant(key, family, reasons, _uses_undefined_image_key(bundle), modalities, default)
