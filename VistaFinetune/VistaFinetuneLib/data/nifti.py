"""Read and write single-file NIfTI-1 volumes (``.nii``, ``.nii.gz``) with numpy and the standard library only.

Slicer's own Python ships no nibabel, and the panel and the effect read and write NIfTI files in Slicer's process, so
this module is what the engine uses wherever a Slicer-side module needs a NIfTI. The affine is the one nibabel
calls the "best" affine: the sform when its code is set, else the qform, else the scanner-centred default.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

HEADER_SIZE = 348
DATA_OFFSET = 352  # header + the 4-byte extension flag
DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
CODES = {np.dtype(kind): code for code, kind in DTYPES.items()}
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, struct.error)


class NiftiError(ValueError):
    """The file is not a NIfTI-1 volume this module can read (the message says why)."""


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(voxels indexed (i, j, ...) with scl_slope/scl_inter applied, 4x4 voxel-to-RAS affine)."""
    raw = _file_bytes(Path(path))
    if len(raw) < HEADER_SIZE:
        raise NiftiError(f"only {len(raw)} bytes, shorter than a NIfTI header")
    endian = "<" if struct.unpack("<i", raw[:4])[0] == HEADER_SIZE else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != HEADER_SIZE:
        raise NiftiError("not a NIfTI-1 header (NIfTI-2 and other formats are not read here)")
    if raw[344:348] != b"n+1\x00":
        raise NiftiError(f"magic {raw[344:348]!r} is not a single-file NIfTI-1 ('n+1')")
    dims = struct.unpack(endian + "8h", raw[40:56])
    if not 1 <= dims[0] <= 7 or any(size < 1 for size in dims[1 : dims[0] + 1]):
        raise NiftiError(f"invalid dimensions {dims}")
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    if datatype not in DTYPES:
        raise NiftiError(f"unsupported NIfTI data type code {datatype}")
    shape = tuple(int(size) for size in dims[1 : dims[0] + 1])
    offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    dtype = np.dtype(endian + DTYPES[datatype])
    count = int(np.prod(shape))
    if len(raw) < offset + count * dtype.itemsize:
        raise NiftiError(f"the file is truncated: {count} voxels of {dtype.name} need more bytes than it holds")
    voxels = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    voxels = _scaled(voxels.astype(dtype.newbyteorder("="), copy=False), *struct.unpack(endian + "2f", raw[112:120]))
    return voxels, _affine(raw, endian, shape)


def write_nifti(path: Path, voxels: np.ndarray, affine: np.ndarray) -> None:
    """Write ``voxels`` (indexed (i, j, k)) with ``affine`` as both sform and qform (code 1, scanner); gzip for .gz."""
    voxels = np.asarray(voxels)
    if voxels.dtype == np.bool_:
        voxels = voxels.astype(np.uint8)
    if voxels.dtype.newbyteorder("=") not in CODES:
        raise NiftiError(f"cannot store {voxels.dtype} voxels in NIfTI")
    affine = np.asarray(affine, dtype=np.float64)
    quaternion, offset, zooms, qfac = _quaternion(affine)
    dims = [voxels.ndim, *voxels.shape] + [1] * (7 - voxels.ndim)
    pixdim = [qfac, *zooms] + [1.0] * 4
    dtype = voxels.dtype.newbyteorder("<")
    header = bytearray(DATA_OFFSET)
    struct.pack_into("<i", header, 0, HEADER_SIZE)
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<2h", header, 70, CODES[voxels.dtype.newbyteorder("=")], dtype.itemsize * 8)
    struct.pack_into("<8f", header, 76, *pixdim)
    struct.pack_into("<3f", header, 108, DATA_OFFSET, 1.0, 0.0)
    header[123] = 10  # xyzt_units: mm and seconds
    struct.pack_into("<2h", header, 252, 1, 1)
    struct.pack_into("<6f", header, 256, *quaternion, *offset)
    struct.pack_into("<12f", header, 280, *affine[:3].ravel())
    header[344:348] = b"n+1\x00"
    content = bytes(header) + np.asarray(voxels, dtype=dtype).tobytes(order="F")
    path = Path(path)
    if path.name.endswith(".gz"):
        content = gzip.compress(content, compresslevel=1)
    path.write_bytes(content)


def _file_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        start = handle.read(2)
    if start == b"\x1f\x8b":
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return path.read_bytes()


def _scaled(voxels: np.ndarray, slope: float, inter: float) -> np.ndarray:
    if slope == 0 or not np.isfinite(slope):
        return voxels
    inter = inter if np.isfinite(inter) else 0.0
    if slope == 1 and inter == 0:
        return voxels
    kind = np.float32 if voxels.dtype.itemsize <= 2 else np.float64
    return voxels.astype(kind) * kind(slope) + kind(inter)


def _affine(raw: bytes, endian: str, shape: tuple[int, ...]) -> np.ndarray:
    qform_code, sform_code = struct.unpack(endian + "2h", raw[252:256])
    pixdim = struct.unpack(endian + "8f", raw[76:108])
    zooms = np.array([abs(z) if z else 1.0 for z in pixdim[1:4]], dtype=np.float64)
    affine = np.eye(4)
    if sform_code > 0:
        affine[:3] = np.array(struct.unpack(endian + "12f", raw[280:328]), dtype=np.float64).reshape(3, 4)
    elif qform_code > 0:
        b, c, d, *offset = (float(v) for v in struct.unpack(endian + "6f", raw[256:280]))
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rotation = np.array([
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ])  # fmt: skip
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        affine[:3, :3] = rotation * (zooms * [1.0, 1.0, qfac])
        affine[:3, 3] = offset
    else:
        grid = np.array([*(shape + (1, 1, 1))[:3]], dtype=np.float64)
        affine[:3, :3] = np.diag(zooms * [-1.0, 1.0, 1.0])
        affine[:3, 3] = -(grid - 1) / 2 * zooms * [-1.0, 1.0, 1.0]
    return affine


def _quaternion(affine: np.ndarray) -> tuple[list[float], list[float], list[float], float]:
    """The qform of an affine: quaternion (b, c, d), offset, voxel sizes and qfac (nearest rotation if sheared)."""
    matrix = affine[:3, :3]
    zooms = np.sqrt((matrix**2).sum(axis=0))
    zooms[zooms == 0] = 1.0
    rotation = matrix / zooms
    qfac = 1.0
    if np.linalg.det(rotation) < 0:
        qfac, rotation = -1.0, rotation * [1.0, 1.0, -1.0]
    left, _, right = np.linalg.svd(rotation)
    r = left @ right
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] >= r[1, 1] and r[0, 0] >= r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] >= r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    if q[0] < 0:
        q = [-v for v in q]
    return [float(v) for v in q[1:]], [float(v) for v in affine[:3, 3]], [float(z) for z in zooms], qfac
