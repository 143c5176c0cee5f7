"""The side-by-side comparison layout: pretrained | finetuned, axial and coronal, ground truth outlined in all four.

:func:`layout_xml` is a Slicer layout description (register it with the layout node, then switch to it; the
application's layout manager, or trame-slicer's view factory, creates the four slice views). Once the views'
slice nodes exist, :func:`show_comparison` links them, puts the CT in each, and says which segmentation display
node shows in which view.
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer

from VistaFinetuneLib.errors import UserError

LAYOUT_ID = 1510  # a custom layout id, clear of Slicer's built-in ones
VIEW_GROUP = 1


@dataclass(frozen=True)
class ComparisonView:
    """One slice view of the comparison."""

    name: str
    model: str
    orientation: str
    label: str
    color: str


VIEWS = (
    ComparisonView("VistaPretrainedAxial", "pretrained", "Axial", "Pretrained axial", "#F34A33"),
    ComparisonView("VistaFinetunedAxial", "finetuned", "Axial", "Finetuned axial", "#F34A33"),
    ComparisonView("VistaPretrainedCoronal", "pretrained", "Coronal", "Pretrained coronal", "#6DAD4A"),
    ComparisonView("VistaFinetunedCoronal", "finetuned", "Coronal", "Finetuned coronal", "#6DAD4A"),
)


def view_xml(view: ComparisonView) -> str:
    """One ``<view>`` element of the layout."""
    properties = {"orientation": view.orientation, "viewlabel": view.label, "viewcolor": view.color,
                  "viewgroup": str(VIEW_GROUP)}  # fmt: skip
    text = "".join(f'<property name="{k}" action="default">{v}</property>' for k, v in properties.items())
    return f'<view class="vtkMRMLSliceNode" singletontag="{view.name}">{text}</view>'


def layout_xml() -> str:
    """Two rows (axial, coronal) of two views (pretrained left, finetuned right)."""
    rows = []
    for orientation in ("Axial", "Coronal"):
        items = "".join(f"<item>{view_xml(v)}</item>" for v in VIEWS if v.orientation == orientation)
        rows.append(f'<item><layout type="horizontal">{items}</layout></item>')
    return f'<layout type="vertical">{"".join(rows)}</layout>'


def register_layout(layout_node: slicer.vtkMRMLLayoutNode) -> int:
    """Add the description to the layout node (once); return its id for ``SetViewArrangement``."""
    if not layout_node.IsLayoutDescription(LAYOUT_ID):
        layout_node.AddLayoutDescription(LAYOUT_ID, layout_xml())
    return LAYOUT_ID


def _node_by_layout_name(scene: slicer.vtkMRMLScene, class_name: str, layout_name: str):
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetLayoutName() == layout_name:
            return node
    return None


def show_comparison(
    volume: slicer.vtkMRMLScalarVolumeNode,
    ground_truth: slicer.vtkMRMLSegmentationNode | None,
    predictions: dict[str, slicer.vtkMRMLSegmentationNode],
) -> dict[str, list[str]]:
    """Link the four views, show ``volume`` in each and assign the display nodes; return view names per node."""
    scene = volume.GetScene()
    slice_nodes = {}
    for view in VIEWS:
        slice_node = _node_by_layout_name(scene, "vtkMRMLSliceNode", view.name)
        composite = _node_by_layout_name(scene, "vtkMRMLSliceCompositeNode", view.name)
        if slice_node is None or composite is None:
            raise UserError(f'slice view "{view.name}" does not exist yet; switch to the comparison layout first')
        slice_node.SetOrientation(view.orientation)
        slice_node.SetViewGroup(VIEW_GROUP)
        composite.SetBackgroundVolumeID(volume.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
        slice_nodes[view.name] = slice_node
    shown: dict[str, list[str]] = {}
    for model, segmentation in predictions.items():
        names = [v.name for v in VIEWS if v.model == model]
        _show_in(segmentation, [slice_nodes[n] for n in names], fill=True)
        shown[segmentation.GetName()] = names
    if ground_truth is not None:
        _show_in(ground_truth, list(slice_nodes.values()), fill=False)
        shown[ground_truth.GetName()] = [v.name for v in VIEWS]
    return shown


def _show_in(segmentation: slicer.vtkMRMLSegmentationNode, views: list, fill: bool) -> None:
    """Show the segmentation only in ``views``: filled (a prediction) or outlined (the ground truth)."""
    if segmentation.GetDisplayNode() is None:
        segmentation.CreateDefaultDisplayNodes()
    display = segmentation.GetDisplayNode()
    display.SetViewNodeIDs([view.GetID() for view in views])
    display.SetVisibility(True)
    display.SetVisibility2DFill(fill)
    display.SetVisibility2DOutline(True)
    display.SetOpacity2DFill(0.6)
