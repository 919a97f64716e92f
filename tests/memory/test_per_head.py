"""`memory.per_head`: every KV head keeps its own top tokens (the same count per head), for the
scorers whose references select per head; everything else refuses it."""

import pytest
import torch

from omnimem_train.config.schema import Config, FieldValueError, MemoryConfig
from omnimem_train.errors import ConfigError
from omnimem_train.memory.attention import attention_mass_per_head, window_attention
from omnimem_train.memory.budgets import Limits
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.memory.registry import make_policy
from omnimem_train.memory.selection import select, select_per_head
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter
from omnimem_train.streaming.answer import answer_loss
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.train.lora import prepare_model
from tests.memory.streams import omni_pieces, random_media, text_pieces
from tests.streaming.omni_inputs import full_inputs

PER_HEAD = ["h2o", "key_norm", "keydiff", "snapkv", "value_norm"]
REFUSED = ["frame_drop", "novelty", "omnimem", "random", "recency"]
MOD = {"T": Modality.TEXT, "A": Modality.AUDIO, "V": Modality.VISUAL}
D = 8


def e(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def _cand(kinds: str, keys: torch.Tensor, values: torch.Tensor | None = None, extras=None) -> LayerMemory:
    """A one-group candidate set: kinds e.g. "TAAVVT", keys/values (G, n, D)."""
    n = len(kinds)
    values = torch.ones_like(keys) if values is None else values
    return LayerMemory(keys[None], values[None], torch.arange(n)[None], torch.tensor([int(MOD[c]) for c in kinds]),
                       torch.arange(n), extras or {})


def _update(policy, kinds, keys, values=None, queries=None) -> LayerMemory:
    """Run the policy on one group (no memory before it); queries (H, n, D)."""
    cand = _cand(kinds, keys, values, policy.new_token_extras(torch.zeros(len(kinds), 4)))
    ctx = LayerContext(0, cand, cand.n, {}, torch.zeros(cand.n, 4), lambda: queries)
    return policy.update(ctx)


def _rows(mem: LayerMemory) -> list[list[int]]:
    return mem.index.tolist() if mem.per_head else [mem.index.tolist()]


# --- (1) each head keeps its own tokens ---------------------------------------------------------------


def test_key_norm_per_head_keeps_each_heads_own_small_norms_shared_keeps_the_head_mean():
    """Audio 1-3, visual 4-6, budget 1 + 1. Key norms (head 0 | head 1): 1 | 10, 10 | 1, 4 | 4 for
    tokens 1, 2, 3 (and likewise 4, 5, 6). Head 0 keeps {1, 4}, head 1 {2, 5}; the head mean
    (5.5, 5.5, 4) keeps {3, 6} for both."""
    kinds = "TAAAVVVT"
    norms = torch.tensor([[1, 1, 10, 4, 1, 10, 4, 1], [1, 10, 1, 4, 10, 1, 4, 1]], dtype=torch.float)
    keys = norms[:, :, None] * e(0)
    per_head = _update(make_policy("key_norm", 1, budget=2, rho=1.0, per_head=True), kinds, keys)
    assert per_head.per_head and _rows(per_head) == [[0, 1, 4, 7], [0, 2, 5, 7]]
    # Each slot's key is its head's own token's key.
    assert torch.equal(per_head.keys[0, :, :, 0], torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1]]))
    shared = _update(make_policy("key_norm", 1, budget=2, rho=1.0), kinds, keys)
    assert not shared.per_head and _rows(shared) == [[0, 3, 6, 7]]


def test_value_norm_and_keydiff_select_per_head():
    kinds = "TAAVVT"
    # value_norm keeps the largest value norm: head 0 tokens 1 and 3, head 1 tokens 2 and 4.
    vn = torch.tensor([[1, 5, 1, 5, 1, 1], [1, 1, 5, 1, 5, 1]], dtype=torch.float)[:, :, None] * e(0)
    mem = _update(make_policy("value_norm", 1, budget=2, rho=1.0, per_head=True), kinds, torch.ones(2, 6, D), vn)
    assert _rows(mem) == [[0, 1, 3, 5], [0, 2, 4, 5]]
    # keydiff keeps keys far from the head's mean key: every key is e0 except the outliers (e1).
    keys = e(0).repeat(2, 6, 1)
    keys[0, 2], keys[0, 4], keys[1, 1], keys[1, 3] = e(1), e(1), e(1), e(1)
    mem = _update(make_policy("keydiff", 1, budget=2, rho=1.0, per_head=True), kinds, keys)
    assert _rows(mem) == [[0, 2, 4, 5], [0, 1, 3, 5]]


@pytest.mark.parametrize("scorer", ["h2o", "snapkv"])
def test_attention_scorers_follow_each_heads_own_queries(scorer):
    """4 query heads in 2 KV groups. Head 0's keys point token 4 (audio) and 16 (visual) at e0, head
    1's tokens 10 (audio) and 22 (visual) at e1; group 0's queries are e0, group 1's e1. So head 0's
    queries attend to 4 and 16, head 1's to 10 and 22 (tokens far apart: snapkv pools over 5)."""
    kinds = ["T"] * 24
    for i, c in ((4, "A"), (10, "A"), (16, "V"), (22, "V")):
        kinds[i] = c
    keys = torch.zeros(2, 24, D)
    keys[0, 4], keys[0, 16], keys[1, 10], keys[1, 22] = 6 * e(0), 6 * e(0), 6 * e(1), 6 * e(1)
    queries = torch.stack([2 * e(0), 2 * e(0), 2 * e(1), 2 * e(1)])[:, None].expand(4, 24, D)
    mem = _update(make_policy(scorer, 1, budget=2, rho=1.0, per_head=True), "".join(kinds), keys, queries=queries)
    text = [i for i, c in enumerate(kinds) if c == "T"]
    assert _rows(mem) == [sorted(text + [4, 16]), sorted(text + [10, 22])]
    if scorer == "h2o":  # the running attention is per head and travels with each head's slots
        assert mem.extras["acc_attn"].shape == (2, 22)


def test_per_head_attention_matches_a_per_query_head_reference():
    torch.manual_seed(0)
    h, g, L, n_old = 6, 2, 5, 7
    queries, keys = torch.randn(h, L, D), torch.randn(1, g, n_old + L, D)
    ref = torch.zeros(g, n_old + L)
    for head in range(h):
        kv = head // (h // g)
        logits = queries[head] @ keys[0, kv].T / D**0.5  # (L, n)
        hidden = torch.arange(n_old + L)[None, :] > (n_old + torch.arange(L))[:, None]
        ref[kv] += torch.softmax(logits.masked_fill(hidden, float("-inf")), -1).sum(0) / (h // g)
    assert torch.allclose(attention_mass_per_head(queries, keys, n_old, block=2), ref, atol=1e-6)
    # snapkv: averaging the per-head window attention over the heads gives the shared score.
    per = window_attention(queries, keys, n_old, 3, per_head=True)
    assert per.shape == (g, n_old + L)
    assert torch.allclose(per.mean(0), window_attention(queries, keys, n_old, 3), atol=1e-6)


# --- (2) same count per head and modality, text kept, temporal order ----------------------------------


@pytest.mark.parametrize("limits", [Limits(audio=3, visual=5), Limits(audio=0, visual=50), Limits(pooled=7)],
                         ids=["aware", "zero-audio", "pooled"])
def test_select_per_head_is_each_heads_own_select(limits):
    """Row g of the per-head selection is exactly what `select` keeps with head g's scores."""
    torch.manual_seed(1)
    g, n = 3, 40
    modality = torch.randint(0, 3, (n,)).expand(g, n)
    scores = torch.randn(g, n)
    keep = select_per_head(scores, modality, limits)
    assert keep.shape[0] == g
    for head in range(g):
        assert keep[head].tolist() == select(scores[head], modality[head], limits).tolist()
        assert bool((keep[head][1:] > keep[head][:-1]).all())  # temporal order
        kept = modality[head][keep[head]]
        assert int((kept == Modality.TEXT).sum()) == int((modality[0] == Modality.TEXT).sum())
        if limits.pooled is None:
            for m, k in ((Modality.AUDIO, limits.audio), (Modality.VISUAL, limits.visual)):
                assert int((kept == m).sum()) == min(k, int((modality[0] == m).sum()))
        else:
            assert int((kept != Modality.TEXT).sum()) == limits.pooled
    assert select_per_head(scores, modality, Limits()) is None  # everything fits


def test_take_per_head_and_appending_a_shared_group():
    torch.manual_seed(2)
    g, n = 2, 6
    mem = LayerMemory(torch.randn(1, g, n, D), torch.randn(1, g, n, D), torch.arange(3 * n).view(3, n),
                      torch.tensor([0, 1, 2, 1, 2, 0]), torch.arange(10, 10 + n), {"s": torch.arange(n).float()})
    idx = torch.tensor([[0, 1, 5], [0, 3, 4]])
    kept = mem.take(idx)
    assert kept.per_head and kept.n == 3
    for head in range(g):
        assert torch.equal(kept.keys[0, head], mem.keys[0, head, idx[head]])
        assert torch.equal(kept.values[0, head], mem.values[0, head, idx[head]])
        assert torch.equal(kept.positions[:, head], mem.positions[:, idx[head]])
        assert torch.equal(kept.modality[head], mem.modality[idx[head]])
        assert torch.equal(kept.index[head], mem.index[idx[head]])
        assert torch.equal(kept.extras["s"][head], mem.extras["s"][idx[head]])
    # A per-head take of a per-head memory picks within each head's own slots.
    again = kept.take(torch.tensor([[2], [0]]))
    assert again.index.tolist() == [[15], [10]] and torch.equal(again.keys[0, 1, 0], mem.keys[0, 1, 0])
    # A shared group appended to per-head memory is every head's.
    new = mem.take(torch.tensor([5]))
    both = kept.append(new)
    assert both.per_head and both.index.tolist() == [[10, 11, 15, 15], [10, 13, 14, 15]]
    assert both.positions.shape == (3, g, 4) and both.extras["s"].shape == (g, 4)
    assert kept.count(Modality.TEXT) == 1.5 and kept.count(Modality.AUDIO) == 0.5  # mean over heads


# --- (3) streaming through the engine -----------------------------------------------------------------

BUDGET = {"omni": 40, "text": 30}


@pytest.fixture(scope="module")
def streams(tiny_omni, tiny_llama):
    return {"omni": (tiny_omni, omni_pieces(tiny_omni)), "text": (tiny_llama, text_pieces(tiny_llama))}


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "blind"])
@pytest.mark.parametrize("model", ["omni", "text"])
@pytest.mark.parametrize("scorer", PER_HEAD)
def test_streaming_per_head_memory_holds_its_budget_every_group(streams, scorer, model, aware):
    ad, pieces = streams[model]
    budget = BUDGET[model]
    audio = round(budget / 6)
    all_pos = torch.cat([p.positions for p in pieces], 1)
    all_mod = torch.cat([p.modality for p in pieces])
    text_cfg = getattr(ad.model.config, "text_config", ad.model.config)
    g, head_dim = text_cfg.num_key_value_heads, text_cfg.hidden_size // text_cfg.num_attention_heads
    differ = []

    def check(state, n_new):
        seen_a, seen_v = state.seen[Modality.AUDIO], state.seen[Modality.VISUAL]
        text = int((all_mod[: state.tokens_seen] == Modality.TEXT).sum())
        for mem in state.layers:
            assert mem.per_head and mem.index.shape == (g, mem.n) and mem.keys.shape[1] == g
            for head in range(g):
                row, mod = mem.index[head], mem.modality[head]
                assert bool((row[1:] > row[:-1]).all())  # each head in temporal order
                assert torch.equal(mod, all_mod[row]) and torch.equal(mem.positions[:, head], all_pos[:, row])
                a, v = int((mod == Modality.AUDIO).sum()), int((mod == Modality.VISUAL).sum())
                assert int((mod == Modality.TEXT).sum()) == text
                if aware:
                    assert (a, v) == (min(audio, seen_a), min(budget - audio, seen_v))
                else:
                    assert a + v == min(budget, seen_a + seen_v)
            for k, x in mem.extras.items():
                assert x.shape[:2] == (g, mem.n), k
            differ.append(bool((mem.index != mem.index[:1]).any()))

    engine = StreamingEngine(ad, make_policy(scorer, len(ad.decoder_layers), budget=budget, modality_aware=aware,
                                             per_head=True), group_size=32)
    with torch.no_grad():
        state, _ = engine.prefill(iter(pieces), on_group=check)
    assert state.groups >= 4 and state.seen[Modality.AUDIO] + state.seen[Modality.VISUAL] > budget
    if scorer in ("key_norm", "keydiff", "value_norm"):  # heads really chose differently
        assert any(differ)
    rep = state.report()
    for mem, layer in zip(state.layers, rep.layers):
        n = mem.n
        assert layer.text + layer.audio + layer.visual == n  # per head
        if aware:
            assert (layer.audio, layer.visual) == (audio, budget - audio)
        else:
            assert layer.audio + layer.visual == budget
        assert layer.kv_bytes == 2 * g * n * head_dim * 4  # float32 keys and values
        assert layer.meta_bytes == (mem.positions.shape[0] + 2) * g * n * 8  # long positions, modality, index
        assert layer.extra_bytes == (g * n * 4 if scorer == "h2o" else 0)
    assert "\n" not in rep.line()


@pytest.mark.parametrize("scorer", PER_HEAD)
def test_unlimited_per_head_streaming_equals_the_full_forward(tiny_omni, tiny_llama, scorer):
    question_text = "What colour?"
    # Text LM.
    ad = tiny_llama
    pieces = text_pieces(ad)
    _, question = split_chat_prompt(ad.tokenizer, "You read.", question_text)
    ids = torch.cat([p.token_ids for p in pieces] + [torch.tensor(question)])
    with torch.no_grad():
        ref = ad.model(input_ids=ids.unsqueeze(0)).logits[0]
        engine = StreamingEngine(ad, make_policy(scorer, len(ad.decoder_layers), per_head=True), group_size=23)
        state, logits = engine.prefill(iter(pieces), collect_logits=True)
        q = engine.forward(state, ad.text_piece(question, state.next_pos), want_logits="all")
    assert all(m.per_head for m in state.layers)
    assert (torch.cat([logits, q]) - ref).abs().max().item() <= 1e-4
    # Omni thinker, audio + video.
    ad = tiny_omni
    frames, mel = random_media(4.0)
    prefix, question = split_chat_prompt(ad.tokenizer, "You watch.", question_text)
    input_ids, kw = full_inputs(ad.tokenizer, prefix, question, frames=frames, fps=2.0, mel=mel)
    media = MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]), duration_s=4.0)
    with torch.no_grad():
        ref = ad.model(input_ids=input_ids, **kw).logits[0]
        engine = StreamingEngine(ad, make_policy(scorer, len(ad.decoder_layers), per_head=True), group_size=29)
        state, logits = engine.prefill(ad.stream(media, prefix), collect_logits=True)
        q = engine.forward(state, ad.text_piece(question, state.next_pos), want_logits="all")
    assert all(m.per_head for m in state.layers)
    assert (torch.cat([logits, q]) - ref).abs().max().item() <= 1e-4


# --- (4) gradient checkpointing replays the per-head choice -------------------------------------------


@pytest.fixture()
def lora_omni():
    model, tok = build_tiny_model("tiny-omni", seed=1)
    peft_model = prepare_model(model, Config(lora_rank=4, lora_dropout=0.0))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # LoRA B starts at zero; give it values so LoRA A gets gradients too
            torch.nn.init.normal_(p, std=0.05)
    return peft_model, Qwen2_5OmniAdapter(model, tok)


@pytest.mark.parametrize("scorer", PER_HEAD)
def test_group_checkpointing_gives_the_same_loss_and_gradients_per_head(lora_omni, scorer):
    peft_model, ad = lora_omni
    frames, mel = random_media(4.0, seed=3)
    prefix, q_ids = split_chat_prompt(ad.tokenizer, "s", "q")
    a_ids = ad.tokenizer("A. red", add_special_tokens=False)["input_ids"]
    media = MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]), duration_s=4.0)
    with torch.no_grad():
        pieces = list(ad.stream(media, prefix))
    results = []
    for checkpoint in (False, True):
        engine = StreamingEngine(ad, make_policy(scorer, len(ad.decoder_layers), budget=30, per_head=True),
                                 group_size=25)
        peft_model.zero_grad()
        state, _ = engine.prefill(iter(pieces), checkpoint=checkpoint)
        loss = answer_loss(engine, state, q_ids, a_ids)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, [m.index.clone() for m in state.layers]))
    (l0, g0, i0), (l1, g1, i1) = results
    assert all(m.per_head for m in state.layers)
    assert all(torch.equal(a, b) for a, b in zip(i0, i1))  # the same tokens per head
    assert abs(l0 - l1) < 1e-6 and g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6), n


# --- (5) the rest refuse it -----------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", REFUSED)
def test_scorers_without_a_per_head_score_refuse_per_head(scorer):
    with pytest.raises(ConfigError) as err:
        make_policy(scorer, 4, budget=10, per_head=True)
    msg = str(err.value)
    assert "memory.per_head" in msg and repr(scorer) in msg and "\n" not in msg
    make_policy(scorer, 4, budget=10)  # fine without it


@pytest.mark.parametrize("scorer", [*PER_HEAD, "full"])
def test_per_head_scorers_accept_it(scorer):
    policy = make_policy(scorer, 4, budget=10, per_head=True)
    assert scorer == "full" or (policy.scorer.per_head and "per KV head" in policy.describe())


def test_per_head_must_be_a_bool():
    assert MemoryConfig().per_head is False
    with pytest.raises(FieldValueError) as err:
        MemoryConfig(per_head="yes")
    assert err.value.name == "per_head"
