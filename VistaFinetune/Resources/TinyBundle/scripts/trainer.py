"""Prompt-sampling trainer for VISTA3D, built on MONAI's ``Trainer`` and ``sample_prompt_pairs``.

Each iteration samples class and point prompts from the label patch and averages a binary loss over the
foreground prompts. Like the upstream bundle's trainer, the target of each prompt reaches the loss as a
boolean mask (``labels == class``); MONAI >= 1.5 rejects that in ``DiceLoss(squared_pred=True)``.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.apps.vista3d.sampler import sample_prompt_pairs
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer
from monai.utils.enums import CommonKeys as Keys


class Vista3dTrainer(Trainer):
    """Supervised VISTA3D trainer; ``hyper_kwargs`` carries the prompt-sampling settings of the bundle config."""

    def __init__(
        self,
        device: torch.device,
        max_epochs: int,
        train_data_loader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function,
        inferer: Inferer | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        train_handlers: list | None = None,
        amp: bool = False,
        hyper_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            amp=amp,
            **kwargs,
        )
        self.network = network
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.inferer = inferer or SimpleInferer()
        self.hyper_kwargs = hyper_kwargs or {}

    def _iteration(self, engine: Vista3dTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: labels}
        settings = engine.hyper_kwargs
        label_set = settings["label_set"]
        if label_set is None:
            label_set = list(range(settings["output_classes"]))
        label_prompt, point, point_label, prompt_class = sample_prompt_pairs(
            labels,
            label_set,
            image_size=settings["patch_size"],
            max_point=settings["max_point"],
            max_prompt=settings["max_prompt"],
            max_backprompt=settings["max_backprompt"],
            max_foreprompt=settings["max_foreprompt"],
            drop_label_prob=settings["drop_label_prob"],
            drop_point_prob=settings["drop_point_prob"],
            include_background=not settings["exclude_background"],
        )

        def forward_and_loss() -> None:
            outputs = engine.network(
                input_images=inputs, point_coords=point, point_labels=point_label, class_vector=label_prompt
            )
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = torch.zeros((), device=engine.state.device)
            counted = 0
            for index in range(len(prompt_class)):
                if prompt_class[index] == 0:
                    continue
                loss = loss + engine.loss_function(outputs[[index]].float(), labels == prompt_class[index])
                counted += 1
            engine.state.output[Keys.LOSS] = loss / max(counted, 1)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        use_amp = engine.amp and engine.scaler is not None and engine.state.device.type == "cuda"
        if label_prompt is None and point is None:
            # sample_prompt_pairs dropped every prompt: nothing to learn from this patch.
            engine.state.output[Keys.LOSS] = torch.zeros((), device=engine.state.device)
            return engine.state.output
        if use_amp:
            with torch.autocast("cuda", **engine.amp_kwargs):
                forward_and_loss()
            engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            forward_and_loss()
            engine.state.output[Keys.LOSS].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
