"""Behaviour tests for every memory scorer, kvpress press-test style.

Each scorer gets at least one hand-built case: keys, values, layer-input hidden states, queries and
modality labels for which the set of tokens kept under a given budget is known BY CONSTRUCTION.
Selection always goes through the real path (`ScoredPolicy(scorer, Budgets(...)).update(ctx)`, which
calls `select` under the budgets' `Limits`); every case has text tokens that must survive, and the
cases between them use audio and visual limits and a modality-blind (pooled) limit.

A case is a function `case(scorer) -> bool` (kept set == expected), so sensitivity is mechanical:

(a) the real scorer passes its case;
(b) the same scorer with its scores negated (`Negated`: same per-token state, scores x -1) fails it;
(c) the `random` scorer (a few seeds) fails it;

i.e. "flip the sign of a scorer, or swap it for random, and a test goes red". A scorer registered
without a case fails `test_every_registered_scorer_has_a_behaviour_case`.

The last part checks OmniMem's score, `attention_mass` and `window_attention` (SnapKV) against
brute-force Python loops written from their definitions (module docstrings, METHOD §3).

Layout conventions: G = 2 KV heads, H = 4 query heads (GQA: head h reads key group h // 2), head
dim D = 4, hidden size HID = 8. Modality strings spell one token per letter: T(ext), V(isual),
A(udio); stream indices are the letter positions, counted over every call on one `Layer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from omnimem_train.memory.attention import attention_mass, window_attention
from omnimem_train.memory.budgets import Budgets
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.memory.policies.scored import ScoredPolicy
from omnimem_train.memory.registry import scorer_names
from omnimem_train.memory.scorers.base import Scorer
from omnimem_train.memory.scorers.h2o import H2OScorer
from omnimem_train.memory.scorers.key_norm import KeyNormScorer
from omnimem_train.memory.scorers.keydiff import KeyDiffScorer
from omnimem_train.memory.scorers.omnimem import NoveltyScorer, OmniMemScorer
from omnimem_train.memory.scorers.random import RandomScorer
from omnimem_train.memory.scorers.recency import RecencyScorer
from omnimem_train.memory.scorers.snapkv import SnapKVScorer
from omnimem_train.memory.scorers.value_norm import ValueNormScorer
from omnimem_train.models.base import Modality

G, H, D, HID = 2, 4, 4, 8
LETTER = {"T": int(Modality.TEXT), "V": int(Modality.VISUAL), "A": int(Modality.AUDIO)}


# --------------------------------------------------------------------------------------------------
# Helpers: one decoder layer driven group by group, as StreamingEngine._run_layers/_evict drive it
# --------------------------------------------------------------------------------------------------

def e(i: int, dim: int = D) -> torch.Tensor:
    """Unit basis vector e_i."""
    v = torch.zeros(dim)
    v[i] = 1.0
    return v


def positions_of(spec: str, letter: str) -> list[int]:
    return [i for i, c in enumerate(spec) if c == letter]


def _per_head(x: torch.Tensor | None, heads: int, n: int, dim: int, seed: int) -> torch.Tensor:
    """(n, dim) -> the same for every head (heads, n, dim); (heads, n, dim) as is; None -> random."""
    if x is None:
        return torch.randn(heads, n, dim, generator=torch.Generator().manual_seed(seed))
    x = x.float()
    return x.expand(heads, n, dim).clone() if x.dim() == 2 else x


class Layer:
    """One decoder layer's memory under a `ScoredPolicy` with per-layer (audio, visual) budgets
    (modality-blind: one pooled budget of audio + visual).

    `preload` sets the memory as earlier groups left it (optionally with chosen per-token state,
    e.g. OmniMem's running attention); `feed` appends one group with the scorer's
    `new_token_extras`, builds the `LayerContext` (queries pre-set, as the engine's lazy query
    function would return them) and applies the policy. Anything not given is seeded noise.
    """

    def __init__(self, scorer: Scorer, audio: int, visual: int, aware: bool = True):
        self.policy = ScoredPolicy(scorer, Budgets(per_layer=((audio, visual),), modality_aware=aware))
        self.memory: LayerMemory | None = None
        self.streamed = 0
        self.seen = {Modality.AUDIO: 0, Modality.VISUAL: 0}

    def _tokens(self, spec, keys, values, hidden) -> tuple[LayerMemory, torch.Tensor]:
        n, i0 = len(spec), self.streamed
        self.streamed += n
        for m in self.seen:
            self.seen[m] += sum(LETTER[c] == int(m) for c in spec)
        keys = _per_head(keys, G, n, D, seed=1000 + i0)
        values = _per_head(values, G, n, D, seed=2000 + i0)
        hidden = _per_head(hidden, 1, n, HID, seed=3000 + i0)[0]
        index = torch.arange(i0, i0 + n)
        mem = LayerMemory(keys[None], values[None], index[None].clone(), torch.tensor([LETTER[c] for c in spec]),
                          index, self.policy.new_token_extras(hidden))
        return mem, hidden

    def preload(self, spec: str, *, keys=None, values=None, hidden=None, **state) -> Layer:
        """Memory = these tokens; `state` overrides per-token extras the scorer keeps (others ignored)."""
        assert self.memory is None
        self.memory, _ = self._tokens(spec, keys, values, hidden)
        for name, value in state.items():
            if name in self.memory.extras:
                self.memory.extras[name] = torch.as_tensor(value, dtype=torch.float32)
        return self

    def feed(self, spec: str, *, keys=None, values=None, hidden=None, queries=None) -> Layer:
        """One group through the layer; queries (H, n, D), or (n, D) for every head alike."""
        new, hidden_new = self._tokens(spec, keys, values, hidden)
        queries = _per_head(queries, H, new.n, D, seed=4000 + self.streamed)
        cand = new if self.memory is None else self.memory.append(new)
        ctx = LayerContext(0, cand, new.n, dict(self.seen), hidden_new, _queries_fn=lambda: queries)
        self.memory = self.policy.update(ctx)
        assert torch.all(self.memory.index[1:] > self.memory.index[:-1])  # temporal order kept
        return self

    @property
    def kept(self) -> set[int]:
        return set(self.memory.index.tolist())


def text_of(*specs: str) -> set[int]:
    """Stream indices of the text tokens of consecutive specs."""
    return set(positions_of("".join(specs), "T"))


class Negated(Scorer):
    """The wrapped scorer with its scores multiplied by -1; per-token state handled identically
    (same `new_token_extras`, the inner `score` still updates it)."""

    def __init__(self, inner: Scorer):
        self.inner = inner
        self.name = f"-{inner.name}"

    def new_token_extras(self, hidden_new):
        return self.inner.new_token_extras(hidden_new)

    def score(self, ctx):
        return -self.inner.score(ctx)


# --------------------------------------------------------------------------------------------------
# The cases: each builds its tokens, runs the scorer through the real selection, compares kept sets
# --------------------------------------------------------------------------------------------------

def _with_norms(spec: str, spread: tuple[float, float], planted: dict[int, float], text: float,
                seed: int) -> torch.Tensor:
    """(G, n, D) vectors in seeded random directions, the same norm in every KV head: evenly spread
    over `spread`, `planted` {token: norm} where the case wants it, and `text` for every text token."""
    norms = torch.linspace(*spread, len(spec))
    for i, norm in planted.items():
        norms[i] = norm
    for i in positions_of(spec, "T"):
        norms[i] = text
    dirs = torch.randn(G, len(spec), D, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(dirs, dim=-1) * norms[None, :, None]


def case_key_norm(scorer) -> bool:
    """KnormPress keeps the SMALLEST key norms. Keys of every token point in random directions with
    norms 2.0-3.5 in both KV heads; tokens 3 (visual, memory), 12 (visual, group) and 6 (audio,
    memory) get norms 0.05-0.15. Budgets 1 audio + 2 visual keep exactly those three. Text gets the
    largest norms (worst score) and must survive anyway."""
    mem, grp = "TVVVAVAVT", "VAAVVVVT"
    spec = mem + grp
    keys = _with_norms(spec, (2.0, 3.5), {3: 0.05, 12: 0.1, 6: 0.15}, text=50.0, seed=0)
    layer = Layer(scorer, audio=1, visual=2)
    layer.preload(mem, keys=keys[:, : len(mem)]).feed(grp, keys=keys[:, len(mem):])
    return layer.kept == text_of(spec) | {3, 12, 6}


def case_value_norm(scorer) -> bool:
    """Keep the LARGEST value norms. Values have norms 1.0-2.0 except visual tokens 2 and 10 and
    audio token 13 (norms 8-10, in both heads). Budgets 1 audio + 2 visual keep exactly those.
    Text values are near zero (worst score) and must survive anyway."""
    mem, grp = "TVVAVAVT", "VVVAVAAT"
    spec = mem + grp
    values = _with_norms(spec, (1.0, 2.0), {2: 8.0, 10: 9.0, 13: 10.0}, text=1e-3, seed=1)
    layer = Layer(scorer, audio=1, visual=2)
    layer.preload(mem, values=values[:, : len(mem)]).feed(grp, values=values[:, len(mem):])
    return layer.kept == text_of(spec) | {2, 10, 13}


def case_keydiff(scorer) -> bool:
    """KeyDiff keeps keys far from the anchor (mean key). Every key is unit length (so the anchor is
    the same direction whether the mean is taken over raw or normalised keys) and ~e0 (e0 plus 0.1
    noise), except tokens 4 (visual), 9 and 13 (audio), which point along e1, e2 and -e0.
    The anchor is then ~e0 (13 keys ~e0 against 3 elsewhere): the three outliers have cosine <= 0.1
    to it, the rest ~0.99. Under a modality-BLIND pooled budget of 3 they are exactly what is kept,
    whatever their modality."""
    mem, grp = "TVAVVAVVT", "AVVVAVT"
    spec = mem + grp
    gen = torch.Generator().manual_seed(2)
    keys = e(0).expand(G, len(spec), D) + 0.1 * torch.randn(G, len(spec), D, generator=gen)
    for i, away in zip((4, 9, 13), (e(1), e(2), -e(0))):
        keys[:, i] = away + 0.05 * torch.randn(G, D, generator=gen)
    keys = torch.nn.functional.normalize(keys, dim=-1)
    layer = Layer(scorer, audio=1, visual=2, aware=False)  # pooled: 3 audio+visual tokens
    layer.preload(mem, keys=keys[:, : len(mem)]).feed(grp, keys=keys[:, len(mem):])
    return layer.kept == text_of(spec) | {4, 9, 13}


def _attention_keys(n: int, where: dict[int, torch.Tensor]) -> torch.Tensor:
    """(n, D) keys: zero (a flat logit of 0 for any query) except the given tokens."""
    keys = torch.zeros(n, D)
    for i, k in where.items():
        keys[i] = k
    return keys


def case_snapkv_window(scorer) -> bool:
    """SnapKV scores with the LAST `window` (= 4) queries of the group only, pooled over 5 neighbours.

    Memory tokens 4,5,6 (visual) and 12,13,14 (audio) have keys 5·e0; memory tokens 8,9,10
    (visual, decoys) have keys 5·e1; all other keys are 0. The group's first 4 queries are 4·e1
    (they look at the decoys), its last 4 queries are 4·e0 (they look at the targets): logit
    5·4/√4 = 10 against 0, so each window query puts ~1/6 of its attention on each target and
    ~nothing elsewhere. The targets come in runs of 3, so after kernel-5 average pooling each target
    averages 3 targets (the run's neighbours only 2, everything else 0). Budgets 3 audio + 3 visual
    keep exactly the two runs. The decoys, which get MORE attention than the targets over the whole
    group (4 queries on 3 decoys vs 4 on 6 targets), must not be kept: only the window counts."""
    mem, grp = "TVVVVVVVVVVAAAAA", "TVVAAVAT"
    spec = mem + grp
    keys = _attention_keys(len(spec), {**{i: 5 * e(0) for i in (4, 5, 6, 12, 13, 14)},
                                       **{i: 5 * e(1) for i in (8, 9, 10)}})
    queries = torch.stack([4 * e(1)] * 4 + [4 * e(0)] * 4)
    layer = Layer(scorer, audio=3, visual=3)
    layer.preload(mem, keys=keys[: len(mem)]).feed(grp, keys=keys[len(mem):], queries=queries)
    return layer.kept == text_of(spec) | {4, 5, 6, 12, 13, 14}


def case_snapkv_cluster(scorer) -> bool:
    """SnapKV's pooling keeps a CLUSTER together over an isolated spike that is individually stronger.

    Keys: visual memory tokens 3,4,5 are 2·e0, visual memory token 10 is (2 + ln 1.5)·e0 (raw
    attention 1.5x that of each cluster token), all others 0; every query is 2·e0 (logits 2 and
    2.4 vs 0). Without pooling the top 3 would be {10 and two of 3,4,5}. With kernel-5 average
    pooling each cluster token averages 3 cluster values (~0.6 y), the cluster's neighbours ~0.4 y,
    the spike and its neighbours only ~0.3 y. A modality-blind pooled budget of 3 keeps {3,4,5}."""
    mem, grp = "TVVVVVAVVVVV", "TAVAVT"
    spec = mem + grp
    spike = (2 + math.log(1.5)) * e(0)
    keys = _attention_keys(len(spec), {3: 2 * e(0), 4: 2 * e(0), 5: 2 * e(0), 10: spike})
    queries = torch.stack([2 * e(0)] * len(grp))
    layer = Layer(scorer, audio=1, visual=2, aware=False)
    layer.preload(mem, keys=keys[: len(mem)]).feed(grp, keys=keys[len(mem):], queries=queries)
    return layer.kept == text_of(spec) | {3, 4, 5}


def case_h2o(scorer) -> bool:
    """H2O accumulates attention over every group a token has seen: an EARLIER heavy hitter beats a
    token that is heavier only in the current group.

    Group 1 "TVAVAVAAVT" (0-9): visual token 1 (key 6·e0) and audio token 2 (key 6·e1); every query
    is 2·(e0 + e1) (logit 6 vs 0), so 1 collects ~5 (query 1 alone, then half of queries 2..9)
    and 2 ~4. Budgets 1 audio + 1 visual keep 1 and 2.
    Group 2, the same pattern (10-19): visual 11 (key 1.5·e2) and audio 12 (key 1.5·e3); every
    query is e2 + e3 (logit 1.5 vs 0), so 11 gets ~1.7 and 12 ~1.4 NOW, while 1 and 2 get ~1.0
    now (background). Accumulated, 1 (~6.0) beats 11 and 2 (~5.0) beats 12: kept = text + {1, 2}. A scorer
    that used the current group's attention only would keep {11, 12} (checked below)."""
    group = "TVAVAVAAVT"
    keys1 = _attention_keys(len(group), {1: 6 * e(0), 2: 6 * e(1)})
    keys2 = _attention_keys(len(group), {1: 1.5 * e(2), 2: 1.5 * e(3)})
    layer = Layer(scorer, audio=1, visual=1)
    layer.feed(group, keys=keys1, queries=(2 * (e(0) + e(1))).expand(len(group), D))
    layer.feed(group, keys=keys2, queries=(e(2) + e(3)).expand(len(group), D))
    return layer.kept == text_of(group * 2) | {1, 2}


def case_recency(scorer) -> bool:
    """StreamingLLM with 2 sinks: the first 2 audio/visual tokens of the stream (1: visual, 2: audio)
    are kept forever, the rest of each modality's budget goes to the most recent tokens.

    Three groups "TVAVAVAT" (indices 0-7, 8-15, 16-23) under budgets 2 audio + 3 visual: after the
    last group, visual = sink 1 + the last two visual (19, 21); audio = sink 2 + the last audio
    (22). The sinks must survive two evictions in between."""
    group = "TVAVAVAT"
    layer = Layer(scorer, audio=2, visual=3)
    for _ in range(3):
        layer.feed(group)
    return layer.kept == text_of(group * 3) | {1, 19, 21} | {2, 22}


def test_recency_an_evicted_sink_promotes_no_other_token():
    """Sinks are the stream's first media tokens, not the first ones still in memory: with 2 sinks
    (audio 1, visual 2) and no audio budget, the audio sink goes, and visual token 4 must not take
    its place; memory keeps sink 2 + the two most recent visual tokens after every group."""
    from omnimem_train.memory.scorers.recency import RecencyScorer

    layer = Layer(RecencyScorer(sink_tokens=2), audio=0, visual=3)
    groups = ["TAVVVVT", "TVVVVVT", "TVVVVVT"]
    start = 0
    for g in groups:
        layer.feed(g)
        start += len(g)
        media = {i for i in layer.kept if i not in text_of(*groups)}
        assert media == {2, start - 3, start - 2}, media


def _novel_hidden(spec: str, novel: dict[int, int]) -> torch.Tensor:
    """(n, HID) hidden states: a run of identical states e0, except token i = e_{novel[i]}
    (orthogonal to e0 and to each other), so: a novel token has cos 0 with both neighbours and
    novelty sqrt(1 - 0/2) = 1; its neighbours have cos 1 + 0 -> sqrt(1/2) ~ 0.71; every other token
    has cos 1 + 1 -> novelty 0 (a missing neighbour counts as cos 1)."""
    hidden = e(0, HID).expand(len(spec), HID).clone()
    for i, axis in novel.items():
        hidden[i] = e(axis, HID)
    return hidden


def case_novelty(scorer) -> bool:
    """OmniMem / novelty keep the tokens that differ from their neighbours (perturbation).

    Hidden states are one repeated vector except visual tokens 7 (the LAST memory token, so its
    next neighbour is the group's first token: [memory ; group] is one sequence) and 11 and audio
    token 4, which are orthogonal to everything: novelty 1 for them, ~0.71 for their neighbours, 0
    for the rest. Budgets 1 audio + 2 visual keep exactly {4, 7, 11}. With OmniMem's default
    λ = 0.02 the attention factor a^λ is within [0.9, 1.05] for any attention mass here (random
    keys/queries), so it cannot reorder 1 vs 0.71 vs 0."""
    mem, grp = "TVVAAVAV", "VAVVAAVT"
    spec = mem + grp
    hidden = _novel_hidden(spec, {7: 1, 11: 2, 4: 3})
    layer = Layer(scorer, audio=1, visual=2)
    layer.preload(mem, hidden=hidden[: len(mem)], attn=torch.full((len(mem),), 0.5))
    layer.feed(grp, hidden=hidden[len(mem):])
    return layer.kept == text_of(spec) | {4, 7, 11}


OMNI_ATT_MEM, OMNI_ATT_GRP = "TVVAVAVAAVT", "VAVVAT"
OMNI_ATT_NOVEL = {2: 1, 11: 2, 5: 3, 8: 4}  # token -> hidden axis: visual 2, 11; audio 5, 8


def case_omnimem_attention(scorer) -> bool:
    """With a large λ (1.0), attention decides between EQUALLY novel tokens (novelty 1 each; novel
    tokens are 3 apart, so no other token sits between two of them and ties with them).

    Visual 2 (memory) and 11 (group) are novel; 2's key is 4·e0 and every query is 2·e0 (logit 4
    vs 0), so 2 gets far more attention than 11: budget 1 visual keeps 2. Visual 14 has key 4·e0
    too (attended as much as 2) but is NOT novel (novelty 0): score 0, never kept.
    Audio 5 and 8 are novel, in memory, with identical (zero) keys, hence the same current
    attention; their running attention from earlier groups is 3.0 and 0.1, so the running average
    a = (a_now + a_prev)/2 favours 5: budget 1 audio keeps 5. kept = text + {2, 5}."""
    mem, grp = OMNI_ATT_MEM, OMNI_ATT_GRP
    spec = mem + grp
    hidden = _novel_hidden(spec, OMNI_ATT_NOVEL)
    keys = _attention_keys(len(spec), {2: 4 * e(0), 14: 4 * e(0)})
    prev = torch.full((len(mem),), 0.2)
    prev[5], prev[8] = 3.0, 0.1
    layer = Layer(scorer, audio=1, visual=1)
    layer.preload(mem, keys=keys[: len(mem)], hidden=hidden[: len(mem)], attn=prev)
    layer.feed(grp, keys=keys[len(mem):], hidden=hidden[len(mem):], queries=(2 * e(0)).expand(len(grp), D))
    return layer.kept == text_of(spec) | {2, 5}


RANDOM_CASE_SEED = 7


def case_random(scorer) -> bool:
    """Random eviction is seeded uniform noise: the scores of one call are the first
    `torch.rand(n, generator=torch.Generator().manual_seed(seed))` draws, so the kept set is, per
    modality, the budget's top draws (worked out here by plain sorting), plus all text."""
    spec = "TVAVVAVAVVAAVVT"
    draws = torch.rand(len(spec), generator=torch.Generator().manual_seed(RANDOM_CASE_SEED)).tolist()
    expected = text_of(spec)
    for letter, k in (("A", 2), ("V", 3)):
        expected |= set(sorted(positions_of(spec, letter), key=lambda i: -draws[i])[:k])
    layer = Layer(scorer, audio=2, visual=3)
    layer.feed(spec)
    return layer.kept == expected


CASES: dict[str, tuple[Callable[[], Scorer], Callable[[Scorer], bool]]] = {
    "key_norm": (KeyNormScorer, case_key_norm),
    "value_norm": (ValueNormScorer, case_value_norm),
    "keydiff": (KeyDiffScorer, case_keydiff),
    "snapkv/window": (lambda: SnapKVScorer(window=4), case_snapkv_window),
    "snapkv/cluster": (SnapKVScorer, case_snapkv_cluster),
    "h2o": (H2OScorer, case_h2o),
    "recency": (lambda: RecencyScorer(sink_tokens=2), case_recency),
    "novelty": (NoveltyScorer, case_novelty),
    "omnimem/novelty": (OmniMemScorer, case_novelty),
    "omnimem/attention": (lambda: OmniMemScorer(lam=1.0, query_block=3), case_omnimem_attention),
    "random": (lambda: RandomScorer(seed=RANDOM_CASE_SEED), case_random),
}
NAMES = sorted(CASES)
NON_RANDOM = [n for n in NAMES if CASES[n][0]().name != "random"]


def test_every_registered_scorer_has_a_behaviour_case():
    covered = {factory().name for factory, _ in CASES.values()}
    missing = sorted(set(scorer_names()) - covered)
    assert not missing, f"registered scorers without a behaviour case in {__name__}: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_real_scorer_keeps_the_expected_set(name):
    factory, case = CASES[name]
    assert case(factory()) is True


@pytest.mark.parametrize("name", NAMES)
def test_negated_scorer_fails_the_case(name):
    factory, case = CASES[name]
    assert case(Negated(factory())) is False


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", NON_RANDOM)
def test_random_scorer_fails_the_case(name, seed):
    assert CASES[name][1](RandomScorer(seed=seed)) is False


class _CurrentAttentionOnly(Scorer):
    """H2O without accumulation: only the current group's attention mass."""

    name = "current_attention"

    def score(self, ctx):
        return attention_mass(ctx.queries(), ctx.cand.keys, ctx.n_old)


def test_h2o_case_needs_accumulation_across_groups():
    """The h2o case is decided by earlier groups: scoring the current group alone keeps the wrong set."""
    assert case_h2o(_CurrentAttentionOnly()) is False


def test_snapkv_cluster_case_needs_pooling():
    """Without pooling (kernel 1) the isolated spike would be kept: the cluster case tests pooling."""
    assert case_snapkv_cluster(SnapKVScorer(kernel=1)) is False


def test_omnimem_attention_case_is_a_tie_for_novelty():
    """In the λ = 1 case the pairs are equally novel, so only attention can separate them."""
    spec = OMNI_ATT_MEM + OMNI_ATT_GRP
    n, n_new = len(spec), len(OMNI_ATT_GRP)
    cand = LayerMemory(torch.zeros(1, G, n, D), torch.zeros(1, G, n, D), torch.zeros(1, n, dtype=torch.long),
                       torch.tensor([LETTER[c] for c in spec]), torch.arange(n),
                       {"hidden": _novel_hidden(spec, OMNI_ATT_NOVEL)})
    scores = NoveltyScorer().score(LayerContext(0, cand, n_new, {}, torch.zeros(n_new, HID)))
    assert [float(scores[i]) for i in (2, 11, 5, 8)] == [1.0] * 4
    assert float(scores[14]) == 0.0
    assert float(scores.max()) == 1.0 and int((scores == 1.0).sum()) == 4


def test_random_scorer_size_reproducibility_and_seeds():
    """Right size under the budget (all text + exactly the budget per modality), the same kept set
    for the same seed, different kept sets for different seeds."""
    spec = "TVAVVAVAVVAAVVTVVAAVVVAVT"

    def kept(seed):
        layer = Layer(RandomScorer(seed=seed), audio=3, visual=4)
        layer.feed(spec[:12]).feed(spec[12:])
        return layer

    layer = kept(3)
    assert layer.memory.count(Modality.AUDIO) == 3 and layer.memory.count(Modality.VISUAL) == 4
    assert text_of(spec) <= layer.kept and len(layer.kept) == len(text_of(spec)) + 7
    assert kept(3).kept == layer.kept
    assert len({frozenset(kept(s).kept) for s in range(4)}) > 1


# --------------------------------------------------------------------------------------------------
# Brute force from the definitions: OmniMem's score, attention_mass, window_attention (+ pooling)
# --------------------------------------------------------------------------------------------------

def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _softmax(logits):
    m = max(logits)
    ex = [math.exp(x - m) for x in logits]
    z = sum(ex)
    return [x / z for x in ex]


def _brute_mass(q, k, n_old):
    """a_i = Σ_j softmax_i( mean_h q_{h,j}·k_{g(h),i} / √d ) over keys i ≤ n_old + j (causal).
    q: H x L x d nested lists; k: G x n x d; head h reads key group h // (H / G) (GQA)."""
    heads, L, d, n = len(q), len(q[0]), len(q[0][0]), len(k[0])
    rep = heads // len(k)
    mass = [0.0] * n
    for j in range(L):
        visible = n_old + j + 1
        logits = []
        for i in range(visible):
            per_head = [_dot(q[h][j], k[h // rep][i]) / math.sqrt(d) for h in range(heads)]
            logits.append(sum(per_head) / heads)  # heads averaged in LOGIT space
        for i, p in enumerate(_softmax(logits)):
            mass[i] += p
    return mass


def _brute_window(q, k, n_old, window):
    """SnapKV: mean over heads h and the last `window` queries j of softmax_i(q_{h,j}·k_{g(h),i}/√d)
    (each head its own softmax), causal; keys not visible to a query count 0."""
    heads, L, d, n = len(q), len(q[0]), len(q[0][0]), len(k[0])
    rep = heads // len(k)
    w = min(window, L)
    att = [0.0] * n
    for h in range(heads):
        for j in range(L - w, L):
            visible = n_old + j + 1
            probs = _softmax([_dot(q[h][j], k[h // rep][i]) / math.sqrt(d) for i in range(visible)])
            for i, p in enumerate(probs):
                att[i] += p / (heads * w)
    return att


def _cos(a, b):
    return _dot(a, b) / (math.sqrt(_dot(a, a)) * math.sqrt(_dot(b, b)))


def _tiny_attention_case(n_old, n_new, seed):
    gen = torch.Generator().manual_seed(seed)
    n = n_old + n_new
    return torch.randn(H, n_new, D, generator=gen), torch.randn(1, G, n, D, generator=gen), gen


@pytest.mark.parametrize("lam", [0.02, 0.7, 2.0])
def test_omnimem_score_matches_its_definition_brute_force(lam):
    """G=2 KV heads, H=4 query heads, d=4; 3 memory tokens (with running attention 0.3/1.7/0.9 from
    earlier groups) + 5 new. score_i = sqrt(1 - s_i/2)·a_i^λ, s_i = cos(h_i, h_{i-1}) + cos(h_i, h_{i+1})
    over [memory ; group] (missing neighbour: cos = 1); a_i = attention mass from the group's queries
    (`_brute_mass`), averaged with the running value (a_i + a_prev)/2 for memory tokens."""
    n_old, n_new = 3, 5
    n = n_old + n_new
    queries, keys, gen = _tiny_attention_case(n_old, n_new, seed=11)
    hidden = torch.randn(n, 6, generator=gen)
    hidden[5] = 2.5 * hidden[4]  # parallel neighbours: cos exactly 1 between 4 and 5
    prev = torch.tensor([0.3, 1.7, 0.9] + [0.0] * n_new)
    cand = LayerMemory(keys, keys.clone(), torch.zeros(1, n, dtype=torch.long),
                       torch.full((n,), int(Modality.VISUAL)), torch.arange(n), {"hidden": hidden, "attn": prev.clone()})
    ctx = LayerContext(0, cand, n_new, {}, hidden[n_old:], _queries_fn=lambda: queries)
    got = OmniMemScorer(lam=lam, query_block=2).score(ctx)  # block 2 < 5 queries: blocks exercised

    h, q, k = hidden.tolist(), queries.tolist(), keys[0].tolist()
    mass = _brute_mass(q, k, n_old)
    want, want_attn = [], []
    for i in range(n):
        c_prev = _cos(h[i], h[i - 1]) if i > 0 else 1.0
        c_next = _cos(h[i], h[i + 1]) if i < n - 1 else 1.0
        a = (mass[i] + float(prev[i])) / 2 if i < n_old else mass[i]
        want_attn.append(a)
        want.append(math.sqrt(max(0.0, 1 - (c_prev + c_next) / 2)) * a**lam)
    assert torch.allclose(got, torch.tensor(want), rtol=1e-5, atol=1e-6)
    assert torch.allclose(ctx.cand.extras["attn"], torch.tensor(want_attn), rtol=1e-5, atol=1e-6)
    assert ctx.cand.extras["hidden"] is hidden  # the hidden states are left alone


@pytest.mark.parametrize("n_old,n_new,block", [(0, 5, 256), (3, 5, 2), (6, 7, 3)])
def test_attention_mass_matches_its_definition_brute_force(n_old, n_new, block):
    queries, keys, _ = _tiny_attention_case(n_old, n_new, seed=n_old + 10 * n_new)
    got = attention_mass(queries, keys, n_old, block)
    want = _brute_mass(queries.tolist(), keys[0].tolist(), n_old)
    assert torch.allclose(got, torch.tensor(want), rtol=1e-5, atol=1e-6)
    assert math.isclose(float(got.sum()), n_new, rel_tol=1e-5)  # every query spends mass 1


@pytest.mark.parametrize("n_old,n_new,window", [(3, 5, 2), (4, 6, 6), (2, 3, 32)])
def test_window_attention_matches_its_definition_brute_force(n_old, n_new, window):
    queries, keys, _ = _tiny_attention_case(n_old, n_new, seed=7 * n_old + n_new)
    got = window_attention(queries, keys, n_old, window)
    want = _brute_window(queries.tolist(), keys[0].tolist(), n_old, window)
    assert torch.allclose(got, torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_snapkv_score_is_window_attention_average_pooled_over_five_neighbours():
    """score_i = mean of the window attention over tokens i-2..i+2 that exist (edges average fewer)."""
    n_old, n_new, window = 4, 6, 3
    queries, keys, _ = _tiny_attention_case(n_old, n_new, seed=5)
    n = n_old + n_new
    cand = LayerMemory(keys, keys.clone(), torch.zeros(1, n, dtype=torch.long),
                       torch.full((n,), int(Modality.AUDIO)), torch.arange(n))
    got = SnapKVScorer(window=window).score(LayerContext(0, cand, n_new, {}, torch.zeros(n_new, HID),
                                                         _queries_fn=lambda: queries))
    att = _brute_window(queries.tolist(), keys[0].tolist(), n_old, window)
    want = [sum(att[max(0, i - 2): i + 3]) / len(att[max(0, i - 2): i + 3]) for i in range(n)]
    assert torch.allclose(got, torch.tensor(want), rtol=1e-5, atol=1e-6)
