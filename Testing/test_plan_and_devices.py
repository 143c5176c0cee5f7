"""The plan counts what a training step holds and where it runs: the patch is sized by the memory of the chosen GPU
for every mapped class prompted (with or without point prompts), loader workers come from the CPU count, and a
multi-GPU stack keeps each rank on its own GPU when --device is given (the device goes to the evaluations)."""

import json
from pathlib import Path

import pytest

from VistaFinetuneLib.finetune import staging
from VistaFinetuneLib.finetune.pipeline import FinetuneRequest, write_config_stacks
from VistaFinetuneLib.finetune.plan import Plan, estimated_peak_mb, make_plan, patch_for_memory

TWO_GPUS = {
    "cuda_available": True, "gpu_count": 2, "host_ram_mb": 64_000, "cpu_count": 16, "gpu_free_mb": 80_000,
    "gpus": [{"index": 0, "name": "big", "free_mb": 80_000}, {"index": 1, "name": "small", "free_mb": 10_000}],
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_nproc(monkeypatch):
    monkeypatch.delenv("NPROC_PER_NODE", raising=False)


def test_every_mapped_class_counts_in_the_patch_plan():
    assert estimated_peak_mb([128, 128, 128], 4, True) > estimated_peak_mb([128, 128, 128], 1, True) + 6_000
    assert patch_for_memory(20_000, n_classes=1) == [128, 128, 128]
    assert patch_for_memory(20_000, n_classes=4) == [96, 96, 96]  # four classes with points need more
    assert patch_for_memory(20_000, n_classes=4, point_prompts=False) == [160, 160, 160]  # auto-seg: no points
    assert make_plan(TWO_GPUS | {"device": "cuda:0"}, 10, allow_multi_gpu=False).patch_size == [192, 192, 128]
    plan = make_plan(TWO_GPUS | {"device": "cuda:0"}, 10, n_classes=12, allow_multi_gpu=False)
    assert plan.patch_size == [128, 128, 128]
    assert any("12 prompted class(es) with point prompts" in line for line in plan.rationale)


def test_the_patch_is_sized_by_the_chosen_gpu_not_the_first():
    first = make_plan(TWO_GPUS | {"device": "cuda:0"}, 10, allow_multi_gpu=False)
    chosen = make_plan(TWO_GPUS | {"device": "cuda:1"}, 10, allow_multi_gpu=False)
    assert first.patch_size == [192, 192, 128] and chosen.patch_size == [96, 96, 96]
    assert any("10000 MB free on cuda:1 (small)" in line for line in chosen.rationale)
    both = make_plan(TWO_GPUS | {"device": "cuda:0"}, 10)
    assert both.multi_gpu and both.patch_size == [96, 96, 96]  # every rank must fit: the least free GPU


def test_loader_workers_come_from_the_cpu_count():
    assert make_plan(TWO_GPUS | {"device": "cuda:0"}, 10, allow_multi_gpu=False).num_workers == 8
    assert make_plan(TWO_GPUS | {"device": "cuda:0", "cpu_count": 4}, 10, allow_multi_gpu=False).num_workers == 3
    assert make_plan(TWO_GPUS | {"device": "cuda:0", "cpu_count": 8}, 10).num_workers == 3  # 2 ranks
    cpu = make_plan({"cuda_available": False, "device": "cpu", "cpu_count": 16, "host_ram_mb": 8000}, 3)
    assert cpu.num_workers == 0 and any("loader workers 0" in line for line in cpu.rationale)
    overrides = staging.common_overrides(
        bundle_dir=Path("/b"), run_dir=Path("/r"), datalist=Path("/r/d.json"), label_mappings=[[1, 3]], plan=cpu,
        device=None, auto_seg=False,
    )  # fmt: skip
    assert overrides["train#dataloader#num_workers"] == 0 and overrides["validate#dataloader#num_workers"] == 0


def test_a_multi_gpu_stack_with_device_keeps_each_rank_on_its_gpu(tiny_bundle_dir, tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    for name in ("train.json", "train_continual.json", "evaluate.json"):
        (bundle / "configs" / name).write_text((tiny_bundle_dir / "configs" / name).read_text())
    multi_gpu_train = {"device": "$torch.device('cuda:' + os.environ['LOCAL_RANK'])"}  # as upstream
    (bundle / "configs" / "multi_gpu_train.json").write_text(json.dumps(multi_gpu_train))
    plan = Plan([96, 96, 96], 1.0, 2, None, 2, True)
    request = FinetuneRequest(output_dir=tmp_path / "run", device="cuda:1")
    run_dir = tmp_path / "run"
    stacks, _ = write_config_stacks(request, run_dir, bundle, run_dir / "d.json", [[1, 1]], plan, False)

    def device_of(stack: list[Path], rank: str) -> str:
        monkeypatch.setenv("LOCAL_RANK", rank)
        parser = ConfigParser()
        parser.read_config([str(p) for p in stack])
        return str(parser.get_parsed_content("device"))

    assert device_of(stacks["train"], "0") == "cuda:0" and device_of(stacks["train"], "1") == "cuda:1"
    assert device_of(stacks["eval_pretrained"], "0") == "cuda:1"  # one process, on the GPU asked for
