"""The verdict: only a changed checkpoint with a meaningful formal gain (and, with 3+ cases, a paired interval above
zero) is recommended; everything else says "no evidence of improvement" and why."""

import pytest

from VistaFinetuneLib.finetune.checkpoints import Comparison
from VistaFinetuneLib.finetune.formal_dice import FormalDice
from VistaFinetuneLib.finetune.verdict import MIN_IMPROVEMENT, NO_EVIDENCE, decide, paired_interval

pytestmark = pytest.mark.unit

CHANGED = Comparison(identical=False, same_keys=True, tensors_compared=10, tensors_changed=10, max_abs_difference=0.1)
SAME = Comparison(identical=True, same_keys=True, tensors_compared=10, tensors_changed=0, max_abs_difference=0.0)


def scores(per_case: dict[str, float]) -> FormalDice:
    """A one-class FormalDice with the given per-case Dice."""
    mean = sum(per_case.values()) / len(per_case)
    return FormalDice({c: {1: d} for c, d in per_case.items()}, {1: mean}, mean, None, {})


def test_identical_checkpoint_is_never_recommended_even_with_better_scores():
    verdict = decide(SAME, (scores({"a": 0.5}), scores({"a": 0.9})), start=0.5, best=0.9)
    assert verdict.recommended == "pretrained" and "epoch-0 trap" in verdict.rationale[0]


def test_a_clear_gain_on_three_cases_recommends_the_finetuned_checkpoint_with_its_interval():
    verdict = decide(CHANGED, (scores({"a": 0.5, "b": 0.6, "c": 0.7}), scores({"a": 0.8, "b": 0.85, "c": 0.9})), 0, 0)
    assert verdict.recommended == "finetuned" and verdict.meaningful
    assert verdict.interval.n_cases == 3 and verdict.interval.low > 0
    assert verdict.interval.mean_difference == pytest.approx(0.25)
    evidence = verdict.evidence_json()
    assert evidence["min_improvement"] == MIN_IMPROVEMENT
    assert evidence["paired_per_case"]["ci95"][0] == verdict.interval.low


def test_a_gain_below_the_minimum_is_no_evidence_of_improvement():
    # the 30-epoch run of issue 8: formal Dice 0.0215 -> 0.0232 on 2 validation cases
    verdict = decide(CHANGED, (scores({"a": 0.0210, "b": 0.0220}), scores({"a": 0.0227, "b": 0.0237})), 0.31, 0.30)
    assert verdict.recommended == "pretrained" and not verdict.meaningful
    assert verdict.rationale[1].startswith(NO_EVIDENCE)
    assert "only 2 validation case(s): no paired interval" in verdict.rationale[2]


def test_a_mean_gain_whose_paired_interval_includes_zero_is_no_evidence():
    before = scores({"a": 0.50, "b": 0.50, "c": 0.50, "d": 0.50})
    after = scores({"a": 0.80, "b": 0.30, "c": 0.75, "d": 0.35})  # +0.05 on average, one way or the other per case
    verdict = decide(CHANGED, (before, after), None, None)
    assert verdict.interval.low < 0 < verdict.interval.high
    assert verdict.recommended == "pretrained"
    assert NO_EVIDENCE in verdict.rationale[1] and "includes zero" in verdict.rationale[1]


def test_the_minimum_can_be_changed():
    pair = (scores({"a": 0.50, "b": 0.60}), scores({"a": 0.52, "b": 0.62}))
    assert decide(CHANGED, pair, None, None).recommended == "finetuned"
    assert decide(CHANGED, pair, None, None, min_improvement=0.05).recommended == "pretrained"


def test_without_formal_scores_the_training_dice_decides_by_the_same_minimum():
    assert decide(CHANGED, None, start=0.60, best=0.70).recommended == "finetuned"
    no_gain = decide(CHANGED, None, start=0.60, best=0.603)
    assert no_gain.recommended == "pretrained" and NO_EVIDENCE in no_gain.rationale[1]
    assert decide(None, None, None, None).recommended == "pretrained"


def test_paired_interval_pairs_only_cases_scored_under_both():
    before = scores({"a": 0.5, "b": 0.5, "c": 0.5})
    after = scores({"a": 0.6, "b": 0.7, "z": 0.9})
    assert paired_interval(before, after) is None  # only a and b are shared
