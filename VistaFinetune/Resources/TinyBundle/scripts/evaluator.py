"""VISTA3D evaluator: validation against labels with class prompts, or inference with user prompts."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.transforms import reset_ops_id
from monai.utils.enums import CommonKeys as Keys

VALID_POINT_LABELS = (-1, 0, 1, 2, 3)


class Vista3dEvaluator(SupervisedEvaluator):
    """Supervised evaluator for VISTA3D.

    ``hyper_kwargs["user_prompt"]`` selects the mode: ``False`` validates with one class prompt per entry of
    ``label_set`` (``val_head: "auto"``) or with sampled points (``val_head: "point"``); ``True`` runs the
    prompts found in each item (``label_prompt``, ``points``, ``point_labels``), falling back to
    ``everything_labels`` when an item has none.
    """

    def __init__(self, device: torch.device, val_data_loader, network: torch.nn.Module, hyper_kwargs=None, **kwargs):
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, **kwargs)
        self.hyper_kwargs: dict[str, Any] = hyper_kwargs or {}

    def check_prompts_format(self, label_prompt, points, point_labels):
        """Validate user prompts; return them, with ``everything_labels`` when no prompt was given."""
        if label_prompt is None and points is None:
            everything = self.hyper_kwargs.get("everything_labels")
            if everything is None:
                raise ValueError("Prompt must be given for inference.")
            return [torch.tensor(x) for x in everything], None, None
        if label_prompt is not None:
            if not isinstance(label_prompt, list) or any(torch.as_tensor(x).numel() != 1 for x in label_prompt):
                raise ValueError("Label prompt must be a list of single scalars, [1,2,3,4,...,].")
            if any(int(x) >= 255 for x in label_prompt):
                raise ValueError("Current bundle only supports label prompt smaller than 255.")
        if (points is None) != (point_labels is None):
            raise ValueError("Points and point labels must be given together.")
        if points is not None:
            if any(len(p) != 3 for p in points):
                raise ValueError("Points must be three dimensional (x,y,z) in the shape of [[x,y,z],...,[x,y,z]].")
            if len(points) != len(point_labels):
                raise ValueError("Points must match point labels.")
            if any(int(x) not in VALID_POINT_LABELS for x in point_labels):
                raise ValueError("Point labels can only be -1,0,1 and 2,3 for special flags.")
            if label_prompt is not None and len(label_prompt) != 1:
                raise ValueError("Label prompt can only be a single object if provided with point prompts.")
        return label_prompt, points, point_labels

    @staticmethod
    def transform_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Map points [B, N, 3] through a 4x4 affine."""
        homogeneous = np.concatenate([points, np.ones((*points.shape[:2], 1))], axis=-1)
        return (homogeneous @ affine.T)[..., :3]

    def _user_prompts(self, engine, batchdata):
        inputs = batchdata[Keys.IMAGE].to(engine.state.device)
        label_prompt, points, point_labels = self.check_prompts_format(
            batchdata.get("label_prompt"), batchdata.get("points"), batchdata.get("point_labels")
        )
        if label_prompt is not None:
            label_prompt = torch.as_tensor([int(x) for x in label_prompt], device=inputs.device).unsqueeze(-1)
        if points is not None:
            points = np.asarray([[[float(c) for c in p] for p in points]])
            to_model = np.linalg.inv(inputs.affine[0].cpu().numpy()) @ inputs.meta["original_affine"][0].cpu().numpy()
            points = torch.from_numpy(self.transform_points(points, to_model)).to(inputs.device)
            point_labels = torch.as_tensor([[int(x) for x in point_labels]], device=inputs.device)
        return inputs, None, label_prompt, points, point_labels

    def _label_prompts(self, engine, batchdata):
        inputs, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        label_set = self.hyper_kwargs.get("label_set")
        if label_set is None:
            label_set = list(range(self.hyper_kwargs["output_classes"]))
        label_prompt = torch.tensor(label_set, device=inputs.device).unsqueeze(-1)
        points = torch.zeros(label_prompt.shape[0], 1, 3, device=inputs.device)
        point_labels = torch.full((label_prompt.shape[0], 1), -1.0, device=inputs.device)
        return inputs, labels, label_prompt, points, point_labels

    def _iteration(self, engine: Vista3dEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if self.hyper_kwargs.get("user_prompt", False):
            inputs, labels, label_prompt, points, point_labels = self._user_prompts(engine, batchdata)
            val_label_set = None
        else:
            inputs, labels, label_prompt, points, point_labels = self._label_prompts(engine, batchdata)
            val_label_set = self.hyper_kwargs.get("val_label_set", self.hyper_kwargs.get("label_set"))
            if self.hyper_kwargs.get("val_head", "auto") == "auto":
                val_label_set = None
            else:
                label_prompt = None
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: labels}
        with engine.mode(engine.network):
            use_amp = engine.amp and inputs.device.type == "cuda"
            with torch.autocast("cuda", enabled=use_amp, **engine.amp_kwargs):
                engine.state.output[Keys.PRED] = engine.inferer(
                    inputs=inputs,
                    network=engine.network,
                    point_coords=points,
                    point_labels=point_labels,
                    class_vector=label_prompt,
                    labels=labels,
                    label_set=val_label_set,
                )
        reset_ops_id(inputs)
        engine.state.output["label_prompt"] = None if label_prompt is None else label_prompt.unsqueeze(0)
        engine.state.output["points"] = None if points is None else points.unsqueeze(0)
        engine.state.output["point_labels"] = None if point_labels is None else point_labels.unsqueeze(0)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
