"""``vista-finetune bundle info`` describes a bundle without touching it; ``bundle download`` fails cleanly offline."""

import hashlib
import json
from pathlib import Path

import pytest
from conftest import tree_digest

from VistaFinetuneLib.bundle import source as bundle_source
from VistaFinetuneLib.bundle.source import bundle_info, download_bundle
from VistaFinetuneLib.cli import main
from VistaFinetuneLib.errors import UserError

pytestmark = pytest.mark.unit

OFFLINE_HINT = "you are offline or the host is unreachable — download it elsewhere and pass --bundle-dir"


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.mark.e2e
def test_info_on_the_tiny_bundle(tiny_bundle_dir, capsys):
    before = tree_digest(tiny_bundle_dir)
    info = bundle_info(tiny_bundle_dir)
    assert info["name"] == "VistaFinetune tiny VISTA3D" and info["version"] == "0.1.0"
    assert {k for k, ok in info["configs"].items() if ok} == {
        "train",
        "train_continual",
        "evaluate",
        "inference",
        "metadata",
    }
    weights = tiny_bundle_dir / "models" / "model.pt"
    assert info["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["weights"]["size_bytes"] == weights.stat().st_size
    assert info["labels"]["classes"] == 132 and info["labels"]["source"].endswith("configs/metadata.json")
    assert info["ctmr"] is False and info["image_key_needed"] is False and info["variant"]["key"] == "tiny"
    assert info["monai_version"]["required"] == "1.4.0"
    assert main(["bundle", "info", str(tiny_bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert info["weights"]["sha256"] in out and "132 classes" in out and "variant      VistaFinetune tiny" in out
    assert tree_digest(tiny_bundle_dir) == before  # info never writes into the bundle


def test_info_on_a_ctmr_style_bundle_without_weights(tmp_path, capsys):
    channel_def = {str(i): f"class {i}" for i in range(346)}
    write_json(
        tmp_path / "configs" / "metadata.json",
        {
            "name": "x",
            "version": "0.0.1",
            "monai_version": "1.4.0",
            "network_data_format": {"outputs": {"pred": {"channel_def": channel_def}}},
        },
    )
    before = tree_digest(tmp_path)
    info = bundle_info(tmp_path)
    assert info["ctmr"] is True and "channel count (345 classes)" in info["variant"]["reasons"][0]
    assert info["labels"]["classes"] == 345 and info["weights"] is None
    assert main(["bundle", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "weights      missing" in out and "free ids     none:" in out
    assert tree_digest(tmp_path) == before


def test_label_dict_with_object_entries_means_ctmr(tmp_path):
    write_json(tmp_path / "configs" / "label_dict.json", {"liver": {"index": 1, "CT": [], "MRI": []}})
    info = bundle_info(tmp_path)
    assert info["ctmr"] is True and info["configs"]["label_dict"] and info["labels"]["classes"] == 1
    write_json(tmp_path / "configs" / "label_dict.json", {"liver": 1})
    assert bundle_info(tmp_path)["ctmr"] is False


def test_info_on_a_folder_without_configs_is_a_user_error(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    with pytest.raises(UserError, match="not a MONAI bundle folder"):
        bundle_info(tmp_path)
    assert main(["bundle", "info", str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "version", "where"),
    [
        ("vista3d", "0.5.4", "monaihosting"),
        ("nv-segment-ct", "afb51518689f71e6abb367ee6301b2cd0225c66a", "huggingface.co/nvidia/NV-Segment-CT"),
    ],
)
def test_download_offline_fails_cleanly(name, version, where, tmp_path, monkeypatch, capsys):
    """The real monai / huggingface_hub download, failing on the network as it does for an offline user."""
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    dest = tmp_path / "bundles"
    dest.mkdir()
    assert main(["bundle", "download", "--name", name, "--dir", str(dest)]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot download {name} {version} from {where}" in err
    assert OFFLINE_HINT in err
    assert list(dest.iterdir()) == []  # no partial folder left


def test_download_into_a_new_folder_leaves_nothing_when_offline(tmp_path):
    dest = tmp_path / "new" / "bundles"
    with pytest.raises(UserError, match="offline"):
        download_bundle("vista3d", dest, log=lambda m: None)
    assert not dest.exists()


def test_unknown_name_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bundle", "download", "--name", "vista4d", "--dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'vista4d'" in capsys.readouterr().err


def fake_snapshot(weights: bytes):
    """Stands in for huggingface_hub.snapshot_download: writes the NV-Segment-CT repo layout."""

    def download(source, version, work):
        bundle = work / source.name
        (bundle / "vista3d_pretrained_model").mkdir(parents=True)
        (bundle / "vista3d_pretrained_model" / "model.pt").write_bytes(weights)
        (bundle / "metadata.json").write_text(json.dumps({"name": "NV-Segment-CT", "version": "0.5.10"}))
        return bundle

    return download


def test_snapshot_is_staged_checksummed_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_source, "_download_huggingface", fake_snapshot(b"weights"))
    bundle = download_bundle("nv-segment-ctmr", tmp_path, log=lambda m: None)
    assert bundle == tmp_path / "nv-segment-ctmr"
    assert (bundle / "models" / "model.pt").read_bytes() == b"weights"
    assert (bundle / "configs" / "metadata.json").is_file()
    record = json.loads((bundle / "download.json").read_text())
    assert record["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert record["version"] == "main" and record["pinned"] is False
    assert "models/model.pt" in record["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nv-segment-ctmr"]
    assert bundle_info(bundle)["download"]["sha256"] == record["sha256"]
    with pytest.raises(UserError, match="already exists"):
        download_bundle("nv-segment-ctmr", tmp_path, log=lambda m: None)


def test_pinned_checksum_mismatch_is_refused_and_nothing_kept(tmp_path, monkeypatch):
    revision = bundle_source.SOURCES["nv-segment-ct"].default_version
    monkeypatch.setattr(bundle_source, "_download_huggingface", fake_snapshot(b"tampered"))
    monkeypatch.setitem(bundle_source.KNOWN_SHA256, ("nv-segment-ct", revision), hashlib.sha256(b"good").hexdigest())
    with pytest.raises(UserError, match="SHA-256"):
        download_bundle("nv-segment-ct", tmp_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(bundle_source, "_download_huggingface", fake_snapshot(b"good"))
    bundle = download_bundle("nv-segment-ct", tmp_path, log=lambda m: None)
    assert json.loads((bundle / "download.json").read_text())["pinned"] is True
