"""Benchmark: peak GPU memory of one VISTA3D training step by patch size and number of prompted classes, with and
without point prompts (what :mod:`VistaFinetuneLib.finetune.plan` sizes the patch by).

    python bench/plan_memory.py [--patches 64,96,128,160] [--classes 1,2,4,8,16,32]

The full-size network (``vista3d132``, random weights), AMP, AdamW and a DiceCE loss per prompted class, as the
bundle's trainer does; two steps each, the second measured. Needs a CUDA GPU. Prints one JSON line per setting with
the peak allocated and peak reserved MB; the table in plan.py's docstring is this script's output on an H200.
"""

from __future__ import annotations

import argparse
import json

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import vista3d132

POINTS_PER_CLASS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", default="64,96,128,160")
    parser.add_argument("--classes", default="1,2,4,8,16,32")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("plan_memory: needs a CUDA GPU")
    network = vista3d132(in_channels=1).cuda()
    optimizer = torch.optim.AdamW(network.parameters(), lr=5e-5)
    loss = DiceCELoss(sigmoid=True, squared_pred=True, smooth_nr=1e-4, smooth_dr=1e-2)
    scaler = torch.amp.GradScaler()

    def step(size: int, n: int, points: bool) -> None:
        image = torch.randn(1, 1, size, size, size, device="cuda")
        labels = torch.randint(0, n + 1, (1, 1, size, size, size), device="cuda")
        classes = torch.arange(1, n + 1, device="cuda").view(n, 1)
        coords = torch.randint(0, size, (n, POINTS_PER_CLASS, 3), device="cuda").float() if points else None
        point_labels = torch.ones(n, POINTS_PER_CLASS, device="cuda", dtype=torch.long) if points else None
        with torch.autocast("cuda"):
            out = network(input_images=image, point_coords=coords, point_labels=point_labels, class_vector=classes)
            total = sum(loss(out[[i]].float(), (labels == classes[i]).float()) for i in range(n)) / n
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for size in (int(p) for p in args.patches.split(",")):
        for n in (int(c) for c in args.classes.split(",")):
            for points in (False, True):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                row: dict = {"patch": size, "classes": n, "points": points}
                try:
                    step(size, n, points)
                    step(size, n, points)
                    row["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
                    row["reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20)
                except torch.OutOfMemoryError:
                    row["error"] = "out of memory"
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
