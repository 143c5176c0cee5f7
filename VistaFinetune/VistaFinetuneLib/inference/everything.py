"""The bundle's "everything" class list: ``everything_labels`` of ``inference.json``, a plain list or a ``$``
expression (NV-Segment-CT's "all but these", NV-Segment-CTMR's choice by ``modality``), evaluated as the bundle
would; and, for NV-Segment-CTMR without ``--modality``, the modality of the image (a CT gets CT_BODY, not the
bundle's default MRI_BODY; any other image is a question back to the user). Imports monai when called.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from VistaFinetuneLib.errors import UserError

CT_MODALITY = "CT_BODY"
MRI_MODALITIES = ("MRI_BODY", "MRI_BRAIN")
CT_AIR_HU = -500.0  # a CT holds air (about -1000 HU); an MRI has no values this low


def everything_labels(config: dict, bundle_dir: Path, source: Path, modality: str | None = None) -> list[int]:
    """``everything_labels`` of a raw inference config (``source`` names it in errors), evaluated."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(config))
    parser["bundle_root"] = str(bundle_dir)
    if modality is not None:
        parser["modality"] = modality
    try:
        value = parser.get_parsed_content("everything_labels")
    except KeyError:
        raise UserError(f"{source}: the bundle defines no everything_labels; give --classes") from None
    except Exception as error:  # the bundle's own expression failed
        raise UserError(f"{source}: cannot evaluate everything_labels ({type(error).__name__}: {error})") from None
    try:
        return [int(x) for x in value]
    except (TypeError, ValueError):
        raise UserError(f"{source}: everything_labels is not a list of class ids ({value!r})") from None


def chooses_modality(config: dict) -> bool:
    """Whether the config picks its everything list by ``modality`` (NV-Segment-CTMR)."""
    return "modality" in config


def looks_like_ct(image: Path) -> bool:
    """Whether the image's intensities are CT's (it holds air, below -500 HU)."""
    import nibabel as nib

    try:
        values = np.asarray(nib.load(str(image)).dataobj)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise UserError(f"{image}: cannot read the image ({error})") from None
    return bool(values.size) and float(np.nanmin(values)) < CT_AIR_HU


def modality_of(image: Path, source: Path) -> str:
    """CT_BODY for a CT image; for another image, a question: which MRI modality."""
    if looks_like_ct(image):
        return CT_MODALITY
    raise UserError(
        f"{image}: not a CT by its intensities (nothing below {CT_AIR_HU:g} HU), and {source} picks its everything "
        f"classes by modality: give --modality {' or '.join(MRI_MODALITIES)} (or {CT_MODALITY})"
    )


def folder_everything_ids(
    config_file: Path, bundle_dir: Path, overrides: tuple[Path, ...], images: list[Path], modality: str | None
) -> list[int]:
    """The everything list for a folder batch (``predict --gpus N --everything``): the config file with the
    model's overrides, evaluated; NV-Segment-CTMR without ``modality`` takes CT_BODY when every image is a CT."""
    from monai.bundle import ConfigParser

    from VistaFinetuneLib.inference.run_configs import apply_overrides

    parser = ConfigParser()
    parser.read_config(str(config_file))
    apply_overrides(parser, overrides)
    config = parser.get()
    if modality is None and chooses_modality(config):
        modality = next((modality_of(image, config_file) for image in images if not looks_like_ct(image)), CT_MODALITY)
    return everything_labels(config, bundle_dir, config_file, modality)
