"""One model kept warm: the bundle's own network, transforms, sliding-window inferer, evaluator and post-processing,
built once from its ``configs/inference.json`` with ``monai.bundle.ConfigParser`` and these documented overrides:

- ``bundle_root`` = the bundle folder; the model's config overrides (a run's ``--config-override`` files, then
  ``predict``'s own: :mod:`VistaFinetuneLib.inference.run_configs`), so a changed network is built as trained;
- ``device`` = the chosen device, ``use_point_window`` when asked;
- the post-processing's NaN -> 255 step is disabled, so "not processed" stays a mask of its own and 255 can be a
  class (NV-Segment-CTMR); its ``SaveImaged`` is disabled too: the label file is written here, on the input's
  exact grid, atomically, with a legend (see :mod:`VistaFinetuneLib.inference.outputs`);
- cudnn benchmarking is switched back on after the bundle's ``set_determinism`` when asked (``cudnn_benchmark``);
- the weights are loaded here, after a key-and-shape check that names what does not fit (the bundle's
  ``checkpointloader`` is not run, nor the rest of ``initialize`` but its ``set_determinism``);
- the evaluator is wrapped (:func:`VistaFinetuneLib.inference.evaluator.engine_evaluator`) so that point prompts
  work with numpy 2 and a finetuned run's own ids pass the upstream class-prompt check; with a finetuned run,
  ``subclass`` is emptied when the run mapped onto a subclass parent (2, 20, 21).

Between requests it keeps the last image's preprocessing, and the image encoder's output per sliding window
(:class:`VistaFinetuneLib.inference.encoder_cache.EncoderCache`). Each request's seconds are split by stage
(:mod:`VistaFinetuneLib.inference.stage_timer`). Runs in the job environment (imports torch).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.inference.everything import chooses_modality, everything_labels, modality_of
from VistaFinetuneLib.inference.models import ModelSpec, sha256_of
from VistaFinetuneLib.inference.outputs import keeps_nan_as_255, label_array, unprocessed_mask
from VistaFinetuneLib.inference.prompts import ImageGrid, Prompts
from VistaFinetuneLib.inference.run_configs import apply_overrides

MAX_REPORTED_KEYS = 6


class Cancelled(Exception):
    """The request was cancelled while it ran."""


@dataclass
class Prediction:
    """The label map on the input's grid (class ids, 0 = background), and what it cost."""

    labels: np.ndarray
    unprocessed_voxels: int
    timings: dict[str, float]
    cache: dict[str, object]
    region_start: tuple[int, int, int] | None = None  # labels cover a box of the grid from here; 0 outside


@dataclass
class CachedImage:
    """The preprocessed image of one file, valid while the file is unchanged."""

    key: tuple
    grid: ImageGrid
    item: dict
    lookup: object = None  # its InverseLookup, made at the first region request


def image_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size)


def read_grid(path: Path) -> ImageGrid:
    """Shape and affine of a 3D image file, with an error that names the file."""
    import nibabel as nib

    if not path.is_file():
        raise UserError(f"{path}: the image file does not exist")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for unreadable files
        raise UserError(f"{path}: cannot read the image ({error})") from None
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UserError(f"{path}: expected a 3D image, got shape {shape}")
    return ImageGrid(shape, np.asarray(image.affine, dtype=np.float64))


def describe_mismatch(expected: dict, found: dict) -> list[str]:
    """Missing and unexpected keys and shape mismatches between the network's and a checkpoint's tensors."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" and {len(items) - MAX_REPORTED_KEYS} more" if len(items) > MAX_REPORTED_KEYS else ""
            problems.append(f"{len(items)} {title} ({', '.join(items[:MAX_REPORTED_KEYS])}{more})")
    return problems


def import_bundle_scripts(bundle_dir: Path) -> None:
    """Make ``$import scripts`` in the bundle's configs import *this* bundle's scripts package."""
    root = str(bundle_dir)
    loaded = sys.modules.get("scripts")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(root + os.sep):
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)


class Predictor:
    """A model built from the bundle's inference config, answering prompts on images."""

    def __init__(
        self,
        model: ModelSpec,
        device: str | None = None,
        use_point_window: bool | None = None,
        encoder_cache_bytes: int = 2 << 30,
        modality: str | None = None,
        cudnn_benchmark: bool = False,
    ):
        started = time.monotonic()
        self.cudnn_benchmark = cudnn_benchmark
        self.model = model
        writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # the bundle folder is only read
        try:
            self._build(device, use_point_window, encoder_cache_bytes, modality)
        finally:
            sys.dont_write_bytecode = writes_bytecode
        self.checkpoint_sha256 = sha256_of(model.checkpoint)
        self.cached: CachedImage | None = None
        self.load_seconds = round(time.monotonic() - started, 3)

    def _build(self, device, use_point_window, encoder_cache_bytes: int, modality) -> None:
        """Parse the config and build the network (weights loaded), evaluator, inferer and transforms."""
        self.parser = self._parse_config(device, use_point_window, modality)
        from monai.utils import set_determinism

        from VistaFinetuneLib.inference.encoder_cache import EncoderCache
        from VistaFinetuneLib.inference.stage_timer import StageTimer, Timed

        set_determinism(seed=123)  # what the bundle's initialize does before inference
        if self.cudnn_benchmark:  # set_determinism turns it off; the window shape never changes, so tuning pays
            import torch

            torch.backends.cudnn.benchmark = True
        self.device = str(self.parser.get_parsed_content("device"))
        self.timer = StageTimer(self.device)
        self.network = self.parser.get_parsed_content("network")
        self._load_weights()
        self.encoder_cache = EncoderCache(self.network.image_encoder, encoder_cache_bytes, self.timer)
        self.network.image_encoder = self.encoder_cache
        self.timer.time_network(self.network)
        self.evaluator = self.parser.get_parsed_content("evaluator")
        self.inferer = self.parser.get_parsed_content("inferer")
        self.evaluator.inferer = Timed(self.inferer, self.timer, "inferer")
        self._time_postprocessing()
        self.collate = self.parser.get_parsed_content("dataloader").collate_fn
        self.image_transforms, self.prompt_transforms = self._split_preprocessing()
        self.default_point_window = bool(self.inferer.use_point_window)
        self.everything_ids = [int(x) for x in (self.parser.get_parsed_content("everything_labels") or [])]
        self.picks_modality = modality is None and chooses_modality(self.parser.config)

    def _parse_config(self, device: str | None, use_point_window: bool | None, modality: str | None):
        from monai.bundle import ConfigParser

        bundle = self.model.bundle_dir
        import_bundle_scripts(bundle)
        parser = ConfigParser()
        parser.read_config(str(self.model.config_file))
        parser["bundle_root"] = str(bundle)
        apply_overrides(parser, self.model.config_overrides)
        if device:
            parser["device"] = f"$torch.device('{device}')"
        if use_point_window is not None:
            parser["use_point_window"] = use_point_window
        if modality is not None:
            if "modality" not in parser.config:
                raise UserError(f"{self.model.config_file}: this bundle has no modality choice (NV-Segment-CTMR has)")
            parser["modality"] = modality
        for index, transform in enumerate(parser["postprocessing"]["transforms"]):
            if str(transform.get("_target_", "")).endswith("SaveImaged") or keeps_nan_as_255(transform):
                parser[f"postprocessing#transforms#{index}#_disabled_"] = True
        for key, value in self.model.run_overrides(parser["evaluator"]["_target_"]).items():
            parser[key] = value
        return parser

    def everything_ids_for(self, image: Path) -> list[int]:
        """The everything list for this image: NV-Segment-CTMR without a modality given picks CT_BODY for a CT
        (not the bundle's default MRI_BODY) and asks for any other image."""
        if not self.picks_modality:
            return self.everything_ids
        config_file = self.model.config_file
        modality = modality_of(image, config_file)
        return everything_labels(self.parser.get(), self.model.bundle_dir, config_file, modality)

    @property
    def expands_subclasses(self) -> bool:
        return bool(self.parser["subclass"])

    def _load_weights(self) -> None:
        from VistaFinetuneLib.finetune.checkpoints import load_state_dict

        checkpoint = self.model.checkpoint
        try:
            state = load_state_dict(checkpoint)
        except Exception as error:
            raise UserError(f"{checkpoint}: cannot read the checkpoint ({error})") from None
        problems = describe_mismatch(self.network.state_dict(), state)
        if problems:
            raise UserError(
                f"{checkpoint}: the checkpoint does not fit the network of {self.model.config_file}"
                + (f" with {', '.join(map(str, self.model.config_overrides))}" if self.model.config_overrides else "")
                + ": "
                + "; ".join(problems)
                + " (a checkpoint trained with --config-override needs the same override: --config-override FILE)"
            )
        self.network.load_state_dict(state, strict=True)

    def _time_postprocessing(self) -> None:
        """Charge the bundle's ``Invertd`` to the stage ``inversion``, its other post-processing to ``postprocess``."""
        from monai.apps.vista3d.transforms import VistaPostTransformd
        from monai.transforms import Invertd

        from VistaFinetuneLib.inference.stage_timer import Timed

        self.postprocessing = self.parser.get_parsed_content("postprocessing")
        transforms = self.postprocessing.transforms
        self.invert = next((t for t in transforms if isinstance(t, Invertd)), None)
        self.vista_post = next((t for t in transforms if isinstance(t, VistaPostTransformd)), None)
        self.timed_postprocessing = tuple(
            Timed(t, self.timer, "inversion" if isinstance(t, Invertd) else "postprocess") for t in transforms
        )
        self.postprocessing.transforms = self.timed_postprocessing

    def _split_preprocessing(self):
        """The bundle's preprocessing as (image transforms, prompt transforms): VistaPreTransformd only reads and
        rewrites the prompts, so the image part can be cached while prompts change."""
        from monai.apps.vista3d.transforms import VistaPreTransformd
        from monai.transforms import Compose

        transforms = self.parser.get_parsed_content("preprocessing").transforms
        prompt = [t for t in transforms if isinstance(t, VistaPreTransformd)]
        image = [t for t in transforms if not isinstance(t, VistaPreTransformd)]
        return Compose(image), Compose(prompt)

    def _image(self, path: Path, check: Callable[[], None]) -> tuple[CachedImage, str]:
        """The preprocessed image, from the cache when the file is unchanged."""
        key = image_key(path) if path.is_file() else None
        if self.cached is not None and self.cached.key == key:
            return self.cached, "hit"
        grid = read_grid(path)
        check()
        self.cached = None
        self.encoder_cache.clear()
        image_key_name = self.parser["image_key"]
        try:
            item = self.image_transforms({image_key_name: str(path)})
        except Exception as error:
            raise UserError(f"{path}: cannot read the image ({type(error).__name__}: {error})") from None
        self.cached = CachedImage(key, grid, item)
        return self.cached, "miss"

    def grid(self, path: Path) -> ImageGrid:
        """The image's grid (from the cache when it is the cached image)."""
        if self.cached is not None and path.is_file() and self.cached.key == image_key(path):
            return self.cached.grid
        return read_grid(path)

    def predict(
        self,
        image: Path,
        prompts: Prompts,
        use_point_window: bool | None = None,
        check: Callable[[], None] = lambda: None,
        region: bool = False,
    ) -> Prediction:
        """Run the bundle's evaluator on one image with these prompts; ``check`` raises :class:`Cancelled`.

        With ``region``, a point-window request's post-processing covers the clicks' windows only and the labels are
        that box of the grid (:mod:`VistaFinetuneLib.inference.point_region`); other requests are unaffected."""
        if prompts.points_ijk is not None and importlib.util.find_spec("skimage") is None:
            raise UserError(
                "point prompts need scikit-image in the job environment (VISTA3D keeps the connected components "
                "that hold the clicks with it): pip install scikit-image"
            )
        started = time.monotonic()
        self.timer.reset()
        with self.timer.stage("read_resample"):
            cached, image_state = self._image(Path(image), check)
            data = dict(copy.deepcopy(cached.item))
            if prompts.class_ids is not None:
                data["label_prompt"] = list(prompts.class_ids)
            if prompts.points_ijk is not None:
                data["points"] = [list(p) for p in prompts.points_ijk]
                data["point_labels"] = list(prompts.point_labels or [])
            data = self.prompt_transforms(data)
        image_seconds = time.monotonic() - started
        self.inferer.use_point_window = self.default_point_window if use_point_window is None else use_point_window
        by_region = region and prompts.points_ijk is not None and self.inferer.use_point_window and self._regionable()
        if by_region:  # the bundle's post-processing runs below, on the region only
            self.postprocessing.transforms = ()
        self.encoder_cache.start_request(check)
        self.evaluator.data_loader = [self.collate([data])]
        inference_started = time.monotonic()
        try:
            self.evaluator.run()
        except Cancelled:
            raise
        except ValueError as error:  # the bundle's own prompt checks
            raise UserError(f"the bundle refused the prompts: {error}") from None
        finally:
            self.inferer.use_point_window = self.default_point_window
            self.postprocessing.transforms = self.timed_postprocessing
            # ignite 0.5 keeps the finished run generator of a run that raised; the next run would then do nothing.
            self.evaluator._internal_run_generator = None
        done = time.monotonic()
        if by_region:
            return self._region_prediction(cached, image_seconds, done - inference_started, image_state)
        with self.timer.stage("postprocess"):
            pred = self.evaluator.state.output[0]["pred"]
            labels = np.asarray(pred.detach().cpu().numpy())[0]
            if labels.shape != cached.grid.shape:
                raise RuntimeError(f"the bundle's post-processing returned {labels.shape}, not {cached.grid.shape}")
            unprocessed = unprocessed_mask(labels, prompts.class_ids)
            labels = label_array(np.where(unprocessed, 0, labels))
        return Prediction(
            labels=labels,
            unprocessed_voxels=int(unprocessed.sum()),
            timings={
                "image_s": round(image_seconds, 4),
                "inference_s": round(done - inference_started, 4),
                "postprocess_s": round(time.monotonic() - done, 4),
                "stages": self.timer.stages(),
            },
            cache={"image": image_state, **self.encoder_cache.request_stats()},
        )

    def _regionable(self) -> bool:
        """Whether the bundle's post-processing is the one the region path reproduces."""
        known = (self.invert, self.vista_post)
        others = ("Lambdad", "ToDeviced")  # the bundle's NaN -> 255 (kept here as "not processed"), a disabled move
        return None not in known and all(
            t.wrapped in known or type(t.wrapped).__name__ in others for t in self.timed_postprocessing
        )

    def _region_prediction(self, cached: CachedImage, image_seconds: float, inference_seconds: float, image_state):
        from VistaFinetuneLib.inference.point_region import InverseLookup, region_labels

        started = time.monotonic()
        if cached.lookup is None:
            with self.timer.stage("inversion"):
                cached.lookup = InverseLookup(self.invert, cached.item[self.parser["image_key"]])
        output = self.evaluator.state.output[0]
        region = region_labels(output, self.vista_post, cached.lookup, self.timer.stage)
        total = int(np.prod(cached.grid.shape))
        if region is None:
            labels, start, unprocessed = np.zeros(cached.grid.shape, dtype=np.uint8), None, total
        else:
            unprocessed = int(region.unprocessed.sum()) + total - region.labels.size
            labels, start = region.labels, region.start
        return Prediction(
            labels=labels,
            unprocessed_voxels=unprocessed,
            timings={
                "image_s": round(image_seconds, 4),
                "inference_s": round(inference_seconds, 4),
                "postprocess_s": round(time.monotonic() - started, 4),
                "stages": self.timer.stages(),
            },
            cache={"image": image_state, **self.encoder_cache.request_stats()},
            region_start=start,
        )

    def info(self) -> dict:
        return self.model.describe() | {
            "sha256": self.checkpoint_sha256,
            "device": self.device,
            "use_point_window": self.default_point_window,
            "cudnn_benchmark": self.cudnn_benchmark,
            "seconds": self.load_seconds,
        }
