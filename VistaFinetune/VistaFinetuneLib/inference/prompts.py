"""Prompts for a prediction: class names or ids resolved to VISTA3D ids, points checked and turned into voxel indices,
and the bundle's prompt rules applied before the bundle sees them (so each mistake gets one clear message).

No torch here: this runs in the worker, the CLI and (for checking what the user typed) anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from VistaFinetuneLib.bundle.labels import MAX_ID, LabelCatalog, normalise
from VistaFinetuneLib.data.geometry import ras_to_ijk
from VistaFinetuneLib.errors import UserError

# The bundle's subclass parents (kidney, lung, bone): a class prompt for one of them is expanded to its parts.
SUBCLASS_PARENTS = {2: "kidney", 20: "lung", 21: "bone"}
# Ids the upstream evaluator accepts as class prompts without points (1..132 minus the legacy ones).
UPSTREAM_CLASS_PROMPT_IDS = frozenset(range(1, 133)) - {16, 18, 129, 130, 131}
POINTS_ONLY_VALUE = 1  # what the bundle writes for a prompt of points without a class
POINT_LABELS = (0, 1)  # negative, positive
POINT_SPACES = ("ras", "ijk")


@dataclass(frozen=True)
class ClassTable:
    """The classes a model can be asked for: the bundle's table, a finetuned run's ids, and names the user gave."""

    catalog: LabelCatalog
    finetuned_ids: tuple[int, ...] = ()
    user_names: dict[int, str] = field(default_factory=dict)

    def name(self, class_id: int) -> str:
        """The user's name for the class, else the bundle's, else "class N"."""
        if class_id in self.user_names:
            return self.user_names[class_id]
        if class_id in self.catalog.classes:
            return self.catalog.classes[class_id].name
        return f"class {class_id}"

    def resolve(self, text: str | int) -> int:
        """One class id for an id or a name (the user's names first, then the bundle's table)."""
        if isinstance(text, bool) or not isinstance(text, (int, str)):
            raise UserError(f"class {text!r}: give a class id or name")
        stripped = str(text).strip()
        if stripped.isdigit():
            class_id = int(stripped)
            highest = max(MAX_ID, *self.catalog.classes)  # NV-Segment-CTMR's classes run to 345
            if not 1 <= class_id <= highest:
                raise UserError(f"class {class_id}: VISTA3D class ids run from 1 to {highest}")
            if class_id not in self.catalog.classes and class_id not in self.finetuned_ids:
                raise UserError(
                    f"class {class_id} is neither in the label table {self.catalog.source} nor a class of this "
                    f"finetuned model{self._finetuned_hint()}"
                )
            return class_id
        wanted = normalise(stripped)
        named = sorted(i for i, name in self.user_names.items() if normalise(name) == wanted)
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            listed = ", ".join(f"{i}: {self.user_names[i]}" for i in named)
            raise UserError(f'ambiguous class "{stripped}": the names you gave match {listed}; use the id')
        try:
            return self.catalog.resolve(stripped)
        except UserError as error:
            if self.user_names:
                given = ", ".join(f"{i}: {n}" for i, n in sorted(self.user_names.items()))
                raise UserError(f"{error} (your class names: {given})") from None
            raise

    def _finetuned_hint(self) -> str:
        return f" (its classes: {', '.join(map(str, self.finetuned_ids))})" if self.finetuned_ids else ""


@dataclass(frozen=True)
class ImageGrid:
    """The voxel grid of the input image file: its shape and voxel-to-RAS affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray


@dataclass(frozen=True)
class Prompts:
    """What the bundle is asked: class ids (None: points only), points as voxel indices of the image file, labels."""

    class_ids: list[int] | None
    points_ijk: list[list[float]] | None
    point_labels: list[int] | None
    everything: bool = False

    def to_json(self) -> dict:
        return {
            "classes": self.class_ids,
            "points_ijk": self.points_ijk,
            "point_labels": self.point_labels,
            "everything": self.everything,
        }


def parse_points(points: object, point_labels: object) -> tuple[np.ndarray, list[int]]:
    """Check ``[[x, y, z], ...]`` and ``[1, 0, ...]`` (same length, labels 0/1); return them as arrays."""
    if not isinstance(points, list) or not points:
        raise UserError("points: expected a non-empty list of [x, y, z] coordinates")
    for point in points:
        if (
            not isinstance(point, list)
            or len(point) != 3
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and np.isfinite(c) for c in point)
        ):
            raise UserError(f"points: {point!r} is not an [x, y, z] triple of numbers")
    if not isinstance(point_labels, list):
        raise UserError("point labels: expected a list of 1 (positive) and 0 (negative), one per point")
    if len(point_labels) != len(points):
        raise UserError(
            f"{len(points)} point(s) but {len(point_labels)} point label(s): give one label (1 positive, 0 negative) "
            "per point"
        )
    for label in point_labels:
        if isinstance(label, bool) or label not in POINT_LABELS:
            raise UserError(f"point label {label!r}: use 1 for a positive and 0 for a negative point")
    return np.asarray(points, dtype=np.float64), [int(x) for x in point_labels]


def points_to_ijk(points: np.ndarray, space: str, grid: ImageGrid, image: Path) -> np.ndarray:
    """Voxel indices of the points (RAS millimetres go through the image's affine); each must lie in the image."""
    if space not in POINT_SPACES:
        raise UserError(f"points space {space!r}: use 'ras' (millimetres) or 'ijk' (voxel indices)")
    ijk = ras_to_ijk(grid.affine, points) if space == "ras" else points
    upper = np.asarray(grid.shape, dtype=np.float64) - 0.5
    for original, index in zip(points, ijk, strict=True):
        if np.any(index < -0.5) or np.any(index >= upper):
            where = f"RAS {np.round(original, 2).tolist()} mm is voxel" if space == "ras" else "voxel"
            raise UserError(
                f"{image}: point {where} {np.round(index, 2).tolist()}, outside the image "
                f"({'x'.join(map(str, grid.shape))} voxels)"
            )
    return ijk


def build_prompts(
    table: ClassTable,
    grid: ImageGrid,
    image: Path,
    classes: list[str | int] | None = None,
    points: object = None,
    point_labels: object = None,
    points_space: str = "ras",
    everything: bool = False,
    everything_ids: list[int] | None = None,
    expand_subclasses: bool = True,
) -> Prompts:
    """Resolve and check the prompts of one prediction, applying the bundle's rules."""
    if (points is None) != (point_labels is None):
        raise UserError("points and point labels go together: give both or neither")
    if everything and (classes or points is not None):
        raise UserError("--everything segments the bundle's whole class list; it takes no classes or points")
    if everything:
        ids = sorted(set(everything_ids or []) | set(table.finetuned_ids))
        if not ids:
            raise UserError("this bundle has no everything list (everything_labels); give classes")
        return Prompts(ids, None, None, everything=True)
    class_ids = None
    if classes:
        class_ids = []
        for text in classes:
            class_id = table.resolve(text)
            if class_id not in class_ids:
                class_ids.append(class_id)
    if points is None:
        if not class_ids:
            raise UserError("nothing to segment: give classes, points, or --everything")
        return Prompts(class_ids, None, None)
    coordinates, labels = parse_points(points, point_labels)
    if class_ids is not None and len(class_ids) > 1:
        raise UserError(
            f"points prompt one object: give at most one class with them (got {len(class_ids)}: {class_ids})"
        )
    if class_ids and expand_subclasses and class_ids[0] in SUBCLASS_PARENTS:
        parent = class_ids[0]
        raise UserError(
            f"class {parent} ({SUBCLASS_PARENTS[parent]}) is segmented as its parts and cannot be combined with "
            "points; click with one of its parts (e.g. 'left kidney') or use the class prompt alone"
        )
    if not class_ids and 1 not in labels:
        raise UserError("points without a class need at least one positive point (label 1)")
    ijk = points_to_ijk(coordinates, points_space, grid, image)
    return Prompts(class_ids, ijk.round(4).tolist(), labels)
