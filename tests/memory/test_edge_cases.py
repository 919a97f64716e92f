"""Edge cases every method must survive: groups without audio, text-only groups, budgets bigger
than the stream, and a zero audio budget."""

import json

import pytest
import torch

from omnimem_train.memory.budgets import stream_counts as media_counts
from omnimem_train.memory.registry import known_methods, make_policy
from omnimem_train.models.base import Modality
from omnimem_train.streaming.engine import StreamingEngine
from tests.memory.streams import omni_pieces

METHODS = [m for m in known_methods() if m != "full"]


def _run(ad, pieces, method, group_size=32, on_group=None, **budget):
    policy = make_policy(method, len(ad.decoder_layers), **budget)
    policy.expect(media_counts(pieces))
    with torch.no_grad():
        state, logits = StreamingEngine(ad, policy, group_size=group_size).prefill(
            iter(pieces), on_group=on_group, collect_logits=True)
    return state, logits


@pytest.fixture(scope="module")
def video_only(tiny_omni):
    return omni_pieces(tiny_omni, audio=False)


@pytest.fixture(scope="module")
def av(tiny_omni):
    return omni_pieces(tiny_omni)


@pytest.mark.parametrize("method", METHODS)
def test_groups_without_audio_and_text_only_groups(tiny_omni, video_only, method):
    prefix_len = len(video_only[0])  # the first group holds only the text prefix
    sizes = []
    state, _ = _run(tiny_omni, video_only, method, group_size=prefix_len, budget=30,
                    on_group=lambda s, n: sizes.append(n))
    assert sizes[0] == prefix_len and all(m.count(Modality.AUDIO) == 0 for m in state.layers)
    assert all(m.count(Modality.VISUAL) <= 25 for m in state.layers)  # 30 split by rho=5: 5 audio, 25 visual


@pytest.fixture(scope="module")
def av_full(tiny_omni, av):
    return _run(tiny_omni, av, "full")


@pytest.mark.parametrize("method", METHODS)
def test_budget_bigger_than_the_stream_changes_nothing(tiny_omni, av, av_full, method):
    full_state, full_logits = av_full
    state, logits = _run(tiny_omni, av, method, budget=100_000, modality_aware=False)
    assert [m.n for m in state.layers] == [m.n for m in full_state.layers]
    assert torch.equal(logits, full_logits)


@pytest.mark.parametrize("method", METHODS)
def test_zero_audio_budget(tiny_omni, av, tmp_path, method):
    f = tmp_path / "budget.json"
    f.write_text(json.dumps([[0, 40]] * len(tiny_omni.decoder_layers)))
    state, _ = _run(tiny_omni, av, method, budget_file=str(f))
    assert all(m.count(Modality.AUDIO) == 0 and 0 < m.count(Modality.VISUAL) <= 40 for m in state.layers)
