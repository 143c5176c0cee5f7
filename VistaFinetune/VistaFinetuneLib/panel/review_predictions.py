"""The Review section's predictions: a validation case segmented by both checkpoints in the warm worker."""

from __future__ import annotations

from pathlib import Path

from VistaFinetuneLib.interactive.worker_client import Ticket, WorkerClient

MODELS = ("pretrained", "finetuned")


def predictions_dir(run_dir: Path) -> Path:
    """Where the panel's review predictions of a run go (``RUN_DIR/review/panel_predictions/<model>/``)."""
    return Path(run_dir) / "review" / "panel_predictions"


def request_case_predictions(
    client: WorkerClient, run_dir: Path, case: str, image: Path, class_ids: list[int]
) -> Ticket:
    """Ask the worker for the case's pretrained and finetuned predictions of ``class_ids``; returns at once.

    The ticket's result is ``{"pretrained": path, "finetuned": path}``; the run's finetuned checkpoint is loaded
    into the worker as model ``finetuned`` on first use. Class routing is off: the review compares the checkpoints.
    """
    out_dir = predictions_dir(run_dir)

    def task(connection) -> dict[str, Path]:
        connection.ensure_model("finetuned", {"run": str(Path(run_dir).absolute())})
        outputs = {}
        for model in MODELS:
            response = connection.call(
                {"op": "predict", "model": model, "image": str(image), "classes": list(class_ids),
                 "output": str(out_dir / model / f"{case}.nii.gz"), "routing": False}
            )  # fmt: skip
            outputs[model] = Path(response["output"])
        return outputs

    return client.submit(task)
