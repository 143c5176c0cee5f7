"""Benchmark: is VISTA3D interactive and trainable at full size on this GPU? One table, at most 8 minutes.

    python bench/gpu_readiness.py BUNDLE_DIR --json results.json [--device cuda:0] [--budget-s 480]
    python bench/gpu_readiness.py --smoke --json results.json      # the tiny bundle on the CPU, small sizes

BUNDLE_DIR is a VISTA3D bundle's configs and scripts (e.g. NV-Segment-CT; no weights needed): it is copied into a
temporary folder with random full-size weights made here from its own ``configs/inference.json``; the folder itself
is only read, and nothing made here is kept. Sections, each in its own process under its own time limit (and never
past the overall budget), in this order, the headline first:

- ``window``: one 128^3 window through the network (class prompt, point prompt), AMP on a GPU, with cudnn
  benchmarking off (the bundle's ``set_determinism``) and on;
- ``class``: a class prompt (liver) on a synthetic 512x512x300 CT at 0.8x0.8x1 mm, cold (image read) then warm;
- ``clicks``: eight successive clicks on that CT after a first one (warm image), with the per-stage split, each
  answered on its windows' region as the effect asks; the last one also the whole-volume way (seconds, and whether
  the labels are equal voxel for voxel);
- ``everything``: the bundle's everything prompt on it;
- ``train-*``: training seconds per iteration at 128^3 and 192x192x128 with 1 and 5 mapped classes (the engine's
  own staged config stack), the data loader's share of the wait, peak memory beside the plan's ladder figure.

Inference goes the warm worker's way (:func:`VistaFinetuneLib.inference.segment.segment` on a
:class:`~VistaFinetuneLib.inference.predictor.Predictor`), so the numbers are what a click in Slicer waits for,
less the client's file read. Targets (issue 21): a warm click's median <= 1 s, a class prompt <= 5 s, peak memory
within 10% of the plan, the data loader < 10% of an iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENGINE = Path(__file__).resolve().parent.parent / "VistaFinetune"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))

# name, VISTA3D id, centre (mm from the body's centre, RAS), semi-axes (mm), HU
ORGANS = (
    ("liver", 1, (70.0, 10.0, 20.0), (75.0, 65.0, 80.0), 110.0),
    ("spleen", 3, (-85.0, 40.0, 30.0), (35.0, 30.0, 50.0), 45.0),
    ("left kidney", 14, (-70.0, -45.0, -40.0), (28.0, 25.0, 45.0), 230.0),
    ("right kidney", 5, (65.0, -45.0, -70.0), (28.0, 25.0, 45.0), 230.0),
    ("aorta", 6, (-10.0, -30.0, 0.0), (12.0, 12.0, 140.0), 200.0),
)
CLICKS = 8
LIMITS_S = {"setup": 120, "window": 45, "class": 75, "clicks": 75, "everything": 60, "train": 60}
SMOKE_SLACK = 3  # --smoke checks that every section works, on a shared CPU: its limits only stop a hang


@dataclass(frozen=True)
class Sizes:
    """What one mode runs: the CT, the window, the training patches and the repeat counts."""

    ct_shape: tuple[int, int, int]
    ct_spacing: tuple[float, float, float]
    window: int
    train_shape: tuple[int, int, int]
    train_spacing: tuple[float, float, float]
    patches: tuple[tuple[int, int, int], ...]
    train_iterations: int
    warmup_iterations: int
    repeats: int
    clicks: int


FULL = Sizes((512, 512, 300), (0.8, 0.8, 1.0), 128, (320, 320, 200), (1.2, 1.2, 1.5),
             ((128, 128, 128), (192, 192, 128)), 6, 2, 3, CLICKS)  # fmt: skip
SMOKE = Sizes((40, 40, 28), (3.0, 3.0, 4.0), 32, (40, 40, 32), (4.0, 4.0, 5.0),
              ((32, 32, 32), (48, 48, 32)), 1, 1, 1, 3)  # fmt: skip


# -- data ---------------------------------------------------------------------------------------------------------
def ct_affine(shape, spacing) -> np.ndarray:
    """An LPS-stored grid (as scanners write it) centred on the world origin."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def synthetic_ct(shape, spacing, labelled: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A body-sized phantom filling the field of view: (HU int16, labels uint8 with values 1..labelled, affine)."""
    rng = np.random.default_rng(seed)
    affine = ct_affine(shape, spacing)
    x = (affine[0, 0] * np.arange(shape[0]) + affine[0, 3])[:, None, None].astype(np.float32)
    y = (affine[1, 1] * np.arange(shape[1]) + affine[1, 3])[None, :, None].astype(np.float32)
    z = (affine[2, 2] * np.arange(shape[2]) + affine[2, 3])[None, None, :].astype(np.float32)
    half = np.asarray(shape) * np.asarray(spacing) / 2.0
    body_a, body_b = 0.85 * half[0], 0.6 * half[1]
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[np.broadcast_to((x / body_a) ** 2 + (y / body_b) ** 2 <= 1.0, shape)] = -90.0
    image[np.broadcast_to((x / (body_a - 8)) ** 2 + (y / (body_b - 8)) ** 2 <= 1.0, shape)] = 40.0
    image[np.broadcast_to((x / (body_a - 18)) ** 2 + (y / (body_b - 18)) ** 2 <= 1.0, shape)] = -80.0
    labels = np.zeros(shape, dtype=np.uint8)
    scale = min(body_a / 190.0, body_b / 135.0, half[2] / 150.0)
    for index, (_, _, centre, radii, hu) in enumerate(ORGANS):
        c, r = np.asarray(centre) * scale, np.asarray(radii) * scale
        mask = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0
        image[mask] = hu
        if index < labelled:
            labels[mask] = index + 1
    image += rng.standard_normal(shape, dtype=np.float32) * 12.0
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), labels, affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def click_points(labels: np.ndarray, count: int) -> tuple[list[list[float]], list[int]]:
    """Voxel indices deep in the liver (positive), then two outside it (negative), ``count`` in all."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(labels == 1)
    order = np.argsort(depth.ravel())[::-1]
    step = max(1, int((depth > depth.max() / 2).sum()) // (count + 1))
    inside = [np.unravel_index(int(i), labels.shape) for i in order[: step * count : step]]
    others = [np.argwhere(labels == value) for value in (2, 3)]
    outside = [tuple(int(v) for v in found[len(found) // 2]) for found in others if len(found)]
    points = inside[: count - len(outside[:2])] + outside[:2]
    labels_ = [1] * (count - len(outside[:2])) + [0] * len(outside[:2])
    return [[float(c) for c in p] for p in points], labels_


# -- setup (its own process) ----------------------------------------------------------------------------------------
def setup(state: dict, data: bool = True) -> dict:
    """A copy of the bundle with random weights (and with ``data``: the CT and its click points, the training
    datasets)."""
    import torch
    from monai.bundle import ConfigParser

    from VistaFinetuneLib.inference.predictor import import_bundle_scripts

    sizes = SMOKE if state["smoke"] else FULL
    work, source = Path(state["work"]), Path(state["bundle_source"])
    bundle = work / "bundle"
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("models", "eval", "__pycache__", "*.pt", "*.ts"))
    (bundle / "models").mkdir()
    import_bundle_scripts(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    parameters = sum(p.numel() for p in network.parameters())
    if not data:
        return {"bundle": str(bundle), "parameters_millions": round(parameters / 1e6, 1)}
    image, labels, affine = synthetic_ct(sizes.ct_shape, sizes.ct_spacing, labelled=3)
    ct = work / "ct.nii"  # what the effect writes for the worker
    save_nifti(image, affine, ct)
    points, point_labels = click_points(labels, sizes.clicks + 1)
    datasets = {}
    for classes in (1, 5):
        folder = work / f"data-{classes}"
        for sub in ("imagesTr", "labelsTr"):
            (folder / sub).mkdir(parents=True)
        for case in range(3):
            image, labels, affine = synthetic_ct(sizes.train_shape, sizes.train_spacing, classes, seed=case)
            save_nifti(image, affine, folder / "imagesTr" / f"case_{case}.nii.gz")
            save_nifti(labels, affine, folder / "labelsTr" / f"case_{case}.nii.gz")
        datasets[classes] = str(folder)
    return {
        "bundle": str(bundle), "ct": str(ct), "points": points, "point_labels": point_labels,
        "datasets": datasets, "parameters_millions": round(parameters / 1e6, 1),
    }  # fmt: skip


# -- measurements (each in its own process) -------------------------------------------------------------------------
class Memory:
    """Peak GPU memory (or the process's peak RSS on the CPU) since the start."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        import torch

        if self.cuda:
            return {
                "peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20),
                "peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20),
            }
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def predictor_for(state: dict):
    from VistaFinetuneLib.inference.models import pretrained_model
    from VistaFinetuneLib.inference.predictor import Predictor

    model = pretrained_model(Path(state["bundle"]))
    return Predictor(model, device=state["device"], cudnn_benchmark=state.get("cudnn_benchmark", False))


def ask(predictor, state: dict, name: str, **prompts) -> dict:
    from VistaFinetuneLib.inference.segment import SegmentRequest, segment

    started = time.perf_counter()
    output = Path(state["work"]) / "out" / f"{name}.nii.gz"
    response = segment(predictor, SegmentRequest(image=Path(state["ct"]), output=output, **prompts))
    timings = response["timings"]
    return {
        "seconds": round(time.perf_counter() - started, 4),
        "stages": timings["stages"],
        "network_s": timings["network_s"],
        "cache": response["cache"],
        "labels": sorted(int(k) for k, v in response["labels"].items() if v["voxels"]),
        "region": response["region"],
        "output": response["output"],
    }


def whole_labels(answer: dict) -> np.ndarray:
    """The label map an answer stands for (a region answer placed on the whole grid)."""
    import nibabel as nib

    from VistaFinetuneLib.inference.point_region import place_region

    labels = np.asarray(nib.load(answer["output"]).dataobj)
    region = answer["region"]
    return labels if region is None else place_region(labels, region["start"], region["shape"])


def section_window(state: dict) -> dict:
    """One window through the network, class and point prompt, with cudnn benchmarking off and on."""
    import torch

    sizes = SMOKE if state["smoke"] else FULL
    memory = Memory(state["device"])
    predictor = predictor_for(state)
    network = predictor.network
    network.image_encoder = predictor.encoder_cache.encoder  # the raw encoder: every call computes
    device = torch.device(state["device"])
    edge = sizes.window
    window = torch.rand((1, 1, edge, edge, edge), device=device)
    prompts = {
        "class": {"class_vector": torch.tensor([[1]], device=device)},
        "point": {"point_coords": torch.tensor([[[edge / 2] * 3]], device=device),
                  "point_labels": torch.tensor([[1]], device=device)},
    }  # fmt: skip
    result: dict = {"window": edge, "amp": device.type == "cuda"}
    for benchmark in (False, True) if device.type == "cuda" else (False,):  # cudnn: CUDA only
        torch.backends.cudnn.benchmark = benchmark
        for name, kwargs in prompts.items():
            times = []
            for _ in range(sizes.repeats + 1):
                started = time.perf_counter()
                with torch.no_grad(), torch.autocast("cuda", enabled=device.type == "cuda"):
                    network(window, **kwargs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            key = f"{name}_s" + ("_cudnn_benchmark" if benchmark else "")
            result[key] = round(statistics.median(times[1:]), 4)
    return result | memory.peak()


def section_class(state: dict) -> dict:
    memory = Memory(state["device"])
    predictor = predictor_for(state)
    cold = ask(predictor, state, "class-cold", classes=[1])
    warm = ask(predictor, state, "class-warm", classes=[1])
    return {"load_s": predictor.load_seconds, "cold": cold, "warm": warm} | memory.peak()


def section_clicks(state: dict) -> dict:
    """A first click, then the warm ones, each answered on its windows' region (what the effect asks for); the last
    one also the whole-volume way: its seconds and whether the labels are the same, voxel for voxel."""
    memory = Memory(state["device"])
    predictor = predictor_for(state)
    points, labels = state["points"], state["point_labels"]

    def click(k: int, region: bool = True) -> dict:
        return ask(predictor, state, f"click-{k}-{region}", points=points[:k], point_labels=labels[:k],
                   points_space="ijk", region=region)  # fmt: skip

    first = click(1)
    clicks = [click(k) for k in range(2, len(points) + 1)]
    whole = click(len(points), region=False)
    same = bool(np.array_equal(whole_labels(whole), whole_labels(clicks[-1])))
    totals = [c["seconds"] for c in clicks]
    stages = {name: round(statistics.median(c["stages"][name] for c in clicks), 4) for name in clicks[0]["stages"]}
    network = statistics.median(c["network_s"] for c in clicks)
    return {
        "first": first, "clicks": clicks, "median_s": round(statistics.median(totals), 4),
        "max_s": round(max(totals), 4), "median_stages": stages,
        "outside_network_share": round(1 - network / statistics.median(totals), 3),
        "whole_volume_last": whole, "region_equals_whole_volume": same,
    } | memory.peak()  # fmt: skip


def section_everything(state: dict) -> dict:
    memory = Memory(state["device"])
    predictor = predictor_for(state)
    result = ask(predictor, state, "everything", everything=True)
    result["labels"] = len(result["labels"])
    return result | memory.peak()


def section_train(state: dict, patch: list[int], classes: int) -> dict:
    """Seconds per training iteration of the engine's staged stack, and the data loader's share of them."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    from VistaFinetuneLib.finetune.pipeline import FinetuneRequest, prepare_run_dir, stage_run
    from VistaFinetuneLib.finetune.plan import estimated_peak_mb
    from VistaFinetuneLib.inference.predictor import import_bundle_scripts

    sizes = SMOKE if state["smoke"] else FULL
    mapping = [[index + 1, organ[1]] for index, organ in enumerate(ORGANS[:classes])]
    run_dir = Path(state["work"]) / f"run-{'x'.join(map(str, patch))}-{classes}"
    request = FinetuneRequest(
        output_dir=run_dir, dataset_dir=Path(state["datasets"][str(classes)]), bundle_dir=Path(state["bundle"]),
        label_mapping=json.dumps(mapping), patch_size=list(patch), epochs=1000, skip_formal_eval=True,
        device=state["device"],
    )  # fmt: skip
    staged = stage_run(request, prepare_run_dir(request))
    import_bundle_scripts(Path(state["bundle"]))
    parser = ConfigParser()
    parser.read_config([str(p) for p in staged.stacks["train"]])
    parser["val_at_start"], parser["val_interval"] = False, 1000  # training iterations only
    parser["val_dataset_cache_rate"] = 0.0
    memory = Memory(state["device"])
    started = time.perf_counter()
    parser.get_parsed_content("initialize")  # the bundle's set_determinism
    trainer = parser.get_parsed_content("train#trainer")
    build_s = time.perf_counter() - started
    trainer.state.epoch_length = 10_000
    sync = torch.cuda.synchronize if state["device"].startswith("cuda") else (lambda: None)
    marks: dict[str, list[float]] = {"fetch": [], "step": []}
    clock: dict[str, float] = {}

    def mark(name: str):
        def handler(engine) -> None:
            sync()
            clock[name] = time.perf_counter()
            if name == "fetched":
                marks["fetch"].append(clock["fetched"] - clock["fetching"])
            elif name == "done":
                marks["step"].append(clock["done"] - clock["fetching"])
                if len(marks["step"]) >= sizes.warmup_iterations + sizes.train_iterations:
                    engine.terminate()

        return handler

    trainer.add_event_handler(Events.GET_BATCH_STARTED, mark("fetching"))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, mark("fetched"))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, mark("done"))
    trainer.run()
    steps = marks["step"][sizes.warmup_iterations :]
    fetches = marks["fetch"][sizes.warmup_iterations : len(marks["step"])]
    ladder = estimated_peak_mb(list(patch), classes, point_prompts=not request.auto_seg)
    return {
        "patch": list(patch), "classes": classes, "build_s": round(build_s, 1),
        "iteration_s": round(statistics.median(steps), 4), "loader_share": round(sum(fetches) / sum(steps), 3),
        "iterations": len(steps), "plan_peak_mb": ladder, "cache_rate": staged.plan.train_dataset_cache_rate,
    } | memory.peak()  # fmt: skip


def run_section(name: str, state: dict) -> dict:
    if name == "setup":
        return setup(state)
    if name.startswith("train-"):
        _, patch, classes = name.split("-")
        return section_train(state, [int(v) for v in patch.split("x")], int(classes))
    return {"window": section_window, "class": section_class, "clicks": section_clicks,
            "everything": section_everything}[name](state)  # fmt: skip


# -- the parent: sections under time limits, one table --------------------------------------------------------------
def child(name: str, state: dict, limit_s: float) -> dict:
    """Run one section in its own process group; kill the group when it passes ``limit_s``."""
    work = Path(state["work"])
    state_file, result_file = work / f"state-{name}.json", work / f"result-{name}.json"
    state_file.write_text(json.dumps(state))
    log = work / f"log-{name}.txt"
    started = time.perf_counter()
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            [sys.executable, __file__, "--section", name, "--state", str(state_file), "--result", str(result_file)],
            stdout=stream, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    seconds = round(time.perf_counter() - started, 1)
    if code == 0 and result_file.is_file():
        return {"status": "ok", "wall_s": seconds} | json.loads(result_file.read_text())
    tail = log.read_text(errors="replace").strip().splitlines()[-6:]
    status = f"timed out after {limit_s:.0f} s" if code is None else f"failed (exit {code})"
    return {"status": status, "wall_s": seconds, "log_tail": tail}


def section_names(sizes: Sizes) -> list[str]:
    train = [f"train-{'x'.join(map(str, p))}-{c}" for p in sizes.patches for c in (1, 5)]
    return ["window", "class", "clicks", "everything", *train]


def fmt(value, unit: str = "s") -> str:
    if value is None:
        return "-"
    return f"{value:.3f} {unit}" if unit == "s" else f"{value} {unit}"


def peak_text(result: dict) -> str:
    if "peak_allocated_mb" in result:
        return f"peak {result['peak_allocated_mb']} MB (reserved {result['peak_reserved_mb']} MB)"
    return f"peak RSS {result.get('peak_rss_mb', '-')} MB"


def table(results: dict, sizes: Sizes) -> list[tuple[str, str, str]]:
    """(row, measured, target or comparison) for every section."""
    rows = []
    for name, result in results["sections"].items():
        if result["status"] != "ok":
            rows.append((name, result["status"], ""))
            continue
        if name == "window":
            for prompt in ("class", "point"):
                benchmarked = result.get(f"{prompt}_s_cudnn_benchmark")
                rows.append((f"{sizes.window}^3 window, {prompt} prompt" + (", AMP" if result["amp"] else ""),
                             f"{fmt(result[prompt + '_s'])} (cudnn benchmark: {fmt(benchmarked)})",
                             peak_text(result)))  # fmt: skip
        elif name == "class":
            for when in ("cold", "warm"):
                r = result[when]
                rows.append((f"class prompt (liver), {when}", fmt(r["seconds"]), "target <= 5 s"))
                rows.append(("  stages", stage_text(r["stages"]), peak_text(result) if when == "warm" else ""))
        elif name == "clicks":
            rows.append((f"first click (image cached? {result['first']['cache']['image']})",
                         fmt(result["first"]["seconds"]), ""))  # fmt: skip
            rows.append((f"{len(result['clicks'])} warm clicks, median (max)",
                         f"{fmt(result['median_s'])} ({fmt(result['max_s'])})", "target <= 1 s"))  # fmt: skip
            rows.append(("  median stages", stage_text(result["median_stages"]),
                         f"outside the network {result['outside_network_share']:.0%}"))  # fmt: skip
            whole = result["whole_volume_last"]
            rows.append(("  last click the whole-volume way", fmt(whole["seconds"]),
                         f"region {fmt(result['clicks'][-1]['seconds'])}; voxel-for-voxel equal: "
                         f"{result['region_equals_whole_volume']}"))  # fmt: skip
            rows.append(("  whole-volume stages", stage_text(whole["stages"]), ""))
            rows.append(("  memory", "", peak_text(result)))
        elif name == "everything":
            rows.append((f"everything ({result['labels']} labels found)", fmt(result["seconds"]), peak_text(result)))
            rows.append(("  stages", stage_text(result["stages"]), ""))
        else:
            patch = "x".join(map(str, result["patch"]))
            plan = f"plan {result['plan_peak_mb']} MB" if result.get("plan_peak_mb") else "no plan figure"
            rows.append((f"train {patch}, {result['classes']} class(es): s/iteration", fmt(result["iteration_s"]),
                         f"loader {result['loader_share']:.0%} (target < 10%)"))  # fmt: skip
            rows.append(("  memory", peak_text(result), plan))
    return rows


def stage_text(stages: dict) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in stages.items() if v >= 0.0005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_dir", nargs="?", type=Path, help="a VISTA3D bundle folder (configs, scripts)")
    parser.add_argument("--smoke", action="store_true", help="small sizes on the CPU, the tiny bundle by default (CI)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--device", help="default: cuda:0 when there is a GPU, else cpu (always cpu with --smoke)")
    parser.add_argument("--budget-s", type=float, help="all sections together (default 480; 900 with --smoke)")
    parser.add_argument("--only", nargs="+", help="run only these sections (names as in the table)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="the warm worker's cudnn benchmarking on")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        warnings.filterwarnings("ignore")  # the log keeps only what matters: a failure's traceback
        result = run_section(args.section, json.loads(args.state.read_text()))
        args.result.write_text(json.dumps(result))
        return
    started = time.perf_counter()
    if args.smoke and args.bundle_dir is None:
        from VistaFinetuneLib.bundle import tiny_bundle

        bundle, device = tiny_bundle.ensure_tiny_bundle(), args.device or "cpu"
    elif args.bundle_dir is None or not (args.bundle_dir / "configs" / "inference.json").is_file():
        raise SystemExit(f"{args.bundle_dir}: give a VISTA3D bundle folder (with configs/inference.json) or --smoke")
    else:
        bundle = args.bundle_dir.absolute()
        device = args.device or ("cpu" if args.smoke else default_device())
    sizes = SMOKE if args.smoke else FULL
    work = Path(tempfile.mkdtemp(prefix="vf-gpu-readiness-"))
    state = {"work": str(work), "bundle_source": str(bundle), "device": device, "smoke": args.smoke,
             "cudnn_benchmark": args.cudnn_benchmark}  # fmt: skip
    results: dict = {"bundle": str(bundle), "device": device, "smoke": args.smoke, "machine": machine(device),
                     "sizes": sizes.__dict__, "sections": {}}  # fmt: skip
    try:
        budget = args.budget_s or (900.0 if args.smoke else 480.0)
        deadline = started + budget
        prepared = child("setup", state, min(LIMITS_S["setup"], budget))
        results["setup"] = {k: v for k, v in prepared.items() if k not in ("points", "point_labels", "datasets")}
        if prepared["status"] == "ok":
            state |= {k: prepared[k] for k in ("bundle", "ct", "points", "point_labels", "datasets")}
            for name in section_names(sizes):
                if args.only and name not in args.only:
                    continue
                left = deadline - time.perf_counter()
                limit = min(LIMITS_S[name.split("-")[0]] * (SMOKE_SLACK if args.smoke else 1), left)
                if limit < 5:
                    results["sections"][name] = {"status": "skipped (no time left)"}
                    continue
                results["sections"][name] = child(name, state, limit)
                print(f"{name}: {results['sections'][name]['status']} in {results['sections'][name].get('wall_s')} s",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    print_table(results, sizes)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def default_device() -> str:
    from VistaFinetuneLib.environment import visible_gpus

    return "cuda:0" if visible_gpus() else "cpu"


def machine(device: str) -> dict:
    from VistaFinetuneLib.environment import package_versions, visible_gpus

    gpus = visible_gpus() if device.startswith("cuda") else []
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "gpu": gpus[0] if gpus else None, "packages": package_versions()}  # fmt: skip


def print_table(results: dict, sizes: Sizes) -> None:
    setup_state = results["setup"]
    print(f"\nVISTA3D readiness on {results['device']} ({results['machine'].get('gpu') or platform.processor()}), "
          f"bundle {results['bundle']}, {setup_state.get('parameters_millions', '?')}M parameters (random weights); "
          f"CT {'x'.join(map(str, sizes.ct_shape))} at {'x'.join(map(str, sizes.ct_spacing))} mm; "
          f"setup {setup_state['status']} in {setup_state.get('wall_s')} s; total {results['wall_s']} s")  # fmt: skip
    rows = table(results, sizes)
    width = max(len(r[0]) for r in rows) if rows else 10
    for row, measured, other in rows:
        print(f"{row:<{width}}  {measured:<40}  {other}")


if __name__ == "__main__":
    main()
