"""Early-stopping score: the validation mean Dice, averaged over ranks when running distributed."""

import torch
import torch.distributed as dist


def score_function(engine) -> float:
    """Return the evaluator's ``val_mean_dice``; under DDP, its mean over all ranks."""
    score = torch.tensor(float(engine.state.metrics["val_mean_dice"]))
    if dist.is_available() and dist.is_initialized():
        score = score.to(torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu")
        dist.all_reduce(score, op=dist.ReduceOp.SUM)
        score /= dist.get_world_size()
    return score.item()
