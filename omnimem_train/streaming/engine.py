"""Group-wise streaming prefill with per-layer memory (METHOD.md §2).

For each group of stream tokens and at every decoder layer l, the group attends to
[memory of layer l ; group] (all memory precedes the group in time, so the mask is "see all
memory, causal inside the group"), then the memory policy keeps a subset of that concatenation
as layer l's new memory. Layers therefore hold different tokens and different counts, which is
why the engine drives the decoder layers itself instead of calling `model.forward` with one
shared cache. Retained keys keep the RoPE of their original positions; nothing is re-indexed.

The same loop serves the question, option scoring and token-by-token decoding (groups that are
never evicted), and — run with gradients — training. In training, `prefill(grad_groups=k)` lets
gradients through the retained memory reach only the stream's last k groups: the older groups run
without autograd, so training memory does not grow with the stream's length.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from omnimem_train.memory.budgets import stream_counts
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.memory.policy import MemoryPolicy
from omnimem_train.memory.report import MemoryReport, memory_report
from omnimem_train.models.base import Modality, ModelAdapter, StreamPiece
from omnimem_train.streaming.grouping import iter_groups


class _GroupKV:
    """The one-layer stand-in for a transformers `Cache` that a decoder layer's attention calls:
    `update` prepends the layer's memory and records the group's own (RoPE'd) keys/values."""

    def __init__(self, memory: LayerMemory | None):
        self.memory = memory
        self.new_keys = self.new_values = self.keys = self.values = None

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        self.new_keys, self.new_values = key_states, value_states
        if self.memory is None or self.memory.n == 0:
            self.keys, self.values = key_states, value_states
        else:  # kept: the candidates' keys/values are exactly this concatenation
            self.keys = torch.cat([self.memory.keys, key_states], dim=2)
            self.values = torch.cat([self.memory.values, value_states], dim=2)
        return self.keys, self.values


def group_mask(n_mem: int, n_new: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, 1, n_new, n_mem + n_new) additive mask: every memory slot visible, causal in the group."""
    mask = torch.zeros(1, 1, n_new, n_mem + n_new, dtype=dtype, device=device)
    causal = torch.ones(n_new, n_new, dtype=torch.bool, device=device).triu(1)
    mask[0, 0, :, n_mem:].masked_fill_(causal, torch.finfo(dtype).min)
    return mask


def detached_memory(memory: LayerMemory | None) -> LayerMemory | None:
    """`memory` cut from the autograd graph: its keys/values, bookkeeping and every tensor of the
    policy's per-token state (`extras`) detached (the same storage, no copy)."""
    if memory is None:
        return None
    cut = {}
    for f in dataclasses.fields(memory):
        value = getattr(memory, f.name)
        if isinstance(value, torch.Tensor):
            value = value.detach()
        elif isinstance(value, dict):
            value = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in value.items()}
        cut[f.name] = value
    return LayerMemory(**cut)


def _last_k_flags(groups: Iterable[StreamPiece], k: int) -> Iterator[tuple[StreamPiece, bool]]:
    """-> (group, whether it is one of the last k groups) for each group, in order. Looks k groups
    ahead: a group is handed out once k more have arrived (then it is not among the last k) or once
    the stream has ended."""
    ahead: deque[StreamPiece] = deque()
    for group in groups:
        ahead.append(group)
        if len(ahead) > k:
            yield ahead.popleft(), False
    while ahead:
        yield ahead.popleft(), True


@dataclass
class StreamState:
    """Everything a stream has left behind: one memory per layer and the position bookkeeping."""

    layers: list[LayerMemory | None]
    tokens_seen: int = 0  # stream tokens processed so far (the next token's stream index)
    next_pos: int = 0  # rotary position where following text continues
    groups: int = 0
    seen: dict[Modality, int] = field(default_factory=lambda: {Modality.AUDIO: 0, Modality.VISUAL: 0})

    def report(self) -> MemoryReport:
        return memory_report([m for m in self.layers if m is not None], self.tokens_seen)


class StreamingEngine:
    """Drives a model adapter's decoder layers group by group under a memory policy."""

    def __init__(self, adapter: ModelAdapter, policy: MemoryPolicy, group_size: int | None = 1024,
                 group_seconds: float | None = None):
        if group_size is None and group_seconds is None:
            raise ValueError("one of group_size / group_seconds must be set")
        self.adapter, self.policy = adapter, policy
        self.group_size, self.group_seconds = group_size, group_seconds

    @classmethod
    def from_config(cls, adapter: ModelAdapter, memory, policy: MemoryPolicy | None = None) -> StreamingEngine:
        """The engine a `MemoryConfig` describes: its memory policy (`memory.registry.build_policy`,
        unless `policy` is given) and its grouping. The one set-up of infer, eval, calibrate and train."""
        from omnimem_train.memory.registry import build_policy

        policy = policy if policy is not None else build_policy(memory, len(adapter.decoder_layers))
        return cls(adapter, policy, memory.group_size, memory.group_seconds)

    def new_state(self) -> StreamState:
        return StreamState(layers=[None] * len(self.adapter.decoder_layers))

    def start_stream(self, pieces: Iterable[StreamPiece], expected: dict | None = None) -> Iterable[StreamPiece]:
        """Tell the policy what a new stream holds before it runs -> the pieces to stream.

        When the policy's budget depends on the stream (`memory.budget_fraction`), its exact
        audio/visual token counts are needed first: the stream is materialised (encoded) and
        counted. Otherwise the policy gets the estimate `expected` (frame dropping spaces its kept
        steps by it) and the stream stays lazy.
        """
        if self.policy.needs_counts:
            pieces = list(pieces)
            self.policy.expect(stream_counts(pieces))
        elif expected is not None:
            self.policy.expect(expected)
        return pieces

    def prefill(
        self,
        pieces: Iterable[StreamPiece],
        state: StreamState | None = None,
        on_group: Callable[[StreamState, int], None] | None = None,
        collect_logits: bool = False,
        checkpoint: bool = False,
        grad_groups: int | None = None,
    ) -> tuple[StreamState, torch.Tensor | None]:
        """Stream `pieces` in groups with eviction after every layer.

        Returns the state and, if `collect_logits`, the (N, vocab) logits of every stream token
        (only meaningful for checks: a real stream never materialises them). `checkpoint`: see
        `forward` (training).

        grad_groups: None: every group runs with autograd (if enabled), so gradients reach every
        group through the retained memory. k >= 1: only this call's last k groups do. The groups
        before them run under `torch.no_grad` (their activations are freed at once), and the memory
        the first of the last k groups reads is detached (`detached_memory`) whenever a group ran
        before it (in this call or an earlier one). To know which groups are the last k, the groups
        are cut k ahead of the decoder (at most k groups of pieces wait). The values computed are
        the same as with None; with at most k groups and a fresh state, the gradients are too.
        """
        if grad_groups is not None and (isinstance(grad_groups, bool) or not isinstance(grad_groups, int)
                                        or grad_groups < 1):
            raise ValueError(f"grad_groups must be None or an int >= 1, got {grad_groups!r}")
        state = state or self.new_state()
        logits = []
        pieces = self.policy.filter_stream(pieces)
        groups = iter_groups(pieces, self.group_size, self.group_seconds)
        flagged = ((g, True) for g in groups) if grad_groups is None else _last_k_flags(groups, grad_groups)
        cut = False  # the memory the first of the last k groups reads is detached (once)
        for group, in_window in flagged:
            if not in_window:
                with torch.no_grad():
                    out = self.forward(state, group, evict=True, want_logits="all" if collect_logits else "none")
            else:
                if grad_groups is not None and not cut:
                    if state.groups > 0:
                        state.layers = [detached_memory(m) for m in state.layers]
                    cut = True
                out = self.forward(state, group, evict=True, want_logits="all" if collect_logits else "none",
                                   checkpoint=checkpoint)
            if collect_logits:
                logits.append(out)
            if on_group is not None:
                on_group(state, len(group))
        return state, (torch.cat(logits) if collect_logits and logits else None)

    def forward(self, state: StreamState, piece: StreamPiece, *, evict: bool = False, commit: bool = True,
                want_logits: str = "none", checkpoint: bool = False) -> torch.Tensor | None:
        """Run one group through every layer.

        piece: L tokens. evict: apply the policy after each layer. commit: store the result in
        `state` (False: score a continuation without changing memory). want_logits: "none",
        "last" -> (vocab,), or "all" -> (L, vocab). checkpoint: with autograd on, keep only the
        group's inputs and recompute the group in backward (activation memory per group is then
        its embeddings plus the budget-bounded memory it read).
        """
        seen = {m: c + int((piece.modality == int(m)).sum()) for m, c in state.seen.items()}
        if checkpoint and torch.is_grad_enabled():
            # The recompute must keep the same tokens: record the kept stream indices on the first
            # pass and replay them (random scorers, running statistics would otherwise diverge).
            replay: dict[int, torch.Tensor] = {}
            layers, x = torch.utils.checkpoint.checkpoint(
                self._run_layers, state.layers, piece, state.tokens_seen, seen, evict, replay, use_reentrant=False)
        else:
            layers, x = self._run_layers(state.layers, piece, state.tokens_seen, seen, evict, None)
        if commit:
            state.layers = layers
            state.tokens_seen += len(piece)
            state.next_pos = piece.next_pos()
            state.groups += 1
            state.seen = seen
        if want_logits == "none":
            return None
        h = x[0, -1:] if want_logits == "last" else x[0]
        out = self.adapter.lm_head(self.adapter.final_norm(h))
        return out[0] if want_logits == "last" else out

    def _run_layers(self, memories: list[LayerMemory | None], piece: StreamPiece, first_index: int,
                    seen: dict[Modality, int], evict: bool, replay: dict[int, torch.Tensor] | None):
        """-> (new memory per layer, (1, L, D) final hidden states before the norm)."""
        ad = self.adapter
        x = piece.embeds.to(ad.device, ad.dtype).unsqueeze(0)  # (1, L, D)
        n = x.shape[1]
        cos_sin = ad.rotary(x, piece.positions.to(ad.device))
        new_tokens = dict(
            positions=piece.positions.to(ad.device),
            modality=piece.modality.to(ad.device),
            index=torch.arange(first_index, first_index + n, device=ad.device),
        )
        layers, masks = [], {}
        for i, layer in enumerate(ad.decoder_layers):
            mem = memories[i]
            kv = _GroupKV(mem)
            n_mem = 0 if mem is None else mem.n
            if n_mem not in masks:  # layers with equal memory sizes share one mask
                masks[n_mem] = group_mask(n_mem, n, x.dtype, x.device)
            h_in = x
            # Keep the layer's own q_proj output: attention-based scorers need the group's queries
            # and would otherwise recompute them (the hook lives only for this call).
            q_out: list[torch.Tensor] = []
            hook = layer.self_attn.q_proj.register_forward_hook(lambda m, i, o, q_out=q_out: q_out.append(o.detach()))
            try:
                x = layer(x, attention_mask=masks[n_mem], position_embeddings=cos_sin, cache=kv)
            finally:
                hook.remove()
            if piece.layer_adds is not None and i < len(piece.layer_adds):  # DeepStack features
                x = x + piece.layer_adds[i].to(x.device, x.dtype).unsqueeze(0)
            cand = LayerMemory(kv.new_keys, kv.new_values, **new_tokens,
                               extras=self.policy.new_token_extras(h_in[0].detach()))
            cand = cand if mem is None else mem.append(cand, keys=kv.keys, values=kv.values)
            if evict:
                cand = self._evict(i, cand, n, seen, h_in, cos_sin, replay, q_out[-1] if q_out else None)
            layers.append(cand)
        return layers, x

    def _evict(self, i, cand: LayerMemory, n: int, seen, h_in, cos_sin, replay, q_proj_out=None) -> LayerMemory:
        """Apply the policy to layer i's candidates. Selection runs without autograd (indices are
        not differentiated); only the gather of the kept keys/values is recorded, identically on
        the first pass and on a checkpoint recompute (which replays the recorded indices)."""
        if replay is not None and i in replay:
            keep = replay[i]
            return cand if keep is None else cand.take(keep)
        ctx = LayerContext(i, cand, n, seen, h_in[0],
                           lambda: self.adapter.group_queries(i, h_in, cos_sin, q_proj_out))
        with torch.no_grad():
            chosen = self.policy.update(ctx)
        # Map the chosen tokens back to candidate slots. Per-head memory (memory.per_head): chosen.index
        # is (G, k), searchsorted maps each head's row on its own (against the shared (n,) index or that
        # head's row), and a shared -> per-head change of layout is a take even when nothing is evicted.
        same = chosen.n == cand.n and chosen.per_head == cand.per_head
        keep = None if same else torch.searchsorted(cand.index, chosen.index.contiguous())
        if replay is not None:
            replay[i] = keep
        kept = cand if keep is None else cand.take(keep)
        kept.extras = chosen.extras  # per-token state the policy updated (never differentiated)
        return kept
