"""Every memory method × {modality-aware, modality-blind} × {Omni thinker, text LM}: after every
group and every layer the budgets hold, text is kept, order and positions are intact."""

import pytest
import torch

from omnimem_train.memory.budgets import stream_counts as media_counts
from omnimem_train.memory.registry import known_methods, make_policy
from omnimem_train.models.base import Modality
from omnimem_train.streaming.engine import StreamingEngine
from tests.memory.streams import omni_pieces, text_pieces

METHODS = [m for m in known_methods() if m != "full"]
BUDGET = {"omni": 60, "text": 40}  # audio+visual per layer; aware split by rho=5: 10+50 / 7+33


def _limits(budget, aware):
    audio = round(budget / 6)
    return (audio, budget - audio) if aware else (None, None)


@pytest.fixture(scope="module")
def streams(tiny_omni, tiny_llama):
    return {"omni": (tiny_omni, omni_pieces(tiny_omni)), "text": (tiny_llama, text_pieces(tiny_llama))}


@pytest.mark.parametrize("model", ["omni", "text"])
@pytest.mark.parametrize("aware", [True, False], ids=["aware", "blind"])
@pytest.mark.parametrize("method", METHODS)
def test_budget_text_order_positions_hold_after_every_group_and_layer(streams, model, aware, method):
    ad, pieces = streams[model]
    budget = BUDGET[model]

    def new_policy():
        policy = make_policy(method, len(ad.decoder_layers), budget=budget, modality_aware=aware)
        policy.expect(media_counts(pieces))
        return policy

    # What reaches the model: frame dropping removes whole time steps before the LLM (memory
    # indices then count the tokens that were streamed), every other method sees all of them.
    streamed = list(new_policy().filter_stream(iter(pieces)))
    all_pos = torch.cat([p.positions for p in streamed], 1)
    all_mod = torch.cat([p.modality for p in streamed])
    orig_pos = torch.cat([p.positions for p in pieces], 1)
    assert all(any(torch.equal(c, o) for o in orig_pos.T) for c in all_pos.T[::7])  # positions are original
    a_lim, v_lim = _limits(budget, aware)
    dropped_before_llm = method == "frame_drop"
    groups = []

    def check(state, n_new):
        for mem in state.layers:
            a, v = mem.count(Modality.AUDIO), mem.count(Modality.VISUAL)
            seen_a, seen_v = state.seen[Modality.AUDIO], state.seen[Modality.VISUAL]
            if aware:
                assert a <= a_lim and v <= v_lim
                if not dropped_before_llm:  # top-k keeps exactly min(limit, available)
                    assert (a, v) == (min(a_lim, seen_a), min(v_lim, seen_v))
            else:
                assert a + v <= budget
                if not dropped_before_llm:
                    assert a + v == min(budget, seen_a + seen_v)
            assert torch.all(mem.index[1:] > mem.index[:-1])
            assert torch.equal(mem.positions, all_pos[:, mem.index])
            assert torch.equal(mem.modality, all_mod[mem.index])
            assert mem.count(Modality.TEXT) == int((all_mod[: state.tokens_seen] == Modality.TEXT).sum())
            for k, v in mem.extras.items():  # per-token state travels with the tokens
                assert v.shape[0] == mem.n, k
        groups.append(n_new)

    engine = StreamingEngine(ad, new_policy(), group_size=32)
    with torch.no_grad():
        state, _ = engine.prefill(iter(pieces), on_group=check)
    assert len(groups) >= (1 if dropped_before_llm else 4)  # frame_drop may keep no media at all
    # The budget was binding: more audio/visual tokens streamed than any layer kept.
    assert sum(media_counts(pieces).values()) > budget
    if dropped_before_llm:  # media were dropped before the model, text was not
        assert state.tokens_seen == all_mod.numel() < sum(len(p) for p in pieces)
        assert int((all_mod == Modality.TEXT).sum()) == sum(int((p.modality == Modality.TEXT).sum()) for p in pieces)
