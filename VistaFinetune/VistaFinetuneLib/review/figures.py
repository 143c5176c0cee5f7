"""Review figures of a finished run: per-case slice montages, training curves and a self-contained HTML page.

Volumes are shown in the RAS-canonical voxel order (``canonical_ras``) in radiological convention: axial with
anterior up and the patient's right on the image's left, coronal with superior up and the patient's right on
the left, sagittal with superior up and anterior on the left. matplotlib (Agg backend) is imported only inside
the functions that draw, so the engine package imports without it.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from VistaFinetuneLib.bundle.log import TrainingTrace
from VistaFinetuneLib.data.geometry import voxel_spacing_mm
from VistaFinetuneLib.review.seg_metrics import dice

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NOT_PROCESSED = 255  # prediction value for voxels the bundle did not process; never foreground
PLANES = ("axial", "coronal", "sagittal")
TRUTH_COLOUR = "#ffd000"  # yellow outline of the ground truth
PREDICTION_COLOUR = "#ff7f00"  # orange outline of a prediction
FP_COLOUR = (1.0, 0.0, 1.0)  # magenta: predicted, not in the truth
FN_COLOUR = (0.0, 1.0, 1.0)  # cyan: in the truth, not predicted
OVERLAY_ALPHA = 0.5
# Truth voxels of the shown class that a prediction gave to another class, in that class's colour (by id).
TAKEN_COLOURS = ((0.25, 0.45, 1.0), (0.1, 0.75, 0.2), (1.0, 0.25, 0.2), (0.6, 0.35, 0.95))
FIGURE_DPI = 100
MONTAGE_INCHES = (9.0, 9.0)
CURVES_INCHES = (10.0, 4.0)
# Labels at the (left, right, top, bottom) edges of each displayed plane.
PLANE_EDGES = {"axial": "RLAP", "coronal": "RLSI", "sagittal": "APSI"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def canonical_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` reordered and flipped so that its axes run towards R, A, S; and the voxel spacing (mm) then."""
    ornt = io_orientation(affine)
    voxel_mm = voxel_spacing_mm(affine)
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        spacing[int(target)] = float(voxel_mm[axis])
    return apply_orientation(array, ornt), (spacing[0], spacing[1], spacing[2])


def centroid_slices(mask: np.ndarray) -> tuple[int, int, int]:
    """Voxel indices of the centroid of ``mask`` (rounded); the volume centre when the mask is empty."""
    points = np.argwhere(mask)
    if len(points) == 0:
        return tuple(int(n - 1) // 2 for n in mask.shape)  # type: ignore[return-value]
    centre = np.rint(points.mean(axis=0)).astype(int)
    return int(centre[0]), int(centre[1]), int(centre[2])


def slice_point(truth: np.ndarray, predictions: Iterable[np.ndarray]) -> tuple[int, int, int]:
    """Where to cut: the truth's centroid, else the first non-empty prediction's, else the volume centre."""
    for mask in (truth, *predictions):
        if mask.any():
            return centroid_slices(mask)
    return centroid_slices(truth)


def display_slice(volume: np.ndarray, plane: str, point: tuple[int, int, int]) -> np.ndarray:
    """The 2D cut of a RAS-canonical ``volume`` through ``point``, row 0 at the top and column 0 at the left.

    The screen directions are Slicer's slice views' (``vtkMRMLSliceNode`` SliceToRAS presets): axial and coronal
    put the patient's right (high x: canonical indices grow towards R) on the left; sagittal puts anterior there.
    """
    x, y, z = point
    if plane == "axial":  # rows: anterior (high y) first; columns: patient right (high x) first
        return np.flipud(np.fliplr(volume[:, :, z].T))
    if plane == "coronal":  # rows: superior first; columns: patient right (high x) first
        return np.flipud(np.fliplr(volume[:, y, :].T))
    if plane == "sagittal":  # rows: superior first; columns: anterior (high y) first
        return np.flipud(np.fliplr(volume[x, :, :].T))
    raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")


def display_aspect(plane: str, spacing: tuple[float, float, float]) -> float:
    """imshow ``aspect`` (row height / column width) of a plane, from the canonical spacing (mm)."""
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def _plain_text(text: str) -> str:
    """Text matplotlib shows literally (no mathtext between dollar signs)."""
    return text.replace("$", r"\$")


def _foreground(labels: np.ndarray, class_id: int) -> np.ndarray:
    return (labels == class_id) & (labels != NOT_PROCESSED)


def taken_colour(class_id: int) -> tuple[float, float, float]:
    """The colour that marks truth voxels labelled as ``class_id`` instead of the class shown."""
    return TAKEN_COLOURS[class_id % len(TAKEN_COLOURS)]


def _dice_text(value: float | None) -> str:
    return "Dice –" if value is None else f"Dice {value:.4f}"


def montage_figure(
    image: np.ndarray,
    affine: np.ndarray,
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    class_id: int,
    title: str,
    window: tuple[float, float] = (-160.0, 240.0),
) -> Figure:
    """The figure ``case_montage`` saves (see there): a row per plane, a column for the truth and each prediction."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    for name, labels in {"truth": truth, **predictions}.items():
        if labels.shape != image.shape:
            raise ValueError(f"{name} has shape {labels.shape}, the image {image.shape}; they must share a grid")
    image_ras, spacing = canonical_ras(np.asarray(image, dtype=np.float32), affine)
    truth_ras = canonical_ras(_foreground(truth, class_id), affine)[0]
    predicted_ras = {name: canonical_ras(_foreground(p, class_id), affine)[0] for name, p in predictions.items()}
    labels_ras = {name: canonical_ras(np.where(p == NOT_PROCESSED, 0, p), affine)[0] for name, p in predictions.items()}
    taken_by: set[int] = set()
    point = slice_point(truth_ras, predicted_ras.values())

    columns: list[tuple[str, np.ndarray | None]] = [("ground truth", None), *predicted_ras.items()]
    figure = Figure(figsize=MONTAGE_INCHES, dpi=FIGURE_DPI)
    axes = figure.subplots(len(PLANES), len(columns), squeeze=False)
    figure.subplots_adjust(left=0.07, right=0.99, top=0.88, bottom=0.1, wspace=0.04, hspace=0.1)
    figure.suptitle(_plain_text(title), fontsize=12)
    for row, plane in enumerate(PLANES):
        grey = display_slice(image_ras, plane, point)
        truth_2d = display_slice(truth_ras, plane, point)
        aspect = display_aspect(plane, spacing)
        for col, (name, predicted) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(grey, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
            if predicted is None:
                shown, colour = truth_2d, TRUTH_COLOUR
                header = f"ground truth (class {class_id})"
            else:
                shown, colour = display_slice(predicted, plane, point), PREDICTION_COLOUR
                overlay = np.zeros((*shown.shape, 4))
                overlay[shown & ~truth_2d] = (*FP_COLOUR, OVERLAY_ALPHA)
                overlay[truth_2d & ~shown] = (*FN_COLOUR, OVERLAY_ALPHA)
                labels_2d = display_slice(labels_ras[name], plane, point)
                taken = truth_2d & ~shown & (labels_2d > 0)
                for other in np.unique(labels_2d[taken]).tolist():
                    overlay[taken & (labels_2d == other)] = (*taken_colour(other), OVERLAY_ALPHA)
                    taken_by.add(other)
                ax.imshow(overlay, aspect=aspect, interpolation="nearest")
                header = f"{_plain_text(name)}\n{_dice_text(dice(predicted, truth_ras))}"
            if shown.any():
                ax.contour(shown.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
            ax.set_xlim(-0.5, grey.shape[1] - 0.5)
            ax.set_ylim(grey.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(header, fontsize=10)
            if col == 0:
                index = {"axial": point[2], "coronal": point[1], "sagittal": point[0]}[plane]
                ax.set_ylabel(f"{plane} (slice {index})", fontsize=10)
                left, right, top, bottom = PLANE_EDGES[plane]
                style = {"color": "white", "fontsize": 8, "transform": ax.transAxes}
                ax.text(0.02, 0.5, left, ha="left", va="center", **style)
                ax.text(0.98, 0.5, right, ha="right", va="center", **style)
                ax.text(0.5, 0.98, top, ha="center", va="top", **style)
                ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    handles = [
        Line2D([], [], color=TRUTH_COLOUR, linewidth=2, label="ground truth outline"),
        Line2D([], [], color=PREDICTION_COLOUR, linewidth=2, label="prediction outline"),
        Patch(facecolor=FP_COLOUR, alpha=OVERLAY_ALPHA, label="false positive (predicted, not in truth)"),
        Patch(facecolor=FN_COLOUR, alpha=OVERLAY_ALPHA, label="false negative (in truth, not predicted)"),
        *(
            Patch(facecolor=taken_colour(other), alpha=OVERLAY_ALPHA, label=f"in truth, labelled class {other}")
            for other in sorted(taken_by)
        ),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    return figure


def case_montage(
    image: np.ndarray,
    affine: np.ndarray,
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    class_id: int,
    out_png: Path,
    title: str,
    window: tuple[float, float] = (-160.0, 240.0),
) -> Path:
    """Save axial/coronal/sagittal cuts of one case for one class: truth outline, then each prediction.

    ``truth`` and every prediction lie on ``image``'s grid and use the same class ids (VISTA3D ids; 255 is
    never foreground). The cuts pass through the truth's centroid (else a prediction's, else the volume centre).
    Prediction columns show the prediction outline, false positives (magenta) and false negatives (cyan; those a
    prediction gave to another class in that class's colour, ``taken_colour``), with
    the case's 3D Dice in the header; the image is shown in ``window`` (HU, default soft tissue W400/L40).
    """
    figure = montage_figure(image, affine, truth, predictions, class_id, title, window)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=FIGURE_DPI)
    return out_png


def mean_loss_per_epoch(lines: Iterable[str]) -> list[float]:
    """Mean training loss of each epoch 1..N from the bundle's log lines (NaN for an epoch with none)."""
    trace = TrainingTrace()
    sums: dict[int, list[float]] = {}
    for line in lines:
        count = len(trace.losses)
        trace.feed(line)
        if len(trace.losses) > count:
            sums.setdefault(trace.epoch, []).append(trace.losses[-1])
    if not sums:
        return []
    return [float(np.mean(sums[e])) if e in sums else math.nan for e in range(1, max(sums) + 1)]


def curves_figure(
    epochs_loss: list[float],
    val_dice_per_epoch: list[float],
    formal_pretrained: float | None,
    formal_finetuned: float | None,
) -> Figure:
    """The figure ``training_curves`` saves (see there)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=CURVES_INCHES, dpi=FIGURE_DPI)
    loss_ax, dice_ax = figure.subplots(1, 2)
    figure.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.13, wspace=0.25)
    loss_ax.set_title("training loss (mean per epoch)", fontsize=11)
    if epochs_loss:
        loss_ax.plot(range(1, len(epochs_loss) + 1), epochs_loss, marker="o", color="#0072b2")
    else:
        loss_ax.text(0.5, 0.5, "no training loss logged", ha="center", va="center", transform=loss_ax.transAxes)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")

    dice_ax.set_title("validation Dice per epoch", fontsize=11)
    if val_dice_per_epoch:
        epochs = range(len(val_dice_per_epoch))
        dice_ax.plot(epochs, val_dice_per_epoch, marker="o", color="#0072b2", label="validation Dice (bundle)")
        dice_ax.plot(
            [0], val_dice_per_epoch[:1], marker="*", markersize=14, linestyle="none", color="#d55e00",
            label="epoch 0 = pretrained",
        )  # fmt: skip
    else:
        dice_ax.text(0.5, 0.5, "no validation Dice logged", ha="center", va="center", transform=dice_ax.transAxes)
    for value, name, colour in (
        (formal_pretrained, "pretrained", "#d55e00"),
        (formal_finetuned, "finetuned", "#009e73"),
    ):
        if value is not None:
            dice_ax.axhline(
                value, linestyle="--", color=colour, linewidth=1.2, label=f"formal Dice {name}: {value:.4f}"
            )
    if dice_ax.get_legend_handles_labels()[0]:
        dice_ax.legend(fontsize=8, loc="best")
    dice_ax.set_xlabel("epoch")
    dice_ax.set_ylabel("Dice")
    for ax in (loss_ax, dice_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return figure


def training_curves(
    epochs_loss: list[float],
    val_dice_per_epoch: list[float],
    formal_pretrained: float | None,
    formal_finetuned: float | None,
    out_png: Path,
) -> Path:
    """Save mean training loss per epoch (1..N) and validation Dice per epoch (0..N, 0 = pretrained).

    The formal Dice before and after finetuning, when given, are dashed horizontal reference lines.
    """
    figure = curves_figure(epochs_loss, val_dice_per_epoch, formal_pretrained, formal_finetuned)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=FIGURE_DPI)
    return out_png


def format_cell(value: object) -> str:
    """A table cell's text: floats with 4 decimals, None as a dash; not yet HTML-escaped."""
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}" if math.isfinite(value) else str(float(value))
    return str(value)


def _table(rows: list[dict], css_class: str) -> str:
    if not rows:
        return '<p class="empty">(none)</p>'
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(row.get(c)))}</td>" for c in columns) + "</tr>\n"
        for row in rows
    )
    return f'<table class="{css_class}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>'


def _embedded_png(path: Path) -> str:
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
"""


def html_report(
    title: str,
    summary_rows: list[dict],
    per_case_rows: list[dict],
    images: list[tuple[str, Path]],
    notes: list[str],
    out_html: Path,
    confusion_rows: list[dict] | None = None,
) -> Path:
    """Write one self-contained HTML page: title, notes, summary, confusion and per-case tables, captioned PNGs.

    Table columns are the keys of the first row; every string is HTML-escaped and the PNGs are embedded as
    base64 data URIs, so the page needs no other file, network access or JavaScript.
    """
    escaped_title = html.escape(title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escaped_title}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{escaped_title}</h1>",
        *(f"<p>{html.escape(note)}</p>" for note in notes),
        "<h2>Summary</h2>",
        _table(summary_rows, "summary"),
        "<h2>Where each class's ground-truth voxels went</h2>",
        _table(confusion_rows or [], "confusion"),
        "<h2>Per case</h2>",
        _table(per_case_rows, "per-case"),
    ]
    if images:
        parts.append("<h2>Figures</h2>")
    for caption, path in images:
        text = html.escape(caption)
        parts.append(f'<figure><img src="{_embedded_png(path)}" alt="{text}"><figcaption>{text}</figcaption></figure>')
    parts += ["</body>", "</html>", ""]
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text("\n".join(parts), encoding="utf-8")
    return out_html
