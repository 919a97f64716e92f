"""Attention statistics for scoring, computed in query blocks so memory stays bounded.

Head averaging is done in *logit* space (METHOD §3): mean_h q_h·k_{g(h)}/√d. With grouped-query
attention the sum over the heads that share a key group can be taken on the queries first,
Σ_h q_h·k_g = (Σ_h q_h)·k_g, so the cost is that of `n_kv_heads` heads, not `n_heads`.
"""

from __future__ import annotations

import math

import torch


def head_mean_queries(queries: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """(H, L, d) queries -> (G, L, d) per-key-group query sums divided by H (so q̄·k = mean_h q_h·k)."""
    h, L, d = queries.shape
    return queries.float().view(n_kv_heads, h // n_kv_heads, L, d).sum(1) / h


def _causal_block_logits(qbar: torch.Tensor, keys: torch.Tensor, q0: int, q1: int, n_old: int) -> torch.Tensor:
    """Head-averaged logits (q1-q0, n) for queries q0..q1 of the group, -inf where causally hidden.

    qbar: (G, L, d); keys: (G, n, d). Query j sits at candidate index n_old + j.
    """
    d = qbar.shape[-1]
    logits = torch.einsum("gqd,gkd->qk", qbar[:, q0:q1], keys.float()) / math.sqrt(d)
    n = keys.shape[1]
    key_idx = torch.arange(n, device=keys.device)
    q_idx = n_old + torch.arange(q0, q1, device=keys.device)
    return logits.masked_fill(key_idx[None, :] > q_idx[:, None], float("-inf"))


def attention_mass(queries: torch.Tensor, keys: torch.Tensor, n_old: int, block: int = 256) -> torch.Tensor:
    """a_i = Σ_q softmax_q(head-mean logits)[i]: attention each candidate receives from the group.

    queries: (H, L, d) the group's queries (RoPE applied); keys: (1, G, n, d) candidates' keys
    ([memory ; group], RoPE applied); n_old = n - L. Returns (n,) float32.

    The per-group sum over key groups is folded into one (L, G·d) x (G·d, n) product, and only the
    group's own columns need the causal mask (memory precedes every query).
    """
    keys = keys[0]
    g, n, d = keys.shape
    qbar = head_mean_queries(queries, g)  # (G, L, d)
    L = qbar.shape[1]
    q2 = qbar.permute(1, 0, 2).reshape(L, g * d) / math.sqrt(d)
    k2t = keys.float().permute(1, 0, 2).reshape(n, g * d).T
    cols = torch.arange(L, device=keys.device)
    mass = torch.zeros(n, dtype=torch.float32, device=keys.device)
    for q0 in range(0, L, block):
        q1 = min(q0 + block, L)
        logits = q2[q0:q1] @ k2t  # (b, n)
        logits[:, n_old:].masked_fill_(cols[None, :] > torch.arange(q0, q1, device=keys.device)[:, None],
                                       float("-inf"))
        mass += torch.softmax(logits, dim=-1).sum(0)
    return mass


def attention_mass_per_head(queries: torch.Tensor, keys: torch.Tensor, n_old: int, block: int = 256) -> torch.Tensor:
    """Per KV head: a_{g,i} = Σ_q mean_{h∈g} softmax_q(q_h·k_{g,i}/√d), the attention candidate slot i
    of head g receives from the group, averaged over the query heads that share key group g.

    queries: (H, L, d); keys: (1, G, n, d) (per-head memory: slot i of head g is head g's token).
    Returns (G, n) float32. Unlike `attention_mass` the average is over probabilities, each query
    head's own softmax, as the per-head references (H2O, kvpress) average a group's attention; the
    blocks are H x block x n, H times those of `attention_mass`.
    """
    keys = keys[0].float()
    g, n, d = keys.shape
    h, L, _ = queries.shape
    q = queries.float().view(g, h // g, L, d) / math.sqrt(d)
    cols = torch.arange(L, device=keys.device)
    mass = torch.zeros(g, n, dtype=torch.float32, device=keys.device)
    for q0 in range(0, L, block):
        q1 = min(q0 + block, L)
        logits = torch.einsum("grqd,gkd->grqk", q[:, :, q0:q1], keys)  # (G, r, b, n)
        hidden = cols[None, :] > torch.arange(q0, q1, device=keys.device)[:, None]  # memory precedes every query
        logits[..., n_old:].masked_fill_(hidden, float("-inf"))
        mass += torch.softmax(logits, dim=-1).sum(2).mean(1)
    return mass


def window_attention(queries: torch.Tensor, keys: torch.Tensor, n_old: int, window: int,
                     per_head: bool = False) -> torch.Tensor:
    """SnapKV-style: per-head softmax attention of the group's last `window` queries, averaged over
    heads and queries. queries (H, L, d), keys (1, G, n, d) -> (n,) float32; `per_head`: averaged
    over each KV group's query heads only -> (G, n)."""
    keys = keys[0].float()
    h, L, d = queries.shape
    g = keys.shape[0]
    w = min(window, L)
    q = queries[:, L - w :].float().view(g, h // g, w, d)
    logits = torch.einsum("grqd,gkd->grqk", q, keys) / math.sqrt(d)
    n = keys.shape[1]
    q_idx = n_old + torch.arange(L - w, L, device=keys.device)
    hidden = torch.arange(n, device=keys.device)[None, :] > q_idx[:, None]
    probs = torch.softmax(logits.masked_fill(hidden, float("-inf")), dim=-1)
    return probs.mean(dim=(1, 2)) if per_head else probs.mean(dim=(0, 1, 2))
