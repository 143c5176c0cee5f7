"""The model-zoo ``vista3d`` (up to 0.5.8) ``scripts/inferer.py`` that drops every class prompt above the point
head's ``last_supported`` (132): its ``Vista3dInferer`` sets ``class_vector = None`` whenever a class id exceeds
it, without asking whether points were given, so a new class (133+) comes out empty and scores Dice 0.
NV-Segment-CT (0.5.9 "fix finetuning bug") drops it only for zero-shot point prompts.

Read from the source text (``ast``), never imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

from VistaFinetuneLib.errors import UserError

LAST_SUPPORTED = 132
INFERER = "scripts/inferer.py"
FIX = (
    "use the NV-Segment-CT bundle (vista-finetune bundle download nv-segment-ct) or model-zoo vista3d 0.5.9 or "
    "newer, whose inferer keeps class prompts above 132"
)
POINT_NAMES = frozenset({"point_labels", "point_coords"})


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _drops_class_vector(node: ast.If) -> bool:
    """``if ... class_vector > ...last_supported ...: class_vector = None``."""
    compares = "class_vector" in _names(node.test) and any(
        isinstance(n, ast.Attribute) and n.attr == "last_supported" for n in ast.walk(node.test)
    )
    clears = any(
        isinstance(s, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "class_vector" for t in s.targets)
        and isinstance(s.value, ast.Constant)
        and s.value.value is None
        for s in node.body
    )
    return compares and clears


def _point_names(tree: ast.AST) -> set[str]:
    """The point prompts' names and the names computed from them (``has_points = point_labels is not None``)."""
    names = set(POINT_NAMES)
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)]
    for _ in range(3):
        for node in assigns:
            if names & _names(node.value):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names - {"class_vector"}


def _unconditional_drop(node: ast.AST, points: set[str], guarded: bool) -> bool:
    """Whether some class-vector drop under ``node`` is reached without a test on the point prompts."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If):
            on_points = guarded or bool(points & _names(child.test))
            if _drops_class_vector(child) and not on_points:
                return True
            if _unconditional_drop(child, points, on_points):
                return True
        elif _unconditional_drop(child, points, guarded):
            return True
    return False


def drops_new_class_prompts(bundle_dir: Path) -> bool:
    """Whether the bundle's ``scripts/inferer.py`` is the old one that drops class prompts above 132."""
    path = Path(bundle_dir) / INFERER
    if not path.is_file():
        return False
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return False
    return _unconditional_drop(tree, _point_names(tree), False)


def check_new_ids(bundle_dir: Path, class_ids: list[int] | tuple[int, ...], what: str) -> None:
    """Refuse new ids (above 132) on a bundle whose inferer drops them; ``what`` says where they come from."""
    new = sorted({i for i in class_ids if i > LAST_SUPPORTED})
    if new and drops_new_class_prompts(bundle_dir):
        raise UserError(
            f"{Path(bundle_dir) / INFERER}: this inferer (model-zoo vista3d up to 0.5.8) drops class prompts above "
            f"{LAST_SUPPORTED}, so {what} {new} would come out empty and score Dice 0; {FIX}"
        )
