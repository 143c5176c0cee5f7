"""The bundle on the newest MONAI (>= 1.5) with numpy 2: the crash the compatibility override exists for, and a real
tiny finetune that completes with the override stacked. Run by ``make test-newest-monai`` in .venv-newest-monai;
skipped in an environment with MONAI < 1.5 (the reference stack)."""

import json
import math
import subprocess
import sys

import pytest

from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.compat import FLOAT_TARGET_LOSS, installed_monai, monai_version_tuple

pytestmark = pytest.mark.newest_monai

MONAI = installed_monai()
if MONAI is None or monai_version_tuple(MONAI) < (1, 5):
    pytest.skip(f"needs monai >= 1.5 (installed: {MONAI}); run `make test-newest-monai`", allow_module_level=True)


def bundle_loss():
    """The loss of the VISTA3D bundle's train.json."""
    from monai.losses import DiceCELoss

    return DiceCELoss(
        include_background=True, sigmoid=True, smooth_dr=1e-5, smooth_nr=0, squared_pred=True, to_onehot_y=False
    )


def test_bool_target_crashes_without_the_override_and_not_with_it():
    import torch

    from VistaFinetuneLib.bundle.compat import FloatTargetLoss

    torch.manual_seed(0)
    prediction = torch.randn(1, 1, 8, 8, 8)
    target = torch.rand(1, 1, 8, 8, 8) > 0.5  # what the bundle's trainer passes: labels == prompt_class[i]
    with pytest.raises(RuntimeError, match=r"vector_norm.*Bool"):
        bundle_loss()(prediction, target)
    wrapped = FloatTargetLoss(bundle_loss())(prediction, target)
    assert torch.isfinite(wrapped)
    assert torch.allclose(wrapped, bundle_loss()(prediction, target.float()))


def test_environment_report_names_the_override():
    from VistaFinetuneLib.jobs.environment import probe_interpreter, requirements_report, unmet

    report = requirements_report(probe_interpreter(sys.executable))
    assert not unmet(report), report
    assert any(FLOAT_TARGET_LOSS in line for line in report)


def test_tiny_finetune_completes_with_the_override(tmp_path):
    bundle = str(tiny_bundle.ensure_tiny_bundle())  # the shipped weights, the same in both environments
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "VistaFinetuneLib", "finetune", "--smoke", "--skip-formal-eval", "--skip-review",
        "--epochs", "2", "--bundle-dir", bundle, "--output-dir", str(run_dir),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = json.loads((run_dir / "output.json").read_text())
    assert output["status"] == "completed", output.get("error")
    assert output["compatibility_overrides"] == [FLOAT_TARGET_LOSS]
    packages = output["environment"]["packages"]
    assert monai_version_tuple(packages["monai"]) >= (1, 5)
    assert monai_version_tuple(packages["numpy"]) >= (2, 0)
    dice = output["output"]["val_dice_per_epoch"]  # the validation before training, then one per epoch
    assert len(dice) == 3 and all(value is not None and math.isfinite(value) for value in dice), dice
    assert dice[0] == output["output"]["training_start_val_dice"]
    print(f"monai {packages['monai']}, numpy {packages['numpy']}: val Dice per epoch {dice}, "
          f"finetune wall {output['runtime']['wall_seconds']} s")  # fmt: skip


class UpstreamPointTransformStandIn:
    """The upstream NV-Segment-CT evaluator's point lines (``_iteration`` with user prompts), without the engine."""

    def transform_points(self, point, affine):
        import numpy as np

        bs, n = point.shape[:2]
        point = np.concatenate((point, np.ones((bs, n, 1))), axis=-1)
        point = (affine @ point.reshape(bs * n, 4).T).T.reshape(bs, n, 4)
        return point[:, :, :3]

    def map_points(self, points, image_affine, original_affine):
        import numpy as np
        import torch

        points = torch.as_tensor([points])
        points = self.transform_points(points, np.linalg.inv(image_affine) @ original_affine.numpy())
        return torch.from_numpy(points)


def test_point_prompts_crash_the_upstream_evaluator_under_numpy_2_and_not_through_the_engine():
    import numpy as np
    import torch

    from VistaFinetuneLib.inference.evaluator import allowing_class_ids

    assert int(np.__version__.split(".")[0]) >= 2
    image_affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    original_affine = torch.eye(4, dtype=torch.float64)
    with pytest.raises(TypeError, match="expected np.ndarray"):
        UpstreamPointTransformStandIn().map_points([[4.0, 6.0, 9.0]], image_affine, original_affine)
    engine = allowing_class_ids(UpstreamPointTransformStandIn, [])()
    mapped = engine.map_points([[4.0, 6.0, 9.0]], image_affine, original_affine)
    assert mapped.tolist() == [[[2.0, 3.0, 3.0]]]
