"""The VISTA3D label table of the model a bundle holds, and free text resolved to one of its class ids.

Names are compared as sorted word lists after normalising case, separators, plurals, British spellings,
left/right abbreviations, ordinals and "of"/"the" phrasing (:func:`normalise`). A name resolves only when
exactly one class fits: the same words, one part of an "X and Y" name, or the same words but for a qualifier
such as "gland" (:data:`NAME_QUALIFIERS`, :data:`TEXT_QUALIFIERS`). Generic words alone ("Tumor", "lesion",
"vessel": :data:`GENERIC_WORDS`) are refused with the classes they could mean. Deprecated classes (refused by the
bundle's inference as class prompts) are never chosen: their supported counterpart is, where there is exactly one.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from VistaFinetuneLib.bundle.variant import Family, Variant, identify_variant
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import read_user_json

MAX_ID = 254  # 255 is the bundle's NaN/ignore value and training labels are 8-bit
MIN_SUGGEST_SCORE = 0.5
_DEPRECATED = re.compile(r"\s*\(deprecated\)\s*$", re.IGNORECASE)
_SEPARATORS = re.compile(r"[_\-.,;:/()]+")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
# Whole-word abbreviations and British spellings, applied to the table's names and to the user's text alike.
_WORD_SYNONYMS: dict[str, tuple[str, ...]] = {
    "l": ("left",),
    "lt": ("left",),
    "r": ("right",),
    "rt": ("right",),
    "tumour": ("tumor",),
    "oesophagus": ("esophagus",),
    "oesophageal": ("esophageal",),
    "caecum": ("cecum",),
    "haemorrhage": ("hemorrhage",),
    "oedema": ("edema",),
    "ivc": ("inferior", "vein", "cava"),
    "svc": ("superior", "vein", "cava"),
    "clavicle": ("clavicula",),
    "vena": ("vein",),
}
_IRREGULAR_PLURALS = {"vertebrae": "vertebra", "testes": "testis"}
_PHRASE_SYNONYMS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("urinary", "bladder"): ("bladder",),
    ("gall", "bladder"): ("gallbladder",),
    ("small", "intestine"): ("small", "bowel"),
    ("large", "intestine"): ("colon",),
    ("large", "bowel"): ("colon",),
}
_STOP_WORDS = frozenset({"of", "the", "and", "or"})
_SIDES = frozenset({"left", "right"})
NAME_QUALIFIERS = frozenset({"gland", "lung", "vertebra", "muscle"})  # a class name's words the text may omit
TEXT_QUALIFIERS = frozenset({"gland", "muscle", "bone", "organ", "structure"})  # words the text may add
# Generic words (no one structure): a text made only of them is refused with the classes it could mean (those whose
# name holds a related word), unless a class has exactly that name ("bone" is class 21, "muscles" a CT+MR class).
_TUMOR_WORDS = frozenset({"tumor", "mass", "lesion", "cancer", "neoplasm", "nodule", "metastasis", "primary"})
_VESSEL_WORDS = frozenset({"vessel", "artery", "vein", "aorta", "cava", "trunk"})
_BONE_WORDS = frozenset(
    {"bone", "rib", "vertebra", "femur", "humerus", "scapula", "clavicula", "sternum", "sacrum", "skull", "hip"}
)
_MUSCLE_WORDS = frozenset({"muscle", "gluteus", "autochthon", "iliopsoas"})
GENERIC_WORDS: dict[str, frozenset[str]] = {
    **dict.fromkeys(("tumor", "mass", "lesion", "cancer", "neoplasm", "nodule", "metastasis", "growth"), _TUMOR_WORDS),
    "cyst": frozenset({"cyst"}),
    **dict.fromkeys(("vessel", "vasculature"), _VESSEL_WORDS),
    **dict.fromkeys(("bone", "skeleton"), _BONE_WORDS),
    "muscle": _MUSCLE_WORDS,
}
_GENERIC_FILLERS = frozenset({"structure", "organ", "blood"})
MAX_GENERIC_CANDIDATES = 8
# Deprecated class -> its supported counterparts (by name); a counterpart is offered when it shares a word with
# what the user typed, so "uterus" is not answered with "prostate".
COUNTERPARTS: dict[str, tuple[str, ...]] = {
    "liver tumor": ("hepatic tumor",),
    "kidney mass": ("left kidney cyst", "right kidney cyst"),
    "prostate or uterus": ("prostate",),
    "ascending aorta": ("aorta",),
}


def _singular(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is", "as")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    """The normalised words of a name in their order (stop words kept, so "X and Y" can be split)."""
    text = _ORDINAL.sub(r"\1", _DEPRECATED.sub("", text.strip()).lower())
    words: list[str] = []
    for word in _SEPARATORS.sub(" ", text).split():
        synonyms = _WORD_SYNONYMS.get(word) or _WORD_SYNONYMS.get(_singular(word), (word,))
        words.extend(_singular(w) for w in synonyms)
    for phrase, replacement in _PHRASE_SYNONYMS.items():
        index = 0
        while index + len(phrase) <= len(words):
            if tuple(words[index : index + len(phrase)]) == phrase:
                words[index : index + len(phrase)] = replacement
            index += 1
    return words


@lru_cache(maxsize=8192)
def normalise(text: str) -> tuple[str, ...]:
    """The sorted words of a name: lower case, separators as spaces, synonyms, singulars, no "of"/"the"/"and"."""
    return tuple(sorted(w for w in _words(text) if w not in _STOP_WORDS))


@lru_cache(maxsize=8192)
def name_keys(name: str) -> frozenset[tuple[str, ...]]:
    """The word lists a class name answers to: the whole name and each part of an "X and Y" / "X or Y" name."""
    words = _words(name)
    parts: list[list[str]] = [[]]
    for word in words:
        if word in ("and", "or"):
            parts.append([])
        else:
            parts[-1].append(word)
    keys = {normalise(name)}
    if len(parts) > 1:
        keys.update(tuple(sorted(w for w in part if w not in _STOP_WORDS)) for part in parts if part)
    return frozenset(keys)


def _fits_but_for_qualifiers(query: tuple[str, ...], name: tuple[str, ...]) -> bool:
    """The same words but for qualifiers: the name may have one the text omits ("thyroid" for "thyroid gland"),
    the text one the name lacks ("left hip bone"); the text must keep a word that is neither side nor qualifier."""
    text_words, name_words = set(query), set(name)
    core = text_words - _SIDES - TEXT_QUALIFIERS - NAME_QUALIFIERS
    return (
        bool(core)
        and (name_words - text_words) <= NAME_QUALIFIERS
        and (text_words - name_words) <= TEXT_QUALIFIERS
        and name_words != text_words
    )


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


def _metadata_channel_def(path: Path) -> Any:
    node: Any = read_user_json(path, "label table")
    for key in ("network_data_format", "outputs", "pred", "channel_def"):
        node = node.get(key) if isinstance(node, dict) else None
    return node


@dataclass(frozen=True)
class LabelClass:
    """One entry of the label table."""

    id: int
    name: str
    deprecated: bool

    def __str__(self) -> str:
        return f"{self.id}: {self.name}" + (" (deprecated)" if self.deprecated else "")


@dataclass(frozen=True)
class Resolution:
    """A name resolved to one class, and a note when it was not the obvious one."""

    text: str
    id: int
    name: str
    note: str | None = None

    def to_json(self) -> dict:
        return {"text": self.text, "id": self.id, "name": self.name, "note": self.note}


class ResolveError(UserError):
    """A name that resolves to no single class; ``candidates`` are the classes it could mean (maybe none)."""

    def __init__(self, message: str, text: str, candidates: list[LabelClass]) -> None:
        super().__init__(message)
        self.text = text
        self.candidates = candidates

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "id": None,
            "error": str(self),
            "candidates": [{"id": c.id, "name": c.name} for c in self.candidates],
        }


@dataclass(frozen=True)
class LabelCatalog:
    """The label table of a bundle's model (background excluded), the file it came from, and the model's family."""

    classes: dict[int, LabelClass]
    source: str
    family: Family | None = None
    variant: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_bundle(cls, bundle_dir: Path) -> LabelCatalog:
        """The table of the model the bundle holds: the metadata's channel_def, else configs/label_dict.json, else
        docs/labels.json; for a CT model only ids 1..132 (NV-Segment-CT's metadata lists the CT+MR table)."""
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise UserError(f"{bundle_dir}: the bundle folder does not exist")
        variant = identify_variant(bundle_dir)
        metadata = bundle_dir / "configs" / "metadata.json"
        channel_def = _metadata_channel_def(metadata) if metadata.is_file() else None
        source = metadata
        if channel_def is None:
            for path in (bundle_dir / "configs" / "label_dict.json", bundle_dir / "docs" / "labels.json"):
                if path.is_file():
                    channel_def = _channel_def_from_names(read_user_json(path, "label table"), path)
                    source = path
                    break
        if channel_def is None:
            raise UserError(
                f"{bundle_dir}: no label table found in the bundle folder (looked for the channel_def in "
                "configs/metadata.json, then configs/label_dict.json and docs/labels.json)"
            )
        return cls.from_channel_def(channel_def, str(source), variant)

    @classmethod
    def from_channel_def(cls, channel_def: dict[str, str], source: str, variant: Variant | None = None) -> LabelCatalog:
        """Build from ``{"0": "background", "1": "liver", ...}``; names may end in " (deprecated)". With a
        ``variant``, only the ids its model knows are kept and its deprecated ids are marked."""
        if not isinstance(channel_def, dict):
            raise UserError(f"{source}: the label table is not a JSON object of id -> name")
        family = variant.family if variant is not None else None
        classes: dict[int, LabelClass] = {}
        for key, raw_name in channel_def.items():
            if not str(key).strip().isdigit() or not isinstance(raw_name, str) or not raw_name.strip():
                raise UserError(f"{source}: bad label table entry {key!r}: {raw_name!r}")
            class_id = int(key)
            if class_id == 0:
                continue
            name = _DEPRECATED.sub("", raw_name).strip()
            deprecated = name != raw_name.strip() or (family is not None and class_id in family.deprecated)
            classes[class_id] = LabelClass(class_id, name, deprecated)
        if not classes:
            raise UserError(f"{source}: the label table has no classes")
        notes = []
        if family is not None and max(classes) > family.model_classes:
            listed = len(classes)
            classes = {i: c for i, c in classes.items() if i <= family.model_classes}
            notes.append(
                f"{source} lists {listed} classes; the {variant.title} model has {family.model_classes} "
                f"{family.name} classes, so only ids 1..{family.model_classes} are used"
            )
        return cls(dict(sorted(classes.items())), source, family, variant.title if variant else None, notes)

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
        """The supported classes most like ``text``, best first, each with a score in [0, 1]."""
        query = normalise(text)
        if text.strip().isdigit() and int(text) in self.classes and not self.classes[int(text)].deprecated:
            return [(self.classes[int(text)], 1.0)][:limit]
        scored = [
            (c, round(_similarity(query, normalise(c.name)), 4)) for c in self.classes.values() if not c.deprecated
        ]
        scored = [pair for pair in scored if pair[1] >= MIN_SUGGEST_SCORE]
        scored.sort(key=lambda pair: (-pair[1], pair[0].id))
        return scored[:limit]

    def resolve(self, text: str) -> int:
        """The one class id meant by a name (any case, order, separators, abbreviations) or a number."""
        return self.resolve_name(text).id

    def resolve_name(self, text: str) -> Resolution:
        """Like :meth:`resolve`, with the class name and a note (e.g. why a deprecated name became another id);
        raises :class:`ResolveError` with the candidates when no single class fits."""
        stripped = text.strip()
        if stripped.isdigit():
            return self._resolve_number(stripped)
        query = normalise(stripped)
        if not query:
            raise ResolveError("empty class name; give a class name or id from the label table", stripped, [])
        self._refuse_generic(stripped, query)
        for fits in (
            [c for c in self.classes.values() if query in name_keys(c.name)],
            [c for c in self.classes.values() if _fits_but_for_qualifiers(query, normalise(c.name))],
        ):
            if fits:
                return self._choose(stripped, fits)
        core = Counter(w for w in query if w not in TEXT_QUALIFIERS) or Counter(query)
        containing = [c for c in self.classes.values() if not core - Counter(normalise(c.name))]
        supported = [c for c in containing if not c.deprecated]
        if len(supported) > 1:
            rank = {c.id: score for c, score in self.suggest(stripped, limit=len(self.classes))}
            supported.sort(key=lambda c: (-rank.get(c.id, 0.0), c.id))
            listed = ", ".join(str(c) for c in supported[:5])
            raise ResolveError(
                f'ambiguous class "{stripped}": {len(supported)} classes in {self.source} contain it, '
                f"e.g. {listed}; give the full name or the id",
                stripped,
                supported[:5],
            )
        if containing and not supported:
            return self._choose(stripped, containing)
        candidates = supported or [c for c, _ in self.suggest(stripped)]
        hint = f"did you mean {', '.join(str(c) for c in candidates[:5])}?" if candidates else "no similar names"
        raise ResolveError(
            f'unknown class "{stripped}": not a class name in {self.source}; {hint}', stripped, candidates[:5]
        )

    def _refuse_generic(self, text: str, query: tuple[str, ...]) -> None:
        """Raise :class:`ResolveError` with the candidates when the text is only generic words ("Tumor", "lesion",
        "vessel") and no class is named exactly so."""
        words = set(query) - _GENERIC_FILLERS
        if not words or not words <= set(GENERIC_WORDS):
            return
        if any(normalise(c.name) == query for c in self.classes.values()):
            return
        related = frozenset().union(*(GENERIC_WORDS[w] for w in words))
        candidates = [c for c in self.classes.values() if not c.deprecated and related & set(normalise(c.name))]
        shown = candidates[:MAX_GENERIC_CANDIDATES]
        listed = ", ".join(str(c) for c in shown)
        more = f" and {len(candidates) - len(shown)} more" if len(candidates) > len(shown) else ""
        which = f"it could mean {listed}{more}" if candidates else f"no class of {self.source} is one"
        raise ResolveError(
            f'generic class "{text}": it names no one structure; {which}; give the full name or the id',
            text,
            shown,
        )

    def _resolve_number(self, text: str) -> Resolution:
        class_id = int(text)
        if class_id not in self.classes:
            raise ResolveError(f"class id {class_id} is not in the label table {self.source}", text, [])
        chosen = self.classes[class_id]
        if chosen.deprecated:
            counterparts = self.counterparts(chosen)
            instead = f"; use {', '.join(str(c) for c in counterparts)}" if counterparts else ""
            raise ResolveError(f"class id {class_id}: {self._deprecation(chosen)}{instead}", text, counterparts)
        return Resolution(text, class_id, chosen.name, self._prompt_note(chosen))

    def _choose(self, text: str, fits: list[LabelClass]) -> Resolution:
        """One class among those that fit: the supported one, or a deprecated one's supported counterpart."""
        supported = [c for c in fits if not c.deprecated]
        if len(supported) == 1:
            return Resolution(text, supported[0].id, supported[0].name, self._prompt_note(supported[0]))
        if supported:
            listed = ", ".join(str(c) for c in supported[:5])
            raise ResolveError(
                f'ambiguous class "{text}": {len(supported)} classes fit ({listed}); use the full name or the id',
                text,
                supported[:5],
            )
        words = set(normalise(text)) - _SIDES
        offered = {c.id: c for d in fits for c in self.counterparts(d) if words & set(normalise(c.name))}
        why = "; ".join(self._deprecation(d) for d in fits)
        if len(offered) == 1:
            (counterpart,) = offered.values()
            note = f"{why}; resolved to its supported counterpart {counterpart}"
            return Resolution(text, counterpart.id, counterpart.name, note)
        if offered:
            listed = ", ".join(str(c) for c in offered.values())
            raise ResolveError(f'"{text}": {why}; supported candidates: {listed}; give one of their ids', text,
                               list(offered.values()))  # fmt: skip
        raise ResolveError(
            f'"{text}": {why}; no supported class of this model replaces it, so it can only be taught as a new '
            f"structure on a free id ({self.free_ids_text()})",
            text,
            [],
        )

    def counterparts(self, deprecated: LabelClass) -> list[LabelClass]:
        """The supported classes that replace a deprecated one (by name, see :data:`COUNTERPARTS`)."""
        wanted = {normalise(n) for n in COUNTERPARTS.get(" ".join(_words(deprecated.name)), ())}
        return [c for c in self.classes.values() if not c.deprecated and normalise(c.name) in wanted]

    def _deprecation(self, deprecated: LabelClass) -> str:
        model = self.variant or "the bundle"
        if self.family is not None and deprecated.id in self.family.refused_prompts:
            return (
                f"{deprecated.id} {deprecated.name!r} is deprecated in {model} "
                "(its inference refuses it as a class prompt)"
            )
        if self.family is not None and deprecated.id in self.family.deprecated:
            return (
                f"{deprecated.id} {deprecated.name!r} is a deprecated VISTA3D CT class (NV-Segment-CT marks it so "
                "and the real bundles' inference refuses it as a class prompt)"
            )
        return f"{deprecated.id} {deprecated.name!r} is marked deprecated in {self.source}"

    def _prompt_note(self, chosen: LabelClass) -> str | None:
        if self.family is not None and chosen.id in self.family.refused_prompts:
            return (
                f"{chosen}: the stock inference.json of {self.variant} refuses {chosen.id} as a class prompt "
                "without points"
            )
        return None

    def free_ids(self) -> list[int]:
        """Ids up to 254 that neither the table nor the model's own classes use (where new structures may go)."""
        known = self.family.model_classes if self.family is not None else 0
        return [i for i in range(known + 1, MAX_ID + 1) if i not in self.classes]

    def free_ids_text(self) -> str:
        """The free ids as ranges, or why there are none."""
        runs: list[list[int]] = []
        for class_id in self.free_ids():
            if runs and class_id == runs[-1][-1] + 1:
                runs[-1].append(class_id)
            else:
                runs.append([class_id])
        if runs:
            return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
        known = self.family.model_classes if self.family is not None else max(self.classes)
        return (
            f"none: the {self.variant or 'bundle'} model's classes use every id 1..{known} and training labels "
            f"are 8-bit (ids up to {MAX_ID}; 255 means 'not processed'), so no id is left for a new structure"
        )
