"""Small bundle folders, written by the tests, that reproduce the facts of the upstream VISTA3D variants.

Only what identifies a variant is reproduced (nothing is copied from upstream): the channel count of
``configs/metadata.json``, the form of ``configs/label_dict.json`` or ``docs/labels.json``, and whether
``configs/inference.json`` picks its classes by ``modality``. The CT names come from the tiny bundle's own table;
the CT+MR classes past 132 are a few real names and numbered fillers.

- NV-Segment-CT 0.6.0: metadata lists 346 channels (the CT+MR table), the model and label_dict.json are CT.
- NV-Segment-CTMR 0.0.1s: metadata 346 channels, label_dict.json objects, inference.json ``modality`` choice,
  train.json uses ``@image_key`` without defining it.
- model-zoo vista3d 0.5.4: metadata 133 channels without "(deprecated)" marks, docs/labels.json.

Runnable ones are the tiny bundle (its network, weights and scripts) given a variant's facts:
:func:`write_runnable_ctmr` (ids to 345, everything by modality), :func:`write_runnable_model_zoo` (the sample caps
of train_continual.json and the inferer that drops class prompts above 132, as in model-zoo vista3d 0.5.4).
"""

import json
import shutil
from pathlib import Path

from VistaFinetuneLib.bundle.tiny_bundle import TEMPLATE_DIR

CT_DEF: dict[str, str] = json.loads((TEMPLATE_DIR / "configs" / "metadata.json").read_text())["network_data_format"][
    "outputs"
]["pred"]["channel_def"]
CT_NAMES = {int(k): v for k, v in CT_DEF.items() if k != "0"}
DEPRECATED_CT = (16, 129, 130, 131)
NV_CT_LABEL_DICT_OMITS = {2, 16, 18, 20, 21, 129, 130, 131}
CTMR_NAMED = {
    133: "fibula (deprecated)",
    134: "intervertebral discs",
    135: "left lung",
    136: "right lung",
    146: "vertebrae",
    155: "ascending aorta (deprecated)",
    162: "uterus (deprecated)",
    165: "thyroid left",
    214: "3rd-Ventricle",
    230: "Left-Hippocampus",
}
CTMR_DEPRECATED_FILLERS = range(137, 146)
EVERYTHING_CT = "$list(set([i+1 for i in range(132)]) - set([2,16,18,20,21,23,24,25,26,27,128,129,130,131,132]))"


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def ctmr_channel_def() -> dict[str, str]:
    """346 entries: background, the CT names (deprecated ones marked), then CT+MR classes up to 345."""
    table = {"0": "background"}
    for class_id, name in CT_NAMES.items():
        table[str(class_id)] = f"{name} (deprecated)" if class_id in DEPRECATED_CT else name
    for class_id in range(133, 346):
        if class_id in CTMR_NAMED:
            table[str(class_id)] = CTMR_NAMED[class_id]
        elif class_id in CTMR_DEPRECATED_FILLERS:
            table[str(class_id)] = f"mr structure {class_id} (deprecated)"
        else:
            table[str(class_id)] = f"mr structure {class_id}"
    return table


def metadata(channel_def: dict, version: str, modality="CT") -> dict:
    return {
        "name": "VISTA-3D: Versatile Imaging SegmenTation and Annotation",
        "version": version,
        "monai_version": "1.4.0",
        "network_data_format": {
            "inputs": {"image": {"modality": modality}},
            "outputs": {"pred": {"channel_def": channel_def}},
        },
    }


def ct_inference() -> dict:
    return {"image_key": "image", "everything_labels": EVERYTHING_CT, "patch_size": [128, 128, 128]}


def write_nv_segment_ct(folder: Path) -> Path:
    """NV-Segment-CT 0.6.0: a CT model whose metadata lists the 346-channel CT+MR table."""
    configs = folder / "configs"
    write_json(configs / "metadata.json", metadata(ctmr_channel_def(), "0.6.0"))
    write_json(configs / "label_dict.json", {n: i for i, n in CT_NAMES.items() if i not in NV_CT_LABEL_DICT_OMITS})
    write_json(configs / "inference.json", ct_inference())
    write_json(configs / "train.json", {"bundle_root": ".", "network_def": "$monai.networks.nets.vista3d132()"})
    return folder


def write_nv_segment_ctmr(folder: Path) -> Path:
    """NV-Segment-CTMR 0.0.1s: CT+MR classes, chosen at inference by modality; train.json needs image_key."""
    configs = folder / "configs"
    channel_def = ctmr_channel_def()
    write_json(configs / "metadata.json", metadata(channel_def, "0.0.1s", modality=["CT", "MRI"]))
    write_json(
        configs / "label_dict.json",
        {n.removesuffix(" (deprecated)"): {"index": int(i), "datasets": ["CT"]} for i, n in channel_def.items()
         if i != "0"},
    )  # fmt: skip
    write_json(configs / "label_mappings.json", {"TotalSegmentatorMR": [[1, 3]], "LUMIR": [[1, 214]]})
    write_json(
        configs / "inference.json",
        {
            "image_key": "image",
            "ct_body": EVERYTHING_CT,
            "mri_body": "$[i[1] for i in @label_mapping['TotalSegmentatorMR']]",
            "mri_brain": "$[i[1] for i in @label_mapping['LUMIR']]",
            "modality": "MRI_BODY",
            "everything_labels": "${'CT_BODY': @ct_body, 'MRI_BODY': @mri_body, 'MRI_BRAIN': @mri_brain}[@modality]",
            "patch_size": [192, 192, 128],
        },
    )
    write_json(configs / "train.json", {"bundle_root": ".", "preprocessing": [{"keys": "@image_key"}]})
    return folder


def write_model_zoo_vista3d(folder: Path) -> Path:
    """model-zoo vista3d 0.5.4: the 133-entry CT channel_def (no deprecation marks) and docs/labels.json."""
    write_json(folder / "configs" / "metadata.json", metadata(CT_DEF, "0.5.4"))
    write_json(folder / "docs" / "labels.json", {n: i for i, n in CT_NAMES.items()})
    write_json(folder / "configs" / "inference.json", ct_inference())
    (folder / "large_files.yml").write_text("large_files: []\n")
    return folder


CTMR_EVERYTHING = {"CT_BODY": [1, 14], "MRI_BODY": [3], "MRI_BRAIN": [300]}


def write_runnable_ctmr(tiny_bundle: Path, folder: Path) -> Path:
    """The tiny bundle with NV-Segment-CTMR's facts: the 346-entry table (ids to 345), label_mappings.json, an
    everything list picked by ``modality`` (default MRI_BODY, as upstream) and an evaluator that takes prompts
    below 512 (upstream CTMR's limit; the tiny one stops at 255)."""
    shutil.copytree(tiny_bundle, folder)
    write_nv_segment_ctmr_facts(folder)
    evaluator = folder / "scripts" / "evaluator.py"
    evaluator.write_text(evaluator.read_text().replace(">= 255", ">= 512"))
    return folder


def write_nv_segment_ctmr_facts(folder: Path) -> None:
    configs = folder / "configs"
    channel_def = ctmr_channel_def()
    write_json(configs / "metadata.json", metadata(channel_def, "0.0.1s", modality=["CT", "MRI"]))
    write_json(
        configs / "label_dict.json",
        {n.removesuffix(" (deprecated)"): {"index": int(i), "datasets": ["CT"]} for i, n in channel_def.items()
         if i != "0"},
    )  # fmt: skip
    mappings = {"TotalSegmentatorMR": [[1, 3]], "LUMIR": [[1, 300]]}
    write_json(configs / "label_mappings.json", mappings)
    inference = json.loads((configs / "inference.json").read_text())
    inference |= {
        "label_mapping": "$json.loads(pathlib.Path(@bundle_root + '/configs/label_mappings.json').read_text())",
        "ct_body": "$[1, 14]",
        "mri_body": "$[i[1] for i in @label_mapping['TotalSegmentatorMR']]",
        "mri_brain": "$[i[1] for i in @label_mapping['LUMIR']]",
        "modality": "MRI_BODY",
        "everything_labels": "${'CT_BODY': @ct_body, 'MRI_BODY': @mri_body, 'MRI_BRAIN': @mri_brain}[@modality]",
    }
    imports = inference.setdefault("imports", [])
    inference["imports"] = imports + [i for i in ("$import json", "$import pathlib") if i not in imports]
    write_json(configs / "inference.json", inference)


MODEL_ZOO_SAMPLE_CAP = 1  # model-zoo 0.5.4 caps at 10; 1 shows the cap on a four-case dataset


def write_runnable_model_zoo(tiny_bundle: Path, folder: Path) -> Path:
    """The tiny bundle with model-zoo vista3d 0.5.4's traps: ``n_train_samples``/``n_val_samples`` set in
    train_continual.json, and an inferer whose class-vector drop above ``last_supported`` ignores the points."""
    shutil.copytree(tiny_bundle, folder)
    continual = folder / "configs" / "train_continual.json"
    config = json.loads(continual.read_text())
    config |= {"n_train_samples": MODEL_ZOO_SAMPLE_CAP, "n_val_samples": MODEL_ZOO_SAMPLE_CAP}
    write_json(continual, config)
    inferer = folder / "scripts" / "inferer.py"
    text = inferer.read_text()
    guarded = "if class_vector is not None and has_points:"
    assert guarded in text, "the tiny bundle's inferer changed: update this fixture"
    inferer.write_text(text.replace(guarded, "if class_vector is not None:"))
    return folder
