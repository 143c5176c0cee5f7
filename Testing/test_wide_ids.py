"""Class ids above 254 (NV-Segment-CTMR's MRI_BRAIN classes run to 345) are never written wrapped, "not processed"
is a mask of its own (not the value 255), and a CT sent to a CTMR bundle without --modality gets CT_BODY.

The bundle is the tiny one given NV-Segment-CTMR's facts (:func:`variant_bundles.write_runnable_ctmr`); its weights
give class 300 the liver's embedding, so a class prompt of 300 finds the liver."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from variant_bundles import CTMR_EVERYTHING, write_runnable_ctmr

from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.inference.outputs import label_array, unprocessed_mask

WIDE_ID = 300  # 300 as uint8 would be 44
SPEC = synthetic.PhantomSpec(shape=(40, 40, 28), spacing_mm=(2.5, 2.5, 3.5), label_values={"liver": 1})


@pytest.fixture(scope="module")
def ctmr(tiny_bundle_dir, tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A CTMR-style bundle whose class 300 is the liver, a CT phantom and its liver mask."""
    import torch

    from VistaFinetuneLib.finetune.checkpoints import load_state_dict

    root = tmp_path_factory.mktemp("ctmr")
    bundle = write_runnable_ctmr(tiny_bundle_dir, root / "bundle")
    state = load_state_dict(bundle / "models" / "model.pt")
    key = next(k for k in state if k.startswith("class_head.") and k.endswith("class_embeddings.weight"))
    state[key][WIDE_ID] = state[key][1].clone()
    torch.save(state, bundle / "models" / "model.pt")
    synthetic.write_dataset(root / "data", 1, seed=31, spec=SPEC)
    image = root / "data" / "imagesTr" / "case_000.nii.gz"
    truth = np.asarray(nib.load(root / "data" / "labelsTr" / "case_000.nii.gz").dataobj) == 1
    return bundle, image, truth


def predicted(out_dir: Path) -> tuple[np.ndarray, dict]:
    image = nib.load(out_dir / "case_000.nii.gz")
    legend = json.loads((out_dir / "case_000.legend.json").read_text())
    return np.asarray(image.dataobj), legend | {"dtype": str(image.get_data_dtype())}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_a_class_above_254_is_written_as_itself_in_uint16(ctmr, tmp_path):
    bundle, image, truth = ctmr
    assert (
        main(["predict", str(image), "--bundle-dir", str(bundle), "--classes", "300", "--output-dir", str(tmp_path)])
        == 0
    )
    labels, legend = predicted(tmp_path)
    assert legend["dtype"] == "uint16"
    assert set(np.unique(labels)) <= {0, WIDE_ID} and dice(labels == WIDE_ID, truth) > 0.5
    assert legend["labels"][str(WIDE_ID)]["voxels"] == int((labels == WIDE_ID).sum())


def test_a_ct_without_modality_gets_the_ct_everything_list(ctmr, tmp_path):
    bundle, image, _ = ctmr
    assert (
        main(["predict", str(image), "--bundle-dir", str(bundle), "--everything", "--output-dir", str(tmp_path)]) == 0
    )
    assert predicted(tmp_path)[1]["prompts"]["classes"] == CTMR_EVERYTHING["CT_BODY"]  # not MRI_BODY, the default


def test_an_mri_without_modality_is_asked_for_it_and_mri_brain_gives_ids_above_254(ctmr, tmp_path, capsys):
    bundle, image, truth = ctmr
    source = nib.load(image)
    mri = tmp_path / "mri.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj, dtype=np.float32) + 1100.0, source.affine), mri)
    args = ["predict", str(mri), "--bundle-dir", str(bundle), "--everything"]
    assert main([*args, "--output-dir", str(tmp_path / "asked")]) != 0
    assert "give --modality MRI_BODY or MRI_BRAIN" in capsys.readouterr().err
    assert main([*args, "--modality", "MRI_BRAIN", "--output-dir", str(tmp_path / "brain")]) == 0
    labels = np.asarray(nib.load(tmp_path / "brain" / "mri.nii.gz").dataobj)
    assert labels.dtype == np.uint16 and WIDE_ID in np.unique(labels)


def test_not_processed_is_a_mask_and_255_can_be_a_class():
    values = np.array([0.0, 255.0, np.nan, 300.0, 7.0])
    assert unprocessed_mask(values, [7]).tolist() == [False, True, True, False, False]
    assert unprocessed_mask(values, [255, 300]).tolist() == [False, False, True, False, False]
    assert label_array(np.array([0, 254])).dtype == np.uint8
    wide = label_array(np.array([0, 255, 345]))
    assert wide.dtype == np.uint16 and wide.tolist() == [0, 255, 345]
    with pytest.raises(ValueError):
        label_array(np.array([-1, 3]))


def test_the_multi_gpu_path_refuses_class_255(ctmr, tmp_path):
    from VistaFinetuneLib.inference.models import pretrained_model
    from VistaFinetuneLib.inference.multi_gpu import multi_gpu_run

    with pytest.raises(UserError, match="class 255: .*on one GPU"):
        multi_gpu_run(pretrained_model(ctmr[0]), tmp_path, tmp_path / "work", [3, 255], 2)


def test_the_scene_reads_255_as_not_processed_only_in_narrow_files(tmp_path):
    from VistaFinetuneLib.scene.predictions import class_values

    narrow = class_values(np.array([0, 3, 255], dtype=np.uint8), tmp_path)
    assert narrow.tolist() == [0, 3, 0]
    wide = class_values(np.array([0, 255, 300], dtype=np.uint16), tmp_path)
    assert wide.dtype == np.uint16 and wide.tolist() == [0, 255, 300]


def test_finetuning_a_class_above_254_is_refused_clearly(ctmr):
    from VistaFinetuneLib.bundle.labels import LabelCatalog
    from VistaFinetuneLib.data.mapping import check_mapping

    with pytest.raises(UserError, match=r"\[1, 300\].*8-bit.*predicted but not finetuned"):
        check_mapping([[1, WIDE_ID]], [1], LabelCatalog.from_bundle(ctmr[0]))
