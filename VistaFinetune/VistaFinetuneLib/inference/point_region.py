"""A click costs a window, not a volume: the bundle's post-processing of a point-window prediction, on the region
the point windows cover only.

With the bundle's point window the network sees only the windows centred on the clicks; the stitched prediction is
NaN ("not processed") everywhere else. The bundle's own path then runs its post-processing (``VistaPostTransformd``:
the connected components that hold the positive clicks) and the inversion (``Invertd``, nearest neighbour, back to the
input's grid) over the whole image. Here:

- ``VistaPostTransformd`` runs on the bounding box of the processed voxels (the clicks shifted into it): outside it
  there is nothing to connect, so the components are the same;
- the inversion is a lookup: once per image, the bundle's own ``Invertd`` inverts an image of voxel coordinates, so
  each input voxel learns which preprocessed voxel nearest-neighbour inversion reads for it (value-independent); a
  click then reads, for the input voxels of its windows' regions only (one per group of touching windows, so a far
  negative click does not cost the volume between), the processed values at those coordinates;
- the result is that region of the input's grid (everything outside it is "not processed", 0 in the output), with
  the offset of its first voxel.

Voxel for voxel what the whole-volume path gives (tested on the tiny network; bench/gpu_readiness.py checks the
full-size one). The module imports numpy only; torch is imported where a function needs it (the job environment),
so :func:`place_region` can be used in Slicer's process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from VistaFinetuneLib.inference.outputs import label_array


@dataclass
class Region:
    """Labels on a box of the input's grid: ``labels[i, j, k]`` is input voxel ``start + (i, j, k)``."""

    start: tuple[int, int, int]
    labels: np.ndarray  # class ids (uint8, uint16 above 254), 0 where no window reached
    unprocessed: np.ndarray  # True where no window reached


def place_region(labels: np.ndarray, start, shape) -> np.ndarray:
    """The whole label map of a region answer: the region's labels at ``start``, 0 elsewhere."""
    full = np.zeros(tuple(int(s) for s in shape), dtype=labels.dtype)
    i, j, k = (int(s) for s in start)
    full[i : i + labels.shape[0], j : j + labels.shape[1], k : k + labels.shape[2]] = labels
    return full


class InverseLookup:
    """For each input voxel, the preprocessed voxel the bundle's nearest-neighbour inversion reads (-1: padding),
    and per input slice the range of preprocessed coordinates it reads (to find a region without a full scan)."""

    def __init__(self, invert, image) -> None:
        """``invert``: the bundle's ``Invertd`` (key ``pred``, orig key the image); ``image``: the preprocessed
        image (a MetaTensor carrying its transforms)."""
        import copy

        import torch
        from monai.data import MetaTensor
        from monai.transforms import reset_ops_id

        image = reset_ops_id(copy.deepcopy(image))  # as the evaluator does: any copy of the transforms inverts it
        shape = image.shape[1:]
        axes = torch.meshgrid(*(torch.arange(1, n + 1, dtype=torch.float32) for n in shape), indexing="ij")
        coordinates = MetaTensor(torch.stack(axes).to(image.device), affine=image.affine, meta=dict(image.meta))
        inverted = invert({"pred": coordinates, invert.orig_keys[0]: image})["pred"]
        self.coordinates = (torch.as_tensor(inverted).round() - 1).to(torch.int16).cpu()  # [3, X, Y, Z]
        self.shape = tuple(self.coordinates.shape[1:])
        reduce = ((1, 2), (0, 2), (0, 1))  # over the other two input axes: one range per input slice
        self.low = [self.coordinates.amin(dim=(d[0] + 1, d[1] + 1)) for d in reduce]  # [3 channels, n]
        self.high = [self.coordinates.amax(dim=(d[0] + 1, d[1] + 1)) for d in reduce]

    def region_of(self, box: tuple[slice, slice, slice]) -> tuple[slice, slice, slice] | None:
        """A box of input voxels outside which no voxel reads from the preprocessed ``box``."""
        import torch

        region = []
        for axis in range(3):
            reads = torch.ones(self.shape[axis], dtype=torch.bool)
            for channel, part in enumerate(box):
                reads &= (self.high[axis][channel] >= part.start) & (self.low[axis][channel] < part.stop)
            found = torch.nonzero(reads).flatten()
            if len(found) == 0:
                return None
            region.append(slice(int(found[0]), int(found[-1]) + 1))
        return tuple(region)

    def read(self, values, box: tuple[slice, slice, slice], region: tuple[slice, slice, slice]) -> np.ndarray:
        """``values`` (the preprocessed ``box``, [X, Y, Z]) read at the input voxels of ``region``; NaN where they
        read outside the box."""
        import torch

        coordinates = self.coordinates[(slice(None), *region)].to(torch.int64)
        local = [coordinates[axis] - box[axis].start for axis in range(3)]
        inside = torch.ones(local[0].shape, dtype=torch.bool)
        for axis in range(3):
            inside &= (local[axis] >= 0) & (local[axis] < values.shape[axis])
        out = torch.full(local[0].shape, float("nan"), dtype=torch.float32)
        out[inside] = values.float().cpu()[local[0][inside], local[1][inside], local[2][inside]]
        return out.numpy()


def window_boxes(prediction, box: tuple[slice, slice, slice], stride: int = 8) -> list[tuple[slice, slice, slice]]:
    """Boxes (within ``box``) that together hold every processed voxel: one per group of touching windows, found on
    a ``stride``-subsampled mask and widened by ``stride`` (each window is at least that wide, so none is missed)."""
    import torch
    from scipy import ndimage

    reached = ~torch.isnan(prediction[0][box][::stride, ::stride, ::stride])
    groups, _ = ndimage.label(reached.cpu().numpy())
    boxes = []
    for found in ndimage.find_objects(groups):
        boxes.append(tuple(
            slice(max(b.start, b.start + f.start * stride - stride), min(b.stop, b.start + f.stop * stride + stride))
            for b, f in zip(box, found, strict=True)
        ))  # fmt: skip
    return boxes


def processed_box(prediction) -> tuple[slice, slice, slice] | None:
    """The bounding box of the voxels a window reached (not NaN) in a prediction [C, X, Y, Z]."""
    import torch

    reached = ~torch.isnan(prediction[0])
    found = [torch.nonzero(reached.any(dim=d)).flatten() for d in ((1, 2), (0, 2), (0, 1))]
    if any(len(f) == 0 for f in found):
        return None
    return tuple(slice(int(f[0]), int(f[-1]) + 1) for f in found)


def region_labels(output: dict, post_transform, lookup: InverseLookup, stage=None) -> Region | None:
    """The bundle's post-processing and inversion of one point-window ``output`` (the evaluator's dict: ``pred``
    on the preprocessed grid, ``points``, ``point_labels``, ``label_prompt``), on the covered region only.
    ``stage(name)``: a context that times the steps (``postprocess``, ``inversion``)."""
    import torch

    stage = stage or (lambda name: contextlib.nullcontext())

    prediction = output["pred"]
    box = processed_box(prediction)
    if box is None:
        return None
    region = lookup.region_of(box)
    if region is None:
        return None
    start = torch.tensor([part.start for part in box], dtype=torch.float32)
    points = output.get("points")
    data = {
        "pred": torch.as_tensor(prediction)[(slice(None), *box)].clone(),
        "points": None if points is None else torch.as_tensor(points) - start.to(torch.as_tensor(points).device),
        "point_labels": output.get("point_labels"),
        "label_prompt": output.get("label_prompt"),
    }
    with stage("postprocess"):
        values = post_transform(data)["pred"][0]
    with stage("inversion"):
        shape = tuple(r.stop - r.start for r in region)
        read_values = np.full(shape, np.nan, dtype=np.float32)
        for window in window_boxes(prediction, box):  # far-apart clicks: read each group's region, not all between
            part = lookup.region_of(window)
            if part is None:
                continue
            inner = tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(window, box, strict=True))
            read = lookup.read(values[inner], window, part)
            target = tuple(slice(p.start - r.start, p.stop - r.start) for p, r in zip(part, region, strict=True))
            read_values[target] = np.where(np.isnan(read), read_values[target], read)
        unprocessed = np.isnan(read_values)
        labels = label_array(np.where(unprocessed, 0, read_values))
    return Region(tuple(part.start for part in region), labels, unprocessed)
