"""The tiny reference bundle exposes the upstream VISTA3D bundle's configuration interface."""

import json
import shutil
from dataclasses import asdict

import pytest

from VistaFinetuneLib import tiny_pretraining
from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.source import sha256_file
from VistaFinetuneLib.bundle.tiny_bundle import TEMPLATE_DIR
from VistaFinetuneLib.errors import UserError

pytestmark = pytest.mark.unit

CONFIGS = TEMPLATE_DIR / "configs"


def load(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def test_train_json_defines_the_upstream_top_level_keys():
    train = load("train.json")
    expected = {
        "bundle_root", "ckpt_dir", "output_dir", "data_list_file_path", "dataset_dir", "fold", "finetune",
        "finetune_model_path", "epochs", "val_interval", "val_at_start", "learning_rate", "patch_size",
        "resample_to_spacing", "drop_label_prob", "drop_point_prob", "use_mlflow", "use_tensorboard", "label_set",
        "val_label_set", "output_classes", "max_point", "max_prompt", "max_backprompt", "max_foreprompt",
        "exclude_background", "amp", "device", "sw_overlap", "num_patches_per_image", "input_channels",
        "early_stop", "network_def", "network", "loss", "optimizer", "lr_schedule", "train", "validate",
        "initialize", "run",
    }  # fmt: skip
    assert expected <= train.keys()
    assert "$import scripts" in train["imports"]
    assert train["train"]["trainer"]["_target_"] == "scripts.trainer.Vista3dTrainer"
    assert train["validate"]["evaluator"]["_target_"] == "scripts.evaluator.Vista3dEvaluator"
    saver = train["validate"]["handlers"][3]
    assert saver["_target_"] == "CheckpointSaver" and saver["key_metric_filename"] == "model.pt"
    assert "val_mean_dice" in train["validate"]["key_metric"]
    assert train["network_def"]["_target_"] == "monai.networks.nets.vista3d.VISTA3D"


def test_train_continual_overlays_like_upstream():
    continual = load("train_continual.json")
    assert continual["finetune"] is True and continual["val_at_start"] is True
    assert continual["validate#handlers#3#key_metric_filename"] == "model_finetune.pt"
    assert continual["train#handlers#0#strict"] is False
    for key in ("label_mappings", "n_train_samples", "n_val_samples", "train_dataset_cache_rate",
                "val_dataset_cache_rate", "num_classes", "label_set", "val_label_set"):  # fmt: skip
        assert key in continual
    relabel = continual["train#random_transforms"][-1]
    assert relabel["_target_"] == "monai.apps.vista3d.transforms.Relabeld"


def test_evaluate_and_inference_configs_have_their_keys():
    evaluate = load("evaluate.json")
    assert {"ckpt_path", "output_dir", "label_mappings", "label_set"} <= evaluate.keys()
    assert evaluate["validate#handlers"][2]["_target_"] == "MetricsSaver"
    inference = load("inference.json")
    assert {"input_dict", "everything_labels", "subclass", "labels_dict", "checkpointloader", "patch_size",
            "resample_spacing", "use_point_window", "output_dir"} <= inference.keys()  # fmt: skip
    assert len(inference["everything_labels"]) == 117
    assert inference["network_def"] == load("train.json")["network_def"]


def test_metadata_channel_def_covers_the_132_ct_classes():
    channel_def = load("metadata.json")["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert set(channel_def) == {str(i) for i in range(133)}
    assert channel_def["1"] == "liver" and channel_def["14"] == "left kidney" and channel_def["23"] == "lung tumor"


def test_the_only_weights_shipped_are_the_tiny_models_own():
    weights = [p.relative_to(TEMPLATE_DIR).as_posix() for p in TEMPLATE_DIR.rglob("*") if p.suffix in {".pt", ".pth"}]
    assert weights == ["models/model.pt"]


# --- the shipped weights -------------------------------------------------------------------------------------------


def test_the_shipped_weights_were_built_from_todays_template_phantoms_and_recipe():
    record = tiny_bundle.pretraining_record(TEMPLATE_DIR)
    # Changing the configs, scripts, phantom generator or recipe needs new weights: `make tiny-weights`.
    assert record["build_key"] == tiny_pretraining.build_key()
    assert record["recipe"] == asdict(tiny_pretraining.RECIPE)
    assert record["weights_sha256"] == sha256_file(TEMPLATE_DIR / "models" / "model.pt")
    assert tiny_bundle.ensure_tiny_bundle() == TEMPLATE_DIR


def test_the_shipped_weights_load_safely_into_the_bundles_network():
    import torch
    from monai.bundle import ConfigParser

    state = torch.load(TEMPLATE_DIR / "models" / "model.pt", weights_only=True, map_location="cpu")
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)  # strict: every key and shape fits
    assert state.keys() == network.state_dict().keys()
    assert sum(p.numel() for p in network.parameters()) == 272270


def test_changed_or_missing_weights_are_a_clear_error(tmp_path):
    copy = tmp_path / "TinyBundle"
    shutil.copytree(TEMPLATE_DIR, copy)
    weights = copy / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model\.pt: SHA-256 .* differs from .* recorded in .*pretraining\.json"):
        tiny_bundle.ensure_tiny_bundle(copy)
    weights.unlink()
    with pytest.raises(UserError, match=r"model\.pt: the tiny bundle's shipped file is missing"):
        tiny_bundle.ensure_tiny_bundle(copy)


def test_a_rebuild_starts_from_the_template_without_the_shipped_weights(tmp_path):
    tiny_bundle.copy_template(tmp_path / "b")
    assert (tmp_path / "b" / "configs" / "train.json").is_file()
    assert not (tmp_path / "b" / "models").exists() and not (tmp_path / "b" / "docs").exists()
