"""Benchmark: the warm worker (``vista-finetune serve``) versus a cold ``python -m monai.bundle run`` with the bundle's
``inference.json`` per request, for the same requests on one CT: a class prompt (liver), then 5 successive clicks
(points only: 4 positive in the liver, then a negative one outside it; each click sends all points so far).

    python bench/bench_worker.py [--model tiny|full|both] [--size 64] [--clicks 5]
    python bench/bench_worker.py --bundle NV-Segment-CT --ct 512x512x300 [--patch 64] --region

With ``--bundle`` a real bundle's configs and scripts are used (random full-size weights made at run time, never
kept; ``--patch`` shrinks its inference window for a CPU), with ``--ct`` a body-sized synthetic CT of that shape at
0.8x0.8x1 mm; ``--region`` compares, with one warm worker, each click answered the whole-volume way (before issue
21) and on its windows' region (after), side by side: seconds, the share spent outside the network, identity.

``tiny`` is the tiny reference bundle; ``full`` is the full-size VISTA3D network (``vista3d132``, 218M parameters)
with random weights made here at run time in a temporary folder (never kept), 1.5 mm spacing and (by default) patch
128^3 as in the upstream inference.json, on a SIZE^3 phantom at 1.5 mm (CPU is slow: keep SIZE small, e.g. 64-96,
and on a 2-core machine use ``--patch 64``: one 128^3 encoder pass alone takes minutes there). Each is run
with the bundle's point window and without it (``use_point_window: false``). Printed side by side: per-request
latency (cold process vs warm round trip), the ratio, voxel identity of the two outputs (the cold output's 255,
"not processed", read as 0 like the worker writes it), and peak RSS of each side. Clicks need scikit-image in the
environment (VISTA3D's connected-component step).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.runner import QUIET_WARNINGS
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.inference.point_region import place_region
from VistaFinetuneLib.resources import ENGINE_ROOT

FULL_SIZE_OVERRIDES = {
    "network_def": {"_target_": "monai.networks.nets.vista3d132", "in_channels": "@input_channels"},
    "patch_size": [128, 128, 128],
    "resample_spacing": [1.5, 1.5, 1.5],
}


def full_size_bundle(work: Path, patch: int) -> Path:
    """The tiny bundle's configs and scripts with the upstream network (and spacing), a PATCH^3 window, random
    weights."""
    import torch
    from monai.networks.nets import vista3d132

    bundle = work / "full-size-bundle"
    tiny_bundle.copy_template(bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text()) | FULL_SIZE_OVERRIDES
    config["patch_size"] = [patch] * 3
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    network = vista3d132(in_channels=1)
    print(f"full-size network: {sum(p.numel() for p in network.parameters()) / 1e6:.1f}M parameters", flush=True)
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    return bundle


def phantom(work: Path, size: int | None) -> tuple[Path, np.ndarray]:
    """One CT phantom and its liver mask (the default spec, or SIZE^3 voxels at 1.5 mm)."""
    spec = synthetic.PhantomSpec(label_values={"liver": 1})
    if size:
        spec = synthetic.PhantomSpec(shape=(size,) * 3, spacing_mm=(1.5, 1.5, 1.5), label_values={"liver": 1})
    data = work / f"data-{size or 'default'}"
    synthetic.write_dataset(data, 1, seed=11, spec=spec)
    return data / "imagesTr" / "case_000.nii.gz", np.asarray(nib.load(data / "labelsTr" / "case_000.nii.gz").dataobj)


def requests(image: Path, liver: np.ndarray, clicks: int) -> list[dict]:
    """The class prompt, then the clicks (voxel indices), each with every point so far."""
    depth = ndimage.distance_transform_edt(liver == 1)
    order = np.argsort(depth.ravel())[::-1]
    inside = [np.unravel_index(i, liver.shape) for i in order[: 200 * clicks : 200]][: clicks - 1]
    outside = np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(liver != 1))), liver.shape)
    points = [[float(c) for c in p] for p in [*inside, outside]]
    labels = [1] * (clicks - 1) + [0]
    prompts = [{"label_prompt": [1]}]
    prompts += [{"points": points[: k + 1], "point_labels": labels[: k + 1]} for k in range(clicks)]
    return [{"image": str(image)} | p for p in prompts]


def cold(bundle: Path, request: dict, out: Path, point_window: bool) -> tuple[float, int, np.ndarray]:
    """One ``monai.bundle run`` of inference.json: wall seconds, peak RSS (MB) and the saved labels."""
    args = {
        "config_file": str(bundle / "configs" / "inference.json"),
        "logging_file": str(bundle / "configs" / "logging.conf"),
        "bundle_root": str(bundle),
        "input_dict": request,
        "output_dir": str(out),
        "use_point_window": point_window,
    }
    args_file = out.with_suffix(".json")
    out.mkdir(parents=True)
    args_file.write_text(json.dumps(args))
    env = dict(os.environ, PYTHONPATH=str(bundle), PYTHONWARNINGS=QUIET_WARNINGS, PYTHONDONTWRITEBYTECODE="1")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(args_file)],
        cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"cold run failed ({status}); see {out}")
    (saved,) = list(out.rglob("*_trans.nii.gz"))
    labels = np.asarray(nib.load(saved).dataobj)
    return seconds, usage.ru_maxrss // 1024, np.where(labels == 255, 0, labels).astype(np.uint8)


class Warm:
    """A ``serve`` process for one bundle, answering the requests in order."""

    def __init__(self, bundle: Path, point_window: bool, out: Path):
        command = [sys.executable, "-m", "VistaFinetuneLib", "serve", "--bundle-dir", str(bundle), "--output-dir",
                   str(out)] + ([] if point_window else ["--no-point-window"])  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ENGINE_ROOT), PYTHONWARNINGS=QUIET_WARNINGS)
        started = time.perf_counter()
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(
            target=lambda: [self.lines.put(json.loads(x)) for x in self.process.stdout], daemon=True
        ).start()
        ready = self.lines.get(timeout=1800)
        assert ready["event"] == "ready", ready
        self.start_seconds = time.perf_counter() - started
        self.out = out

    def ask(self, index, request: dict, region: bool = False) -> tuple[float, dict, np.ndarray]:
        message = {"id": index, "op": "predict", "image": request["image"], "points_space": "ijk",
                   "output": str(self.out / f"r{index}-{region}.nii.gz"), "region": region}  # fmt: skip
        if "label_prompt" in request:
            message["classes"] = request["label_prompt"]
        if "points" in request:
            message |= {"points": request["points"], "point_labels": request["point_labels"]}
        started = time.perf_counter()
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()
        response = self.lines.get(timeout=1800)
        seconds = time.perf_counter() - started
        assert response["ok"], response
        labels = np.asarray(nib.load(response["output"]).dataobj)
        if response.get("region"):  # what the effect does with a region answer
            labels = place_region(labels, response["region"]["start"], response["region"]["shape"])
        return seconds, response, labels

    def peak_rss_mb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
        return 0

    def close(self) -> None:
        self.process.stdin.write(b'{"op": "shutdown"}\n')
        self.process.stdin.flush()
        self.process.wait(timeout=120)


def compare(name: str, bundle: Path, image: Path, liver: np.ndarray, clicks: int, work: Path) -> None:
    todo = requests(image, liver, clicks)
    shape = "x".join(map(str, nib.load(image).shape))
    for point_window in (True, False):
        label = f"{name}, {shape} image, point window {'on' if point_window else 'off'}"
        print(f"\n== {label}", flush=True)
        warm = Warm(bundle, point_window, work / f"warm-{name}-{point_window}")
        print(f"warm worker start (imports, build, weights): {warm.start_seconds:.1f} s", flush=True)
        rows, cold_rss = [], 0
        for index, request in enumerate(todo):
            cold_s, rss, cold_labels = cold(bundle, request, work / f"cold-{name}-{point_window}-{index}", point_window)
            cold_rss = max(cold_rss, rss)
            warm_s, response, warm_labels = warm.ask(index, request)
            same = np.array_equal(cold_labels, warm_labels)
            what = "class liver" if index == 0 else f"click {index} ({len(request['points'])} points)"
            cache = response["cache"]
            print(
                f"{what:<22} cold {cold_s:7.2f} s   warm {warm_s:7.3f} s   ratio {cold_s / warm_s:7.1f}x   "
                f"identical {same}   encoder windows reused/computed {cache['encoder_windows_reused']}/"
                f"{cache['encoder_windows_computed']}",
                flush=True,
            )
            rows.append((index, cold_s, warm_s, same))
        click_cold = statistics.median(c for i, c, _, _ in rows if i > 0)
        click_warm = statistics.median(w for i, _, w, _ in rows if i > 0)
        print(
            f"per click (median of {len(rows) - 1}): cold {click_cold:.2f} s, warm {click_warm:.3f} s, "
            f"ratio {click_cold / click_warm:.1f}x; "
            f"all outputs voxel-identical: {all(r[3] for r in rows)}; peak RSS cold {cold_rss} MB, "
            f"warm {warm.peak_rss_mb()} MB",
            flush=True,
        )
        warm.close()


def real_bundle(work: Path, source: Path, patch: int | None) -> Path:
    """A copy of a real bundle's configs and scripts with random full-size weights (and, on a small CPU, a smaller
    inference window)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_readiness import setup

    made = setup({"work": str(work), "bundle_source": str(source), "smoke": True}, data=False)
    bundle = Path(made["bundle"])
    if patch:
        config = json.loads((bundle / "configs" / "inference.json").read_text())
        config["patch_size"] = [patch] * 3
        (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    print(f"{source.name}: {made['parameters_millions']}M parameters, random weights", flush=True)
    return bundle


def large_ct(work: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[Path, np.ndarray]:
    """A body-sized synthetic CT (what bench/gpu_readiness.py makes) and its liver mask."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_readiness import save_nifti, synthetic_ct

    image, labels, affine = synthetic_ct(shape, spacing, labelled=3)
    path = work / "ct.nii"
    save_nifti(image, affine, path)
    return path, labels


def region_comparison(name: str, bundle: Path, image: Path, liver: np.ndarray, clicks: int, work: Path) -> None:
    """Each click answered the whole-volume way and on its windows' region, by one warm worker, side by side."""
    todo = [r for r in requests(image, liver, clicks) if "points" in r]
    shape = "x".join(map(str, nib.load(image).shape))
    print(f"\n== {name}, {shape} image: a click the whole-volume way (before) and on its region (after)", flush=True)
    warm = Warm(bundle, True, work / f"warm-region-{name}")
    print(f"warm worker start: {warm.start_seconds:.1f} s", flush=True)
    rows = []
    for index, request in enumerate(todo):
        answers = {}
        for region in (False, True):
            seconds, response, labels = warm.ask(f"{index}-{region}", request, region)
            timings = response["timings"]
            outside = 1 - timings["network_s"] / seconds
            answers[region] = (seconds, outside, labels, timings["stages"])
        same = np.array_equal(answers[False][2], answers[True][2])
        rows.append((answers[False][0], answers[True][0], answers[False][1], answers[True][1], same))
        print(
            f"click {index + 1} ({len(request['points'])} points): whole {answers[False][0]:6.2f} s "
            f"(outside the network {answers[False][1]:.0%})   region {answers[True][0]:6.2f} s "
            f"(outside {answers[True][1]:.0%})   identical {same}",
            flush=True,
        )
        for region in (False, True):
            stages = " ".join(f"{k} {v:.2f}" for k, v in answers[region][3].items())
            print(f"    {'region' if region else 'whole '} stages: {stages}", flush=True)
    warm_rows = rows[1:] or rows  # the first click also makes the region path's inversion lookup
    whole = statistics.median(r[0] for r in warm_rows)
    part = statistics.median(r[1] for r in warm_rows)
    out_whole = statistics.median(r[2] for r in warm_rows)
    out_part = statistics.median(r[3] for r in warm_rows)
    print(
        f"warm clicks (median of {len(warm_rows)}): whole {whole:.2f} s, region {part:.2f} s, ratio "
        f"{whole / part:.2f}x; share outside the network {out_whole:.0%} -> {out_part:.0%} "
        f"({out_part / out_whole:.2f}x); all identical: {all(r[4] for r in rows)}",
        flush=True,
    )
    warm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "full", "both"], default="both")
    parser.add_argument("--size", type=int, default=64, help="full-size model: the phantom's edge in voxels")
    parser.add_argument("--patch", type=int, help="full-size model: the window's edge (default the upstream 128)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--bundle", type=Path, help="a real bundle's configs and scripts (random full-size weights)")
    parser.add_argument("--ct", help="a body-sized synthetic CT of this shape, e.g. 512x512x300 (0.8x0.8x1 mm)")
    parser.add_argument("--region", action="store_true", help="only the click path before/after, warm, side by side")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vf-bench-worker-"))
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {os.getloadavg()}")
    try:
        if args.bundle or args.ct or args.region:
            bundle = real_bundle(work, args.bundle, args.patch) if args.bundle else tiny_bundle.ensure_tiny_bundle()
            shape = tuple(int(v) for v in args.ct.split("x")) if args.ct else None
            image, liver = large_ct(work, shape, (0.8, 0.8, 1.0)) if shape else phantom(work, None)
            liver = (liver == 1).astype(np.uint8)
            name = args.bundle.name if args.bundle else "tiny bundle"
            if args.region:
                region_comparison(name, bundle, image, liver, args.clicks, work)
            else:
                compare(name, bundle, image, liver, args.clicks, work)
            return
        if args.model in ("tiny", "both"):
            image, liver = phantom(work, None)
            compare("tiny bundle", tiny_bundle.ensure_tiny_bundle(), image, liver, args.clicks, work)
        if args.model in ("full", "both"):
            image, liver = phantom(work, args.size)
            patch = args.patch or 128
            name = f"full-size VISTA3D (random weights, patch {patch}^3)"
            compare(name, full_size_bundle(work, patch), image, liver, args.clicks, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
