"""The encoder cache computes only the decoder branches a call asks for, answers exactly what the encoder would,
and does not thrash when one pass has more windows than it holds."""

import pytest
import torch
from monai.networks.nets.segresnet_ds import SegResNetDS2

from VistaFinetuneLib.inference.encoder_cache import EncoderCache

pytestmark = pytest.mark.unit


class BranchCalls:
    """Counts the point and class decoder branches' runs (forward hooks on the real encoder's layers)."""

    def __init__(self, encoder: SegResNetDS2) -> None:
        self.point = self.label = 0
        encoder.up_layers[0]["upsample"].register_forward_hook(lambda *_: self.count("point"))
        encoder.up_layers_auto[0]["upsample"].register_forward_hook(lambda *_: self.count("label"))

    def count(self, branch: str) -> None:
        setattr(self, branch, getattr(self, branch) + 1)


def encoder() -> SegResNetDS2:
    torch.manual_seed(0)
    return SegResNetDS2(in_channels=1, blocks_down=(1, 1, 1), init_filters=4, out_channels=8, dsdepth=1).eval()


def windows(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand((1, 1, 16, 16, 16), generator=generator) for _ in range(count)]


def window_bytes(net: SegResNetDS2) -> int:
    """What one window with both branches takes in the cache."""
    probe = EncoderCache(net, 1 << 40)
    probe.start_request(lambda: None)
    with torch.no_grad():
        probe(windows(1)[0])
    return probe.bytes


def test_only_the_branches_asked_for_are_computed_and_reuse_is_exact():
    net = encoder()
    calls = BranchCalls(net)
    cache = EncoderCache(net, 1 << 30)
    cache.start_request(lambda: None)
    (window,) = windows(1)
    with torch.no_grad():
        point, label = cache(window, with_point=True, with_label=False)
        assert (calls.point, calls.label) == (1, 0) and label == []
        point_again, label = cache(window, with_point=False, with_label=True)
        assert (calls.point, calls.label) == (1, 1) and point_again == []
        both = cache(window, with_point=True, with_label=True)
        assert (calls.point, calls.label) == (1, 1)
        fresh = net(window.clone())
    assert cache.request_stats()["encoder_windows_reused"] == 1
    assert torch.equal(both[0], point) and torch.equal(both[0], fresh[0]) and torch.equal(both[1], fresh[1])


def test_a_pass_over_more_windows_than_fit_keeps_the_first_and_the_next_pass_reuses_them():
    net = encoder()
    cache = EncoderCache(net, 2 * window_bytes(net) + 1)
    scan = windows(3)
    with torch.no_grad():
        cache.start_request(lambda: None)
        for window in scan:
            cache(window)
        assert cache.request_stats()["encoder_windows_not_kept"] == 1
        cache.start_request(lambda: None)
        for window in scan:
            cache(window)
    assert cache.request_stats()["encoder_windows_reused"] == 2
    assert cache.bytes <= cache.max_bytes


def test_a_new_request_evicts_the_oldest_entries_of_earlier_ones():
    net = encoder()
    cache = EncoderCache(net, 2 * window_bytes(net) + 1)
    first, second, third = windows(3)
    with torch.no_grad():
        cache.start_request(lambda: None)
        cache(first)
        cache(second)
        cache.start_request(lambda: None)
        cache(third)  # evicts the first
        cache.start_request(lambda: None)
        cache(second)
        cache(third)
        assert cache.request_stats()["encoder_windows_reused"] == 2
        cache(first)
    assert cache.request_stats()["encoder_windows_computed"] == 1
