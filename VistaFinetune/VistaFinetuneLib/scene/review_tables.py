"""The review in the scene: metric and confusion table nodes from ``review/metrics.json``, training-curve plots
from ``status.json``."""

from __future__ import annotations

import math
from pathlib import Path

import slicer
import vtk

from VistaFinetuneLib.run_files import read_user_json

MODELS = ("pretrained", "finetuned")
METRIC_COLUMNS = (("Dice", "dice_mean"), ("HD95 (mm)", "hd95_mm_mean"), ("NSD", "nsd_mean"))


def fill_table(table_node: slicer.vtkMRMLTableNode, columns: dict[str, list]) -> None:
    """Replace the node's content: one column per entry, strings for text, doubles (NaN = missing) otherwise."""
    table = vtk.vtkTable()
    for title, values in columns.items():
        text = any(isinstance(v, str) for v in values)
        column = vtk.vtkStringArray() if text else vtk.vtkDoubleArray()
        column.SetName(title)
        for value in values:
            if text:
                column.InsertNextValue("" if value is None else str(value))
            else:
                column.InsertNextValue(math.nan if value is None else float(value))
        table.AddColumn(column)
    table_node.SetAndObserveTable(table)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def metrics_columns(document: dict) -> dict[str, list]:
    """Per class: Dice, HD95 and NSD of each model and finetuned - pretrained, from the review's summary."""
    summary = {(row["class"], row["model"]): row for row in document["summary"] if row["model"] in MODELS}
    classes = list(dict.fromkeys(cls for cls, _ in summary))
    columns: dict[str, list] = {"Class": classes}
    for title, key in METRIC_COLUMNS:
        pre = [summary.get((c, "pretrained"), {}).get(key) for c in classes]
        fine = [summary.get((c, "finetuned"), {}).get(key) for c in classes]
        columns[f"{title} pretrained"] = pre
        columns[f"{title} finetuned"] = fine
        columns[f"{title} difference"] = [_difference(a, b) for a, b in zip(pre, fine, strict=True)]
    return columns


def confusion_columns(document: dict, class_names: dict[int, str]) -> dict[str, list] | None:
    """One row per model and ground-truth class: the share of its voxels labelled as each class (0 = background)."""
    confusion = document.get("confusion")
    if not confusion:
        return None
    labelled = sorted({int(k) for shares in confusion.values() for row in shares.values() for k in row})
    labelled = [c for c in labelled if c != 0] + [0]

    def title(class_id: int) -> str:
        return "background" if class_id == 0 else f"{class_id} {class_names.get(class_id, '')}".strip()

    columns: dict[str, list] = {"Model": [], "Ground truth": []}
    columns.update({f"labelled {title(c)}": [] for c in labelled})
    for model, shares in confusion.items():
        for truth, row in sorted(shares.items(), key=lambda item: int(item[0])):
            columns["Model"].append(model)
            columns["Ground truth"].append(title(int(truth)))
            for c in labelled:
                columns[f"labelled {title(c)}"].append(row.get(str(c), 0.0))
    return columns


def review_tables(
    scene: slicer.vtkMRMLScene, metrics_json: Path, class_names: dict[int, str], name: str = "VistaFinetune review"
) -> dict[str, slicer.vtkMRMLTableNode]:
    """Table nodes ``{"metrics": ..., "confusion": ...}`` (confusion only when the review computed it)."""
    document = read_user_json(Path(metrics_json), "review metrics")
    tables = {"metrics": scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name}: metrics per class")}
    fill_table(tables["metrics"], metrics_columns(document))
    confusion = confusion_columns(document, class_names)
    if confusion is not None:
        tables["confusion"] = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name}: confusion between classes")
        fill_table(tables["confusion"], confusion)
    return tables


class TrainingCurves:
    """Loss and validation Dice plot series, fed with ``status.json`` states as the run goes."""

    def __init__(self, scene: slicer.vtkMRMLScene, name: str = "VistaFinetune training") -> None:
        self.loss_table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name}: loss")
        self.dice_table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name}: validation Dice")
        self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name}: curves")
        self.chart.SetTitle("Training loss and validation Dice")
        self.chart.SetXAxisTitle("epoch")
        self.series = {}
        for key, table, y_column, colour in (
            ("loss", self.loss_table, "loss", (0.85, 0.3, 0.1)),
            ("dice", self.dice_table, "validation Dice", (0.1, 0.4, 0.85)),
        ):
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name}: {y_column}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(y_column)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetColor(*colour)
            self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series[key] = series
        self.loss: list[tuple[float, float]] = []
        self.update({})

    def update(self, status: dict) -> None:
        """Add the state's loss (at fractional epoch ``epoch - 1 + iteration / iterations``) and its Dice list."""
        epoch, iteration = status.get("epoch"), status.get("iteration")
        per_epoch, loss = status.get("iterations_per_epoch"), status.get("loss")
        if None not in (epoch, iteration, per_epoch, loss) and per_epoch:
            x = epoch - 1 + iteration / per_epoch
            if not self.loss or x > self.loss[-1][0]:
                self.loss.append((x, float(loss)))
        fill_table(self.loss_table, {"epoch": [x for x, _ in self.loss], "loss": [y for _, y in self.loss]})
        dice = status.get("val_dice_per_epoch") or []
        fill_table(self.dice_table, {"epoch": list(range(1, len(dice) + 1)), "validation Dice": dice})

    def update_from_file(self, status_json: Path) -> None:
        """Read ``status.json`` (rewritten atomically by the run) and update."""
        self.update(read_user_json(Path(status_json), "run status"))
