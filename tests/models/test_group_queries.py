"""`group_queries` reproduces the queries each layer's attention used (RoPE / TMRoPE included):
rebuilding the attention output from them and the cached keys/values matches the layer's own."""

import math

import pytest
import torch

from omnimem_train.memory.registry import make_policy
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.grouping import iter_groups
from tests.memory.streams import omni_pieces, text_pieces


@pytest.mark.parametrize("model", ["omni", "text"])
def test_group_queries_rebuild_attention_output(model, tiny_omni, tiny_llama):
    ad = tiny_omni if model == "omni" else tiny_llama
    pieces = omni_pieces(ad, seconds=4.0) if model == "omni" else text_pieces(ad, steps=4)
    engine = StreamingEngine(ad, make_policy("full", len(ad.decoder_layers)), group_size=40)
    captured = {}
    layer_idx = 1
    attn = ad.decoder_layers[layer_idx].self_attn
    hooks = [
        ad.decoder_layers[layer_idx].register_forward_hook(
            lambda m, args, kwargs, out: captured.update(h_in=args[0], cos_sin=kwargs["position_embeddings"]),
            with_kwargs=True),
        attn.register_forward_hook(lambda m, args, out: captured.update(out=out[0])),
        attn.q_proj.register_forward_hook(lambda m, args, out: captured.update(q_proj=out)),
    ]
    try:
        with torch.no_grad():
            state = engine.new_state()
            groups = list(iter_groups(iter(pieces), 40))
            for g in groups[:-1]:
                engine.forward(state, g, evict=True)
            n_old = state.layers[layer_idx].n
            engine.forward(state, groups[-1], evict=True)
    finally:
        for h in hooks:
            h.remove()
    q = ad.group_queries(layer_idx, captured["h_in"], captured["cos_sin"])  # (H, L, d)
    # The engine reuses the layer's own q_proj output instead of recomputing it: same queries.
    reused = ad.group_queries(layer_idx, captured["h_in"], captured["cos_sin"], captured["q_proj"])
    assert torch.allclose(q, reused, atol=1e-6)
    mem = state.layers[layer_idx]
    rep = q.shape[0] // mem.keys.shape[1]
    k = mem.keys[0].repeat_interleave(rep, 0)
    v = mem.values[0].repeat_interleave(rep, 0)
    L = q.shape[1]
    logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    hidden = torch.arange(k.shape[1])[None, :] > (n_old + torch.arange(L))[:, None]
    out = torch.softmax(logits.masked_fill(hidden, float("-inf")), -1) @ v  # (H, L, d)
    out = attn.o_proj(out.transpose(0, 1).reshape(1, L, -1))
    assert (out - captured["out"]).abs().max().item() < 1e-4
