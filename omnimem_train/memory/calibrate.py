"""Modality-aware budget calibration (METHOD §4): measure, allocate, write.

1. `CalibrationCollector` is a memory policy that keeps everything (an uncompressed run) and, at
   every layer after every group, accumulates two statistics per layer l and modality
   m ∈ {audio, visual, all} (all = audio ∪ visual):

   - E_m(l), attention entropy. The group's queries are head-averaged in logit space exactly as
     for the attention mass (`attention.head_mean_queries`, mean over heads of q·k/√d, GQA keys
     shared), with the causal mask over [memory ; group]. For each query, its logits are
     restricted to the modality-m keys it can see and soft-maxed over them; the entropy of that
     distribution is divided by log(k), k = the number of such visible keys, so a value lies in
     [0, 1] (1 = uniform over the modality's keys) and modalities with very different token
     counts are comparable. Queries that see fewer than 2 modality-m keys are skipped. E_m(l) is
     the mean over all the (text, audio and visual) queries of all groups and samples. This
     normalisation is our own definition (METHOD gives none).
   - c_m(l), adjacent similarity: the cosine of the layer-input hidden states (residual stream,
     before the input norm) of consecutive modality-m tokens in stream order (text tokens in
     between are skipped; for "all", consecutive audio/visual tokens of either modality).
     Each adjacent pair is counted once: within a group, plus the pair that joins the previous
     group's last modality-m token to this group's first one. The collector keeps that last
     hidden state per layer and modality itself (O(layers × hidden) memory) instead of storing
     every token's hidden state in the memory, which would multiply an uncompressed run's
     memory by ~hidden/(2·kv_dim).

   Only running float64 sums and counts are kept, never per-token lists.

2. `allocate` turns the statistics into per-layer [audio, visual] budgets for a requested total
   (METHOD §4 steps 2-4), rounded so that they sum to the total exactly.
3. `write_budget_file` writes them as JSON that `budgets.read_budget_file` reads back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omnimem_train.memory.attention import _causal_block_logits, head_mean_queries
from omnimem_train.memory.budgets import largest_remainder
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.memory.policy import MemoryPolicy
from omnimem_train.models.base import Modality
from omnimem_train.utils.atomic import atomic_write_text

MODALITIES = ("audio", "visual", "all")
_MASKS = {
    "audio": lambda mod: mod == int(Modality.AUDIO),
    "visual": lambda mod: mod == int(Modality.VISUAL),
    "all": lambda mod: (mod == int(Modality.AUDIO)) | (mod == int(Modality.VISUAL)),
}


def _mean(total: float, count: float) -> float | None:
    return total / count if count > 0 else None


@dataclass
class CalibrationStats:
    """Per-layer means by modality ("audio", "visual", "all"); None where nothing was measured
    (the modality never appeared, or no query saw two of its tokens)."""

    entropy: dict[str, list[float | None]]
    cosine: dict[str, list[float | None]]
    samples: int = 0
    tokens: dict[str, int] = field(default_factory=dict)  # stream tokens seen, by modality

    @property
    def n_layers(self) -> int:
        return len(self.entropy["all"])

    def per_layer(self) -> list[dict]:
        """[{"entropy": {m: E}, "cosine": {m: c}}, ...] one dict per layer (JSON-ready)."""
        return [{"entropy": {m: self.entropy[m][i] for m in MODALITIES},
                 "cosine": {m: self.cosine[m][i] for m in MODALITIES}} for i in range(self.n_layers)]


class CalibrationCollector(MemoryPolicy):
    """Keeps every token (an uncompressed stream) and accumulates E_m(l) and c_m(l); see the
    module docstring for the definitions. One collector may see several streams in a row: a
    layer whose memory is empty before the group (n_old == 0) starts a new stream."""

    name = "calibrate"

    def __init__(self, n_layers: int, query_block: int = 256):
        self.n_layers, self.query_block = n_layers, query_block
        shape = (len(MODALITIES), n_layers)
        self.ent_sum = torch.zeros(shape, dtype=torch.float64)
        self.ent_cnt = torch.zeros(shape, dtype=torch.float64)
        self.cos_sum = torch.zeros(shape, dtype=torch.float64)
        self.cos_cnt = torch.zeros(shape, dtype=torch.float64)
        self.samples = 0
        self.tokens = dict.fromkeys(("text", "audio", "visual"), 0)
        self._last: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]

    # --- the policy -----------------------------------------------------------------------------
    def update(self, ctx: LayerContext) -> LayerMemory:
        cand, i = ctx.cand, ctx.layer_idx
        if ctx.n_old == 0:  # a keep-everything memory is empty only before a stream's first group
            self._last[i] = {}
            if i == 0:
                self.samples += 1
        mod_new = cand.modality[ctx.n_old:]
        if i == 0:
            for name, m in (("text", Modality.TEXT), ("audio", Modality.AUDIO), ("visual", Modality.VISUAL)):
                self.tokens[name] += int((mod_new == int(m)).sum())
        self._add_cosines(i, ctx.hidden_new.detach(), mod_new)
        if bool(_MASKS["all"](cand.modality).any()):
            self._add_entropies(i, ctx.queries().detach(), cand.keys.detach(), cand.modality, ctx.n_old)
        return cand

    def _add_cosines(self, i: int, hidden: torch.Tensor, mod_new: torch.Tensor) -> None:
        for k, m in enumerate(MODALITIES):
            sel = _MASKS[m](mod_new)
            if not bool(sel.any()):
                continue
            h = torch.nn.functional.normalize(hidden[sel].double(), dim=-1)
            last = self._last[i].get(m)
            if last is not None:
                h = torch.cat([last[None], h])
            if h.shape[0] > 1:
                self.cos_sum[k, i] += float((h[1:] * h[:-1]).sum())
                self.cos_cnt[k, i] += h.shape[0] - 1
            self._last[i][m] = h[-1].clone()

    def _add_entropies(self, i: int, queries: torch.Tensor, keys: torch.Tensor, modality: torch.Tensor,
                       n_old: int) -> None:
        keys = keys[0]  # (G, n, d)
        qbar = head_mean_queries(queries, keys.shape[0])
        cols = {m: _MASKS[m](modality).nonzero()[:, 0] for m in MODALITIES}
        n_q = qbar.shape[1]
        for q0 in range(0, n_q, self.query_block):
            q1 = min(q0 + self.query_block, n_q)
            logits = _causal_block_logits(qbar, keys, q0, q1, n_old)  # (b, n), -inf where hidden
            for k, m in enumerate(MODALITIES):
                if cols[m].numel() < 2:
                    continue
                sub = logits.index_select(1, cols[m])
                visible = torch.isfinite(sub)
                count = visible.sum(1)
                rows = count >= 2
                if not bool(rows.any()):
                    continue
                sub, visible, count = sub[rows], visible[rows], count[rows]
                logp = torch.log_softmax(sub, dim=-1)
                ent = -torch.where(visible, logp.exp() * logp, torch.zeros_like(logp)).sum(-1)
                norm = (ent.double() / count.double().log()).clamp(0.0, 1.0)  # round-off only
                self.ent_sum[k, i] += float(norm.sum())
                self.ent_cnt[k, i] += norm.numel()

    # --- results -------------------------------------------------------------------------------
    def merge(self, other: CalibrationCollector) -> None:
        """Add another collector's sums (e.g. of one more sample streamed separately)."""
        if other.n_layers != self.n_layers:
            raise ValueError(f"layer counts differ: {self.n_layers} vs {other.n_layers}")
        for name in ("ent_sum", "ent_cnt", "cos_sum", "cos_cnt"):
            getattr(self, name).add_(getattr(other, name))
        self.samples += other.samples
        for k, v in other.tokens.items():
            self.tokens[k] += v

    def stats(self) -> CalibrationStats:
        ent = {m: [_mean(float(s), float(c)) for s, c in zip(self.ent_sum[k], self.ent_cnt[k])]
               for k, m in enumerate(MODALITIES)}
        cos = {m: [_mean(float(s), float(c)) for s, c in zip(self.cos_sum[k], self.cos_cnt[k])]
               for k, m in enumerate(MODALITIES)}
        return CalibrationStats(ent, cos, self.samples, dict(self.tokens))

    def describe(self) -> str:
        return "calibrate (full memory)"


# ---------------------------------------------------------------------------------------------
# allocation (METHOD §4 steps 2-4)


def _valid(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def layer_scores(stats: CalibrationStats) -> list[dict[str, float | None]]:
    """Per layer {"audio": g_a, "visual": g_v, "all": g_all}: g_m = E_m · sqrt(r_m), r_m = max(0, 1 − c_m);
    g_all = E_all · sqrt(r_all), r_all = (r_audio + r_visual)/2 (the one measured r if a modality
    never appeared). None where a needed statistic is missing."""
    out = []
    for i in range(stats.n_layers):
        g, r = {}, {}
        for m in ("audio", "visual"):
            e, c = stats.entropy[m][i], stats.cosine[m][i]
            if _valid(e) and _valid(c):
                r[m] = max(0.0, 1.0 - c)
                g[m] = max(0.0, e) * math.sqrt(r[m])
            else:
                g[m] = None
        e_all = stats.entropy["all"][i]
        g["all"] = max(0.0, e_all) * math.sqrt(sum(r.values()) / len(r)) if _valid(e_all) and r else None
        out.append(g)
    return out


def allocate(stats: CalibrationStats, total: int, temperature: float, rho: float) -> list[list[int]]:
    """Per-layer [audio, visual] budgets summing exactly to `total` over all layers.

    B(l) = total · softmax_l(g_all(l)/T) (a layer without g_all counts as g_all = 0), rounded by
    largest remainder; w_a = g_a / (g_a + ρ·g_v), or 1/(1+ρ) if both are 0 or either modality
    is unmeasured at that layer; B_audio(l) = round(B(l)·w_a), B_visual(l) = B(l) − B_audio(l).
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be an int >= 0, got {total!r}")
    if not temperature > 0 or not rho > 0:
        raise ValueError(f"temperature and rho must be > 0, got {temperature!r}, {rho!r}")
    scores = layer_scores(stats)
    x = [(s["all"] or 0.0) / temperature for s in scores]
    top = max(x, default=0.0)
    w = [math.exp(v - top) for v in x]
    z = sum(w)
    per_layer = largest_remainder([total * v / z for v in w], total)
    out = []
    for b, s in zip(per_layer, scores):
        ga, gv = s["audio"], s["visual"]
        denom = (ga or 0.0) + rho * (gv or 0.0)
        wa = ga / denom if ga is not None and gv is not None and denom > 0 else 1.0 / (1.0 + rho)
        a = min(b, max(0, math.floor(b * wa + 0.5)))
        out.append([a, b - a])
    return out


# ---------------------------------------------------------------------------------------------
# output


def write_budget_file(path: str | Path, layers: list[list[int]], meta: dict) -> Path:
    """Write `{"layers": [[a, v], ...], **meta}` as JSON, atomically (temp file + rename), one layer
    per line. `meta` normally holds total, temperature, rho, model, samples and stats (a list of
    per-layer dicts, also written one per line)."""
    if "layers" in meta:
        raise ValueError("meta must not contain 'layers'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ['  "layers": [\n' + ",\n".join(f"    [{int(a)}, {int(v)}]" for a, v in layers) + "\n  ]"]
    for key, value in meta.items():
        if key == "stats" and isinstance(value, list):
            rows = ",\n".join("    " + json.dumps(row) for row in value)
            parts.append(f'  {json.dumps(key)}: [\n{rows}\n  ]')
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    assert json.loads(text)["layers"] == [[int(a), int(v)] for a, v in layers]
    return atomic_write_text(path, text)
