"""User strings reach MONAI's config parser as inert text, never as expressions, references or macros."""

import pytest

from VistaFinetuneLib.bundle.config_text import is_inert, literal

pytestmark = pytest.mark.unit

NASTY = [
    "$__import__('os').system('touch PWNED')",
    "@network_def",
    "%configs/train.json#network",
    "/data/run@#ckpt_dir/x",
    "/tmp/100%#done",
    "/tmp/plain path with spaces/and 'quotes' and é",
]


def parsed(value):
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": "SECRET", "value": value})
    return parser.get_parsed_content("value")


@pytest.mark.parametrize("text", NASTY)
def test_literal_round_trips_through_the_real_config_parser(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parsed(literal(text)) == text
    assert not (tmp_path / "PWNED").exists()


def test_unescaped_expression_would_run_which_is_what_literal_prevents(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed("$__import__('pathlib').Path('PWNED').write_text('x')")
    assert (tmp_path / "PWNED").exists()  # the danger is real ...
    (tmp_path / "PWNED").unlink()
    parsed(literal("$__import__('pathlib').Path('PWNED').write_text('x')"))
    assert not (tmp_path / "PWNED").exists()  # ... and literal() defuses it


def test_absolute_paths_stay_readable():
    assert is_inert("/data/Task06_Lung/imagesTr/lung_001.nii.gz")
    assert literal("/data/x y/$z") == "/data/x y/$z"
    assert not is_inert("$x") and not is_inert("@x") and not is_inert("/a/@#b")
