"""Point prompts from clicks in a slice view: display position -> world RAS -> the source volume's voxel index,
and the markers that show them.

A slice view's display position (x, y in pixels, origin bottom-left, as VTK's interactor reports it) maps to RAS
through the slice node's XYToRAS; RAS maps to the voxel grid through the volume's IJK-to-RAS and its parent transform
(``volume_grid.volume_world_affine`` and ``data.geometry.ras_to_ijk``, the project's one world<->voxel conversion).
"""

from __future__ import annotations

import numpy as np
import slicer

from VistaFinetuneLib.data.geometry import ijk_to_ras, ras_to_ijk
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.interactive.point_session import PointPrompt
from VistaFinetuneLib.scene.volume_grid import volume_shape, volume_world_affine

POSITIVE_COLOR = (0.2, 0.9, 0.2)
NEGATIVE_COLOR = (0.95, 0.2, 0.2)
MARKER_NAMES = {True: "VISTA3D positive points", False: "VISTA3D negative points"}


def slice_xy_to_ras(slice_node: slicer.vtkMRMLSliceNode, xy: tuple[float, float]) -> np.ndarray:
    """World RAS of a display position in a slice view."""
    ras = [0.0, 0.0, 0.0]
    slicer.vtkSlicerSegmentEditorLogic.XyToRas([float(xy[0]), float(xy[1])], ras, slice_node)
    return np.asarray(ras)


def ras_to_voxel(volume_node: slicer.vtkMRMLScalarVolumeNode, ras: np.ndarray) -> tuple[int, int, int]:
    """The voxel of ``volume_node`` that holds a world RAS point; a UserError when it is outside the volume."""
    fractional = ras_to_ijk(volume_world_affine(volume_node), np.asarray(ras, dtype=np.float64))
    ijk = tuple(int(v) for v in np.floor(fractional + 0.5))
    shape = volume_shape(volume_node)
    if any(not 0 <= index < size for index, size in zip(ijk, shape, strict=True)):
        raise UserError(
            f"the click at RAS ({ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f}) mm is outside volume "
            f"'{volume_node.GetName()}' (voxel {ijk}, grid {shape}); click inside the image"
        )
    return ijk


def click_to_prompt(
    slice_node: slicer.vtkMRMLSliceNode, xy: tuple[float, float], volume_node: slicer.vtkMRMLScalarVolumeNode,
    positive: bool,
) -> PointPrompt:  # fmt: skip
    """The point prompt of a click at display position ``xy`` in the view of ``slice_node``."""
    ijk = ras_to_voxel(volume_node, slice_xy_to_ras(slice_node, xy))
    centre = ijk_to_ras(volume_world_affine(volume_node), np.asarray(ijk, dtype=np.float64))
    return PointPrompt(ijk, tuple(float(v) for v in centre), positive)


class PromptMarkers:
    """Two locked point-list nodes that show the positive (green) and negative (red) clicks in world RAS.

    Slicer's Markups logic makes every markups node added to the scene the active place list; the user's own
    choice is put back after each marker node is added, and again when the markers are removed.
    """

    def __init__(self, scene: slicer.vtkMRMLScene) -> None:
        self.scene = scene
        self.nodes: dict[bool, slicer.vtkMRMLMarkupsFiducialNode] = {}
        self.users_place_node_id: str | None = None

    def _selection(self):
        return self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")

    def _restore_place_node(self) -> None:
        selection = self._selection()
        ours = {node.GetID() for node in self.nodes.values()}
        if selection is not None and selection.GetActivePlaceNodeID() in ours:
            wanted = self.users_place_node_id
            selection.SetActivePlaceNodeID(wanted if wanted and self.scene.GetNodeByID(wanted) else None)

    def node(self, positive: bool) -> slicer.vtkMRMLMarkupsFiducialNode:
        """The marker node for one polarity, created on first use (again if the user deleted it)."""
        node = self.nodes.get(positive)
        if node is not None and self.scene.IsNodePresent(node):
            return node
        node = slicer.vtkMRMLMarkupsFiducialNode()
        node.SetName(MARKER_NAMES[positive])
        node.SetLocked(True)
        node.SetHideFromEditors(False)
        node.SetSaveWithScene(False)
        selection = self._selection()
        if selection is not None and selection.GetActivePlaceNodeID() not in {n.GetID() for n in self.nodes.values()}:
            self.users_place_node_id = selection.GetActivePlaceNodeID()
        self.scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
            display.SetSelectedColor(*color)
            display.SetColor(*color)
            display.SetPointLabelsVisibility(False)
        self.nodes[positive] = node
        self._restore_place_node()
        return node

    def show(self, points: list[PointPrompt]) -> None:
        """Show exactly these points."""
        for positive in (True, False):
            node = self.node(positive)
            wanted = [p.ras for p in points if p.positive == positive]
            was_modifying = node.StartModify()
            node.RemoveAllControlPoints()
            for ras in wanted:
                node.AddControlPointWorld(*ras)
            node.EndModify(was_modifying)

    def remove(self) -> None:
        """Remove the marker nodes from the scene; the user's active place list is active again."""
        self._restore_place_node()
        for node in self.nodes.values():
            if self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)
        self.nodes.clear()
