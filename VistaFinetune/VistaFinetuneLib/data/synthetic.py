"""Synthetic CT-like phantoms: Hounsfield-unit volumes with organ-like label maps, written as NIfTI.

Every case is a body cross-section (air, subcutaneous fat, a muscle wall, visceral fat, a spine of bone)
holding smoothed blob-shaped organs with their own intensity. Shapes are defined in world (RAS, mm)
coordinates and sampled through each case's affine, so the anatomy stays put while spacing, origin and
direction change from case to case. A case depends only on the seed and its index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from VistaFinetuneLib.data.geometry import grid_centre_ras, voxel_centres_ras
from VistaFinetuneLib.data.nifti import write_nifti

AIR_HU = -1000.0
FAT_HU = -90.0
MUSCLE_HU = 50.0
BONE_HU = 700.0


@dataclass(frozen=True)
class Organ:
    """A blob-shaped structure: centre and semi-axes in mm (RAS), mean intensity in HU."""

    name: str
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    hu: float


# Positions are relative to the body centre, in RAS: +x is the patient's right, so the liver (and the lesion in
# it) lies at x > 0, the spleen and the left kidney at x < 0.
ORGANS: dict[str, Organ] = {
    organ.name: organ
    for organ in (
        Organ("liver", (22.0, 2.0, 4.0), (22.0, 20.0, 24.0), 110.0),
        Organ("spleen", (-28.0, 14.0, 8.0), (12.0, 11.0, 16.0), 45.0),
        Organ("left kidney", (-26.0, -18.0, -14.0), (10.0, 9.0, 14.0), 230.0),
        Organ("lesion", (26.0, 4.0, 6.0), (7.0, 7.0, 7.0), 15.0),
    )
}


@dataclass(frozen=True)
class PhantomSpec:
    """What a dataset of phantoms looks like."""

    shape: tuple[int, int, int] = (64, 64, 40)
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 3.0)
    label_values: dict[str, int] = field(default_factory=lambda: {"liver": 1, "spleen": 2, "left kidney": 3})
    noise_hu: float = 12.0


MICRO_SPEC = PhantomSpec(shape=(48, 48, 32), spacing_mm=(2.5, 2.5, 3.5))


def case_affine(rng: np.random.Generator, spec: PhantomSpec) -> np.ndarray:
    """A voxel-to-RAS affine with jittered spacing, an LPS-like axis flip, a small tilt and a non-zero origin."""
    spacing = np.asarray(spec.spacing_mm) * rng.uniform(0.9, 1.1, size=3)
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    tilt = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    direction = tilt @ np.diag([-1.0, -1.0, 1.0])
    linear = direction * spacing
    centre_offset = rng.uniform(-20.0, 20.0, size=3) + np.array([0.0, 0.0, -600.0])
    half_extent = linear @ ((np.asarray(spec.shape) - 1) / 2.0)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre_offset - half_extent
    return affine


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-peak low-frequency noise used to roughen blob surfaces."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return noise / (np.abs(noise).max() + 1e-9)


def make_case(seed: int, index: int, spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom: (HU image as int16, label map as uint8, affine).

    Every organ is drawn into the image; only those named in ``spec.label_values`` are labelled, so a model
    can see a structure it was never taught.
    """
    rng = np.random.default_rng([seed, index])
    affine = case_affine(rng, spec)
    centre = grid_centre_ras(affine, spec.shape)
    x, y, z = voxel_centres_ras(affine, spec.shape) - centre[:, None, None, None]
    image = np.full(spec.shape, AIR_HU)
    body_a, body_b = rng.uniform(52.0, 58.0), rng.uniform(40.0, 46.0)
    body = (x / body_a) ** 2 + (y / body_b) ** 2
    image[body <= 1.0] = FAT_HU  # subcutaneous fat
    image[(x / (body_a - 5.0)) ** 2 + (y / (body_b - 5.0)) ** 2 <= 1.0] = MUSCLE_HU  # abdominal wall
    image[(x / (body_a - 12.0)) ** 2 + (y / (body_b - 12.0)) ** 2 <= 1.0] = FAT_HU  # visceral fat
    spine = (x / 8.0) ** 2 + ((y + body_b - 14.0) / 8.0) ** 2 <= 1.0
    image[spine] = BONE_HU
    label = np.zeros(spec.shape, dtype=np.uint8)
    roughness = _smooth_field(rng, spec.shape, sigma=4.0)
    for organ in ORGANS.values():
        shift = rng.uniform(-3.0, 3.0, size=3)
        scale = rng.uniform(0.9, 1.1, size=3)
        cx, cy, cz = np.asarray(organ.centre_mm) + shift
        rx, ry, rz = np.asarray(organ.radii_mm) * scale
        distance = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2
        mask = distance + 0.25 * roughness <= 1.0
        image[mask] = organ.hu + rng.uniform(-10.0, 10.0)
        label[mask] = spec.label_values.get(organ.name, 0)
    image = ndimage.gaussian_filter(image, sigma=0.6) + rng.normal(0.0, spec.noise_hu, spec.shape)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), label, affine


def write_dataset(
    out_dir: Path, num_cases: int, seed: int = 0, spec: PhantomSpec = PhantomSpec(), prefix: str = "case"
) -> list[dict[str, str]]:
    """Write ``imagesTr/`` and ``labelsTr/`` NIfTI pairs; return datalist items with relative paths."""
    out_dir = Path(out_dir)
    (out_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(num_cases):
        image, label, affine = make_case(seed, index, spec)
        name = f"{prefix}_{index:03d}.nii.gz"
        for folder, array in (("imagesTr", image), ("labelsTr", label)):
            write_nifti(out_dir / folder / name, array, affine)
        items.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    return items
