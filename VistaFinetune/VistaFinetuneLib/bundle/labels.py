"""The VISTA3D label table: class ids and names read from a bundle, and free text resolved to one class id."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import read_user_json

MAX_ID = 254  # 255 is the bundle's NaN/ignore value; new structures may use any free id up to this
MIN_SUGGEST_SCORE = 0.5
_DEPRECATED = re.compile(r"\s*\(deprecated\)\s*$", re.IGNORECASE)
_SEPARATORS = re.compile(r"[_\-.,/()]+")
# Whole-token abbreviations and spellings, applied to the table's names and to the user's text alike.
_TOKEN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "l": ("left",),
    "lt": ("left",),
    "r": ("right",),
    "rt": ("right",),
    "tumour": ("tumor",),
    "oesophagus": ("esophagus",),
    "ivc": ("inferior", "vena", "cava"),
    "svc": ("superior", "vena", "cava"),
    "vertebra": ("vertebrae",),
    "clavicle": ("clavicula",),
}
_PHRASE_SYNONYMS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("urinary", "bladder"): ("bladder",),
    ("gall", "bladder"): ("gallbladder",),
    ("small", "intestine"): ("small", "bowel"),
}


@lru_cache(maxsize=4096)
def normalise(text: str) -> tuple[str, ...]:
    """The sorted tokens of a name: lower case, no " (deprecated)", separators as spaces, synonyms expanded."""
    words = _SEPARATORS.sub(" ", _DEPRECATED.sub("", text.strip()).lower()).split()
    tokens: list[str] = []
    for word in words:
        tokens.extend(_TOKEN_SYNONYMS.get(word, (word,)))
    for phrase, replacement in _PHRASE_SYNONYMS.items():
        size = len(phrase)
        index = 0
        while index + size <= len(tokens):
            if tuple(tokens[index : index + size]) == phrase:
                tokens[index : index + size] = replacement
            index += 1
    return tuple(sorted(tokens))


def _similarity(query: tuple[str, ...], name: tuple[str, ...]) -> float:
    """A score in [0, 1]: the better of the string similarity and the (typo-tolerant) token overlap."""
    if not query or not name:
        return 0.0
    ratio = difflib.SequenceMatcher(None, " ".join(query), " ".join(name)).ratio()
    matched = 0.0
    for token in query:
        best = max(difflib.SequenceMatcher(None, token, other).ratio() for other in name)
        matched += best if best >= 0.8 else 0.0
    return max(ratio, matched / max(len(query), len(name)))


def _channel_def_from_names(table: Any, path: Path) -> dict[str, str]:
    """``{name: id}`` or ``{name: {"index": id, ...}}`` turned into ``{"id": name}``."""
    if not isinstance(table, dict):
        raise UserError(f"{path}: expected a JSON object of class name -> id")
    channel_def: dict[str, str] = {}
    for name, value in table.items():
        class_id = value.get("index") if isinstance(value, dict) else value
        if not isinstance(class_id, int) or isinstance(class_id, bool):
            raise UserError(f"{path}: class {name!r} has no integer id (got {value!r})")
        if str(class_id) in channel_def:
            raise UserError(f"{path}: id {class_id} is given to both {channel_def[str(class_id)]!r} and {name!r}")
        channel_def[str(class_id)] = name
    return channel_def


@dataclass(frozen=True)
class LabelClass:
    """One entry of the label table."""

    id: int
    name: str
    deprecated: bool

    def __str__(self) -> str:
        return f"{self.id}: {self.name}" + (" (deprecated)" if self.deprecated else "")


@dataclass(frozen=True)
class LabelCatalog:
    """The label table of a bundle (background excluded) and the file it came from."""

    classes: dict[int, LabelClass]
    source: str

    @classmethod
    def from_bundle(cls, bundle_dir: Path) -> LabelCatalog:
        """Read the table from metadata.json's channel_def, else configs/label_dict.json, else docs/labels.json."""
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise UserError(f"{bundle_dir}: the bundle folder does not exist")
        metadata = bundle_dir / "configs" / "metadata.json"
        if metadata.is_file():
            node: Any = read_user_json(metadata, "label table")
            for key in ("network_data_format", "outputs", "pred", "channel_def"):
                node = node.get(key) if isinstance(node, dict) else None
            if node is not None:
                return cls.from_channel_def(node, str(metadata))
        for path in (bundle_dir / "configs" / "label_dict.json", bundle_dir / "docs" / "labels.json"):
            if path.is_file():
                return cls.from_channel_def(
                    _channel_def_from_names(read_user_json(path, "label table"), path), str(path)
                )
        raise UserError(
            f"{bundle_dir}: no label table found in the bundle folder (looked for the channel_def in "
            "configs/metadata.json, then configs/label_dict.json and docs/labels.json)"
        )

    @classmethod
    def from_channel_def(cls, channel_def: dict[str, str], source: str) -> LabelCatalog:
        """Build from ``{"0": "background", "1": "liver", ...}``; names may end in " (deprecated)"."""
        if not isinstance(channel_def, dict):
            raise UserError(f"{source}: the label table is not a JSON object of id -> name")
        classes: dict[int, LabelClass] = {}
        for key, raw_name in channel_def.items():
            if not str(key).strip().isdigit() or not isinstance(raw_name, str) or not raw_name.strip():
                raise UserError(f"{source}: bad label table entry {key!r}: {raw_name!r}")
            class_id = int(key)
            if class_id == 0:
                continue
            name = _DEPRECATED.sub("", raw_name).strip()
            classes[class_id] = LabelClass(class_id, name, name != raw_name.strip())
        if not classes:
            raise UserError(f"{source}: the label table has no classes")
        return cls(dict(sorted(classes.items())), source)

    def name(self, class_id: int) -> str:
        """The class's name, "background" for 0, or a note that the id is not in the table."""
        if class_id in self.classes:
            return self.classes[class_id].name
        return "background" if class_id == 0 else f"class {class_id} (not in the table)"

    def search(self, query: str) -> list[LabelClass]:
        """Every class whose normalised name contains all the query's tokens (all classes for an empty query)."""
        wanted = Counter(normalise(query))
        return [c for c in self.classes.values() if not wanted - Counter(normalise(c.name))]

    def suggest(self, text: str, limit: int = 5) -> list[tuple[LabelClass, float]]:
        """The classes most like ``text``, best first, each with a score in [0, 1]."""
        query = normalise(text)
        if text.strip().isdigit() and int(text) in self.classes:
            return [(self.classes[int(text)], 1.0)][:limit]
        scored = [(c, round(_similarity(query, normalise(c.name)), 4)) for c in self.classes.values()]
        scored = [pair for pair in scored if pair[1] >= MIN_SUGGEST_SCORE]
        scored.sort(key=lambda pair: (-pair[1], pair[0].deprecated, pair[0].id))
        return scored[:limit]

    def resolve(self, text: str) -> int:
        """The one class id meant by a name (any case, order, separators, abbreviations) or a number."""
        stripped = text.strip()
        if stripped.isdigit():
            if int(stripped) in self.classes:
                return int(stripped)
            raise UserError(f"class id {int(stripped)} is not in the label table {self.source}")
        query = normalise(stripped)
        if not query:
            raise UserError("empty class name; give a class name or id from the label table")
        exact = [c for c in self.classes.values() if normalise(c.name) == query]
        current = [c for c in exact if not c.deprecated] or exact
        if len(current) == 1:
            return current[0].id
        if current:
            listed = ", ".join(str(c) for c in current[:5])
            raise UserError(
                f'ambiguous class "{stripped}": {len(current)} classes have this name ({listed}); use the id'
            )
        containing = self.search(stripped)
        if len(containing) > 1:
            rank = {c.id: score for c, score in self.suggest(stripped, limit=len(self.classes))}
            containing.sort(key=lambda c: (-rank.get(c.id, 0.0), c.deprecated, c.id))
            listed = ", ".join(str(c) for c in containing[:5])
            raise UserError(
                f'ambiguous class "{stripped}": {len(containing)} classes in {self.source} contain it, '
                f"e.g. {listed}; give the full name or the id"
            )
        candidates = containing or [c for c, _ in self.suggest(stripped)]
        hint = f"did you mean {', '.join(str(c) for c in candidates[:5])}?" if candidates else "no similar names"
        raise UserError(f'unknown class "{stripped}": not a class name in {self.source}; {hint}')

    def free_ids(self) -> list[int]:
        """Ids 1..254 that the table does not use (where new structures may be mapped)."""
        return [i for i in range(1, MAX_ID + 1) if i not in self.classes]
