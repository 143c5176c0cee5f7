"""Sliding-window inferer for VISTA3D: whole-volume windows for class prompts, point-centred windows for clicks."""

from __future__ import annotations

import torch
from monai.apps.vista3d.inferer import point_based_window_inferer
from monai.inferers import Inferer, sliding_window_inference


class Vista3dInferer(Inferer):
    """Run a VISTA3D network over a volume with class and/or point prompts.

    Class ids above the point head's ``last_supported`` are zero-shot: they keep their class vector only when
    points are given, as in the upstream bundle after 0.5.9.
    """

    def __init__(self, roi_size, overlap: float = 0.25, use_point_window: bool = False, sw_batch_size: int = 1):
        super().__init__()
        self.roi_size = roi_size
        self.overlap = overlap
        self.use_point_window = use_point_window
        self.sw_batch_size = sw_batch_size

    def __call__(
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        point_coords=None,
        point_labels=None,
        class_vector=None,
        labels=None,
        label_set=None,
        prev_mask=None,
    ) -> torch.Tensor:
        has_points = point_coords is not None and point_labels is not None and bool((point_labels >= 0).any())
        prompt_class = None if class_vector is None else class_vector.clone()
        if class_vector is not None and has_points:
            point_head = network.module.point_head if hasattr(network, "module") else network.point_head
            if bool((class_vector > point_head.last_supported).any()):
                class_vector = None
        common = dict(
            inputs=inputs,
            roi_size=self.roi_size,
            predictor=network,
            point_coords=point_coords,
            point_labels=point_labels,
            class_vector=class_vector,
            prompt_class=prompt_class,
            prev_mask=prev_mask,
            labels=labels,
            label_set=label_set,
        )
        if self.use_point_window and has_points:
            return point_based_window_inferer(**common)
        return sliding_window_inference(
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode="gaussian",
            padding_mode="replicate",
            transpose=True,
            **common,
        )
