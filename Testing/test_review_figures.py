"""Review figures: RAS-canonical slicing, case montages, training curves and the self-contained HTML page."""

import base64
import math
import re
from html.parser import HTMLParser

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import ndimage

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.review import figures as review_figures

pytestmark = pytest.mark.unit

LIVER = 1


# --- geometry --------------------------------------------------------------------------------------------


def external_references(page: str) -> list[str]:
    """``src``/``href`` values of ``page`` that are not embedded data URIs (a self-contained page has none)."""
    return [m for m in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page) if not m.startswith("data:")]


def ras_volume() -> np.ndarray:
    volume = np.zeros((5, 6, 7), dtype=np.int16)
    volume[1, 4, 2] = 9  # an asymmetric marker: left of centre, anterior, inferior
    volume[3, 0, 6] = 5
    return volume


def affine_from_columns(columns: list[tuple[int, float]]) -> np.ndarray:
    """Voxel-to-RAS affine whose array axis k runs along world axis columns[k][0] with signed step columns[k][1]."""
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (world, step) in enumerate(columns):
        affine[world, axis] = step
    affine[:3, 3] = (10.0, -20.0, 30.0)
    return affine


@pytest.mark.parametrize(
    "name",
    ["ras", "lps", "permuted", "permuted_flipped"],
)
def test_canonical_ras_puts_the_marker_at_the_same_index_whatever_the_affine(name):
    base = ras_volume()
    spacing = (1.5, 2.0, 3.0)
    if name == "ras":
        array, affine = base, affine_from_columns([(0, 1.5), (1, 2.0), (2, 3.0)])
    elif name == "lps":  # diag(-1,-1,1): array axes 0 and 1 run towards patient left and posterior
        array, affine = base[::-1, ::-1, :], affine_from_columns([(0, -1.5), (1, -2.0), (2, 3.0)])
    elif name == "permuted":  # array axes are (S, R, A)
        array, affine = base.transpose(2, 0, 1), affine_from_columns([(2, 3.0), (0, 1.5), (1, 2.0)])
    else:  # array axes are (A, I, L)
        array = base.transpose(1, 2, 0)[:, ::-1, ::-1]
        affine = affine_from_columns([(1, 2.0), (2, -3.0), (0, -1.5)])
    canonical, canonical_spacing = review_figures.canonical_ras(array, affine)
    assert canonical.shape == base.shape
    assert np.array_equal(canonical, base)
    assert np.allclose(canonical_spacing, spacing)


def test_canonical_ras_of_a_tilted_synthetic_case_keeps_the_liver_on_the_patient_right():
    image, label, affine = synthetic.make_case(0, 0, synthetic.MICRO_SPEC)
    canonical, spacing = review_figures.canonical_ras(label == LIVER, affine)
    x_liver = np.argwhere(canonical)[:, 0].mean()
    assert x_liver > canonical.shape[0] / 2  # the liver lies at +x (patient right): high canonical indices
    assert np.allclose(sorted(spacing), sorted(np.linalg.norm(affine[:3, :3], axis=0)))


def test_centroid_slices_of_a_hand_made_mask():
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[2:5, 6:9, 1:4] = True  # a box centred on (3, 7, 2)
    assert review_figures.centroid_slices(mask) == (3, 7, 2)
    mask[:] = False
    mask[2, 3, 4] = mask[4, 5, 6] = mask[9, 4, 11] = True  # mean (5, 4, 7)
    assert review_figures.centroid_slices(mask) == (5, 4, 7)
    assert review_figures.centroid_slices(np.zeros((10, 12, 14), dtype=bool)) == (4, 5, 6)


def test_slice_point_falls_back_from_truth_to_prediction_to_volume_centre():
    truth = np.zeros((8, 8, 8), dtype=bool)
    prediction = np.zeros_like(truth)
    prediction[6, 1, 2] = True
    assert review_figures.slice_point(truth, [np.zeros_like(truth), prediction]) == (6, 1, 2)
    truth[1, 5, 3] = True
    assert review_figures.slice_point(truth, [prediction]) == (1, 5, 3)
    assert review_figures.slice_point(np.zeros_like(truth), [np.zeros_like(truth)]) == (3, 3, 3)


def test_display_slices_follow_the_radiological_convention():
    volume = np.zeros((4, 5, 6), dtype=int)
    volume[3, 4, 5] = 1  # patient right (high x), anterior (high y), superior (high z)
    point = (3, 4, 5)
    axial = review_figures.display_slice(volume, "axial", point)
    coronal = review_figures.display_slice(volume, "coronal", point)
    sagittal = review_figures.display_slice(volume, "sagittal", point)
    assert axial.shape == (5, 4) and axial[0, 0] == 1  # anterior up, patient right on the left
    assert coronal.shape == (6, 4) and coronal[0, 0] == 1  # superior up, patient right on the left
    assert sagittal.shape == (6, 5) and sagittal[0, 0] == 1  # superior up, anterior on the left
    assert review_figures.display_aspect("axial", (1.0, 2.0, 3.0)) == 2.0
    assert review_figures.display_aspect("coronal", (1.0, 2.0, 3.0)) == 3.0
    assert review_figures.display_aspect("sagittal", (1.0, 2.0, 3.0)) == 1.5


# --- montage ---------------------------------------------------------------------------------------------


def panel_boxes(figure) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """(row, column) -> (top, bottom, left, right) pixel box of each panel, a few pixels inside its frame."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).draw()
    height = int(round(figure.get_figheight() * figure.dpi))
    boxes = {}
    for ax in figure.axes:
        spec = ax.get_subplotspec()
        box = ax.get_window_extent()
        top, bottom = height - int(box.y1) + 3, height - int(box.y0) - 3
        boxes[(spec.rowspan.start, spec.colspan.start)] = (top, bottom, int(box.x0) + 3, int(box.x1) - 3)
    return boxes


def colour_counts(rgb: np.ndarray, boxes, column: int) -> tuple[int, int]:
    """(magenta-like, cyan-like) pixel counts inside one column's panels."""
    magenta = cyan = 0
    for (_, col), (top, bottom, left, right) in boxes.items():
        if col != column:
            continue
        r, g, b = (rgb[top:bottom, left:right, k] for k in range(3))
        magenta += int(((r - g > 0.3) & (b - g > 0.3) & (abs(r - b) < 0.15)).sum())
        cyan += int(((g - r > 0.3) & (b - r > 0.3) & (abs(g - b) < 0.15)).sum())
    return magenta, cyan


@pytest.fixture(scope="module")
def liver_case():
    image, label, affine = synthetic.make_case(0, 1, synthetic.MICRO_SPEC)
    return image, label, affine


def test_montage_shows_false_positives_exactly_where_the_prediction_has_them(liver_case, tmp_path):
    image, truth, affine = liver_case
    liver = truth == LIVER
    dilated = np.where(ndimage.binary_dilation(liver, iterations=2), LIVER, 0).astype(np.uint8)
    eroded = np.where(ndimage.binary_erosion(liver, iterations=2), LIVER, 0).astype(np.uint8)
    eroded[:4] = review_figures.NOT_PROCESSED  # an unprocessed border is not foreground
    predictions = {"pretrained": dilated, "finetuned": eroded}
    args = (image, affine, truth, predictions, LIVER)
    out = review_figures.case_montage(*args, tmp_path / "sub" / "m.png", title='case a<b&"c" $x$')
    assert out == tmp_path / "sub" / "m.png"
    rgb = mpimg.imread(out)[..., :3]
    assert rgb.shape[:2] == (900, 900)
    figure = review_figures.montage_figure(*args, title="x")
    boxes = panel_boxes(figure)
    assert len(boxes) == 9
    truth_fp, truth_fn = colour_counts(rgb, boxes, 0)
    pre_fp, pre_fn = colour_counts(rgb, boxes, 1)
    fin_fp, fin_fn = colour_counts(rgb, boxes, 2)
    assert truth_fp == 0 and truth_fn == 0
    assert pre_fp > 100 and pre_fn == 0  # dilated: only false positives
    assert fin_fp == 0 and fin_fn > 100  # eroded: only false negatives
    titles = [figure.axes[k].get_title() for k in range(3)]
    assert "ground truth" in titles[0]
    assert titles[1].startswith("pretrained") and "Dice 0." in titles[1]
    assert titles[2].startswith("finetuned") and "Dice 0." in titles[2]


def test_montage_marks_truth_voxels_given_to_another_class_in_that_class_colour(liver_case, tmp_path):
    image, truth, affine = liver_case
    liver = truth == LIVER
    as_kidney = np.where(liver, 14, 0).astype(np.uint8)  # the whole liver labelled left kidney
    predictions = {"pretrained": as_kidney, "finetuned": np.where(liver, LIVER, 0).astype(np.uint8)}
    args = (image, affine, truth, predictions, LIVER)
    rgb = mpimg.imread(review_figures.case_montage(*args, tmp_path / "m.png", title="taken"))[..., :3]
    figure = review_figures.montage_figure(*args, title="taken")
    boxes = panel_boxes(figure)
    colour = np.array(review_figures.taken_colour(14))

    def marked(column: int) -> int:
        count = 0
        for (_, col), (top, bottom, left, right) in boxes.items():
            if col == column:  # the overlay blends the class colour over grey at OVERLAY_ALPHA
                panel = rgb[top:bottom, left:right]
                chroma = panel - panel.mean(axis=-1, keepdims=True)
                target = colour - colour.mean()
                count += int((np.abs(chroma - review_figures.OVERLAY_ALPHA * target).max(axis=-1) < 0.06).sum())
        return count

    assert colour_counts(rgb, boxes, 1)[1] == 0  # not cyan: none of the liver was left as background
    assert marked(1) > 100 and marked(2) == 0
    assert any("labelled class 14" in text.get_text() for text in figure.legends[0].get_texts())


def test_montage_ignores_false_positives_off_the_shown_slices(liver_case, tmp_path):
    image, truth, affine = liver_case
    liver = np.where(truth == LIVER, LIVER, 0).astype(np.uint8)
    stray = liver.copy()
    stray[:3, :3, :3] = LIVER  # a false positive in a corner, away from the liver's centroid planes
    canonical_stray = review_figures.canonical_ras(stray == LIVER, affine)[0]
    canonical_liver = review_figures.canonical_ras(truth == LIVER, affine)[0]
    x, y, z = review_figures.centroid_slices(canonical_liver)
    extra = canonical_stray & ~canonical_liver
    assert extra.any() and not (extra[x].any() or extra[:, y].any() or extra[:, :, z].any())
    predictions = {"pretrained": liver, "finetuned": stray}
    args = (image, affine, truth, predictions, LIVER)
    rgb = mpimg.imread(review_figures.case_montage(*args, tmp_path / "m.png", title="stray"))[..., :3]
    figure = review_figures.montage_figure(*args, title="stray")
    boxes = panel_boxes(figure)
    assert colour_counts(rgb, boxes, 1) == (0, 0)
    assert colour_counts(rgb, boxes, 2) == (0, 0)
    assert "Dice 1.0000" in figure.axes[1].get_title()
    assert "Dice 1.0000" not in figure.axes[2].get_title()  # the stray voxels count in the 3D Dice


def test_montage_shows_the_patient_right_and_anterior_at_the_top_left_of_the_axial_panel(tmp_path):
    shape = (30, 24, 10)
    canonical = np.full(shape, 40, dtype=np.int16)  # mid grey in the soft-tissue window
    canonical[24:28, 17:22, :] = -1000  # a black marker at the patient's right (high x), anterior (high y)
    array = canonical[::-1, ::-1, :]  # stored LPS-like: axes 0 and 1 run towards patient left and posterior
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    truth = np.zeros(shape, dtype=np.uint8)
    args = (array, affine, truth, {}, LIVER)
    rgb = mpimg.imread(review_figures.case_montage(*args, tmp_path / "m.png", title="marker"))[..., :3]
    top, bottom, left, right = panel_boxes(review_figures.montage_figure(*args, title="marker"))[(0, 0)]
    panel = rgb[top:bottom, left:right]
    rows, cols = np.nonzero(panel.max(axis=2) < 0.1)
    assert len(rows) > 50
    assert cols.max() < panel.shape[1] / 2  # patient right on the image's left
    assert rows.max() < panel.shape[0] / 2  # anterior up


def test_montage_rejects_a_prediction_on_another_grid(liver_case, tmp_path):
    image, truth, affine = liver_case
    with pytest.raises(ValueError, match="share a grid"):
        review_figures.case_montage(image, affine, truth, {"p": truth[1:]}, LIVER, tmp_path / "m.png", "t")


# --- training curves -------------------------------------------------------------------------------------


def test_mean_loss_per_epoch_from_log_lines():
    lines = [
        "Epoch: 1/3, Iter: 1/2 -- train_loss: 1.0000",
        "unrelated line",
        "Epoch: 1/3, Iter: 2/2 -- train_loss: 0.5000",
        "Epoch: 3/3, Iter: 1/1 -- train_loss: 0.2500",
    ]
    means = review_figures.mean_loss_per_epoch(lines)
    assert len(means) == 3 and means[0] == 0.75 and math.isnan(means[1]) and means[2] == 0.25
    assert review_figures.mean_loss_per_epoch(["nothing"]) == []


def test_training_curves_png_and_reference_lines(tmp_path):
    out = review_figures.training_curves([0.9, 0.6, 0.5], [0.4, 0.6, 0.7, 0.75], 0.41, 0.77, tmp_path / "c.png")
    image = mpimg.imread(out)
    assert image.shape[:2] == (400, 1000)
    assert (image[..., :3] < 0.9).mean() > 0.01  # something is drawn
    figure = review_figures.curves_figure([0.9, 0.6, 0.5], [0.4, 0.6, 0.7, 0.75], 0.41, 0.77)
    loss_ax, dice_ax = figure.axes
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3]
    assert list(dice_ax.lines[0].get_xdata()) == [0, 1, 2, 3]
    dashed = [line for line in dice_ax.lines if line.get_linestyle() == "--"]
    assert sorted(line.get_ydata()[0] for line in dashed) == [0.41, 0.77]
    labels = dice_ax.get_legend_handles_labels()[1]
    assert any("pretrained" in label and "0.4100" in label for label in labels)
    assert any("finetuned" in label and "0.7700" in label for label in labels)
    bare = review_figures.curves_figure([0.9], [0.4, 0.6], None, None)
    assert not [line for line in bare.axes[1].lines if line.get_linestyle() == "--"]


# --- HTML report -----------------------------------------------------------------------------------------


class Tables(HTMLParser):
    """Collects every table's rows as lists of cell texts, and the image sources."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.sources: list[str] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "img":
            self.sources.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def test_html_report_is_one_self_contained_escaped_page(tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    first = review_figures.training_curves([0.5], [0.4, 0.6], None, None, pictures / "a.png")
    second = pictures / "b.png"
    mpimg.imsave(second, np.random.default_rng(0).random((8, 8, 3)))
    odd = 'a<b&"c"'
    summary = [{"metric": "mean Dice", "pretrained": 0.123456, "finetuned": None}, {"metric": "n", "pretrained": 2}]
    per_case = [{"case": odd, "class": 1, "dice": 0.5}, {"case": "b", "class": 1, "dice": 1.0}]
    per_case.append({"case": "c", "class": 2, "dice": float("nan")})
    report = tmp_path / "out" / "report.html"
    out = review_figures.html_report(
        f"Run {odd}", summary, per_case, [(f"montage {odd}", first), ("curves", second)], [f"note {odd}"], report
    )
    assert out == report and [p.name for p in report.parent.iterdir()] == ["report.html"]
    page = report.read_text(encoding="utf-8")
    assert 'src="http' not in page and "href=" not in page and "<script" not in page
    assert external_references(page) == []
    assert odd not in page
    assert "a&lt;b&amp;&quot;c&quot;" in page
    parser = Tables()
    parser.feed(page)
    summary_table, case_table = parser.tables
    assert len(summary_table) == 1 + 2 and len(case_table) == 1 + 3  # header + rows
    assert summary_table[0] == ["metric", "pretrained", "finetuned"]
    assert summary_table[1] == ["mean Dice", "0.1235", "–"]
    assert summary_table[2] == ["n", "2", "–"]
    assert case_table[1] == [odd, "1", "0.5000"] and case_table[3][2] == "nan"
    assert len(parser.sources) == 2 and all(s.startswith("data:image/png;base64,") for s in parser.sources)
    assert base64.b64decode(parser.sources[0].split(",", 1)[1]) == first.read_bytes()


def test_html_report_refuses_an_image_that_is_not_png(tmp_path):
    fake = tmp_path / "x.png"
    fake.write_text("<svg/>")
    with pytest.raises(ValueError, match="not a PNG"):
        review_figures.html_report("t", [], [], [("x", fake)], [], tmp_path / "r.html")


def test_engine_import_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, VistaFinetuneLib.review.figures; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
