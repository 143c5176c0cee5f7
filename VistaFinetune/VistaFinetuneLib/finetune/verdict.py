"""Which checkpoint to keep, and the evidence for it.

Only a finetuned checkpoint that differs from the pretrained weights can win, and only by a meaningful margin: its
formal Dice (or, without a formal evaluation, its training-time Dice) must rise by at least ``min_improvement``, and
with three or more validation cases the paired 95% interval of the per-case differences must lie above zero.
Anything less is "no evidence of improvement", and the pretrained checkpoint stays recommended.
"""

from __future__ import annotations

from dataclasses import dataclass

from VistaFinetuneLib.finetune.checkpoints import Comparison
from VistaFinetuneLib.finetune.formal_dice import FormalDice
from VistaFinetuneLib.review.compare import paired_difference

MIN_IMPROVEMENT = 0.005
MIN_CASES_FOR_INTERVAL = 3
NO_EVIDENCE = "no evidence of improvement"


@dataclass(frozen=True)
class PairedInterval:
    """The mean per-case Dice difference (finetuned - pretrained) and its two-sided 95% t interval."""

    n_cases: int
    mean_difference: float
    low: float
    high: float

    def to_json(self) -> dict:
        return {"n_cases": self.n_cases, "mean_difference": self.mean_difference, "ci95": [self.low, self.high]}


@dataclass
class Verdict:
    """The recommendation (``pretrained``/``finetuned``), why, and the evidence weighed."""

    recommended: str
    rationale: list[str]
    min_improvement: float
    interval: PairedInterval | None = None
    meaningful: bool = False

    def evidence_json(self) -> dict:
        return {
            "min_improvement": self.min_improvement,
            "improvement_meaningful": self.meaningful,
            "paired_per_case": None if self.interval is None else self.interval.to_json(),
        }


def case_means(scores: FormalDice) -> dict[str, float]:
    """Each validation case's mean Dice over the classes it can be scored on."""
    means = {}
    for case, per_class in scores.per_case.items():
        values = [v for v in per_class.values() if v is not None]
        if values:
            means[case] = sum(values) / len(values)
    return means


def paired_interval(pretrained: FormalDice, finetuned: FormalDice) -> PairedInterval | None:
    """The paired interval over cases scored under both checkpoints; None with fewer than three such cases."""
    before, after = case_means(pretrained), case_means(finetuned)
    cases = sorted(before.keys() & after.keys())
    if len(cases) < MIN_CASES_FOR_INTERVAL:
        return None
    difference = paired_difference([before[c] for c in cases], [after[c] for c in cases])
    rounded = [round(difference[k], 6) for k in ("mean", "ci95_low", "ci95_high")]
    return PairedInterval(len(cases), *rounded)


def judge_formal(pretrained: FormalDice, finetuned: FormalDice, min_improvement: float) -> Verdict:
    """Weigh the formal Dice of a changed checkpoint."""
    pre, ft = pretrained.mean or 0.0, finetuned.mean or 0.0
    interval = paired_interval(pretrained, finetuned)
    change = f"formal Dice {pre:.4f} -> {ft:.4f} ({ft - pre:+.4f}; meaningful from {min_improvement:+.4f})"
    if interval is None:
        cases = len(case_means(finetuned))
        spread = f"only {cases} validation case(s): no paired interval (it needs {MIN_CASES_FOR_INTERVAL})"
    else:
        spread = (
            f"paired per-case difference {interval.mean_difference:+.4f}, 95% interval "
            f"[{interval.low:+.4f}, {interval.high:+.4f}] over {interval.n_cases} cases"
        )
    if ft - pre < min_improvement:
        return Verdict("pretrained", [f"{NO_EVIDENCE}: {change}", spread], min_improvement, interval)
    if interval is not None and interval.low <= 0:
        why = f"{NO_EVIDENCE}: {change}, but the paired interval includes zero ({spread})"
        return Verdict("pretrained", [why], min_improvement, interval)
    return Verdict("finetuned", [f"{change}", spread], min_improvement, interval, meaningful=True)


def judge_training(start: float, best: float, min_improvement: float) -> Verdict:
    """Weigh the training-time Dice when no formal evaluation ran (no per-case scores: no interval)."""
    change = f"no formal evaluation; training-time Dice {start:.4f} -> {best:.4f} ({best - start:+.4f})"
    if best - start < min_improvement:
        return Verdict("pretrained", [f"{NO_EVIDENCE}: {change}, below {min_improvement:+.4f}"], min_improvement)
    return Verdict("finetuned", [change], min_improvement, meaningful=True)


def decide(
    comparison: Comparison | None,
    formal: tuple[FormalDice, FormalDice] | None,
    start: float | None,
    best: float | None,
    min_improvement: float = MIN_IMPROVEMENT,
) -> Verdict:
    """Pick ``pretrained`` or ``finetuned``: only a changed checkpoint that scores meaningfully higher can win."""
    if comparison is None:
        return Verdict("pretrained", ["no finetuned checkpoint was written"], min_improvement)
    if comparison.identical:
        return Verdict(
            "pretrained",
            [
                "model_finetune.pt equals the pretrained weights tensor for tensor (the epoch-0 trap: no epoch beat "
                "the validation score of the pretrained model)"
            ],
            min_improvement,
        )
    changed = f"model_finetune.pt differs from the pretrained weights in {comparison.tensors_changed} tensors"
    if formal is not None and formal[0].mean is not None and formal[1].mean is not None:
        verdict = judge_formal(*formal, min_improvement)
    elif start is not None and best is not None:
        verdict = judge_training(start, best, min_improvement)
    else:
        verdict = Verdict("pretrained", ["no score to compare the checkpoints by"], min_improvement)
    verdict.rationale.insert(0, changed)
    return verdict
