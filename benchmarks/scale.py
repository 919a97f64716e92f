"""Scale benchmark: full memory vs OmniMem (8k tokens per layer) at the real decoder widths.

Run (from the repository root, with the project's venv):

    python benchmarks/scale.py                      # the recorded run: 3 decoders, 1 layer each (~10 min on 2 cores)
    python benchmarks/scale.py --models omni-7b --layers 2 --minutes 1 --policies omnimem   # per-layer check
    python benchmarks/scale.py --quick              # smoke run: omni-7b, 1 and 5 minutes, omnimem only (~1 min)
    python benchmarks/scale.py --out checkpoints/scale.md  # also write the table and the ratios as markdown

Full memory is measured once per decoder shape (video-SALMONN 2+ 7B has the Qwen2.5-Omni-7B
decoder; `--all-full` measures it for every model). The exit status is 1 when OmniMem's stream
peak at the longest stream exceeds 1.05 x that at the shortest for some decoder, or a worker died.

What runs. Random-weight decoders with the real widths, heads, KV heads, head dims and MLP sizes
(`MODELS`), `--layers` of them (not the full depth), bf16, sdpa attention, CPU. The encoders are not
run: the real adapter (`Qwen2_5OmniAdapter`, `VSalmonnAdapter`) lays out the stream (its chunker:
prefix text, delimiters, Qwen3-VL's per-step timestamp text, audio interleaving, TMRoPE / M-RoPE
positions) from blank frames and log-mel windows, and stand-in encoders give random embeddings
with the real token counts (`_FakeVideo`, `_FakeAudio`). The engine (`StreamingEngine`) and the
policies (`make_policy("omnimem", n, budget=8192)`, `make_policy("full", n)`) are the real ones,
with the release's group size of 16,384 tokens.

Token rates (`--frame-side`, default 280 px, 2 fps, the adapters' own arithmetic): Qwen2.5-Omni and
Qwen2.5-VL take 28x28 px per token and 2-frame temporal patches, so 280x280 at 2 fps is
(280/28)^2 = 100 visual tokens/s; Qwen3-VL takes 32x32 px, so the frame is resized to 288x288 and
gives 81 tokens/s. Audio: 25 tokens/s for Qwen2.5-Omni (its audio tower), 2 tokens/s for the
video-SALMONN 2+ bridge (1 Q-Former query per 0.5-s window).

What one case measures. Stream length T (1, 5, 15 minutes): the engine state a T-minute stream
leaves, then ONE more group of 16,384 stream tokens (the stream going on past T) through every
layer, with eviction. Streaming every group of a 15-minute stream at 7B width would take hours on
2 CPU cores, so the state before the measured group is rebuilt, not streamed (`rebuilt_state`): it
holds, per layer, exactly the tokens (count, modality, positions, stream index) that `prefill` over
the T-minute stream leaves under the policy: everything for `full`; for `omnimem` all text plus
`select`'s choice under the policy's own per-layer limits (`Budgets.limits`), with recency scores
(which tokens are kept does not change the cost), with random keys, values and per-token policy
state of the real shapes and dtypes. The measured group itself runs the real engine and policy.

Reported per case:
- per-group time: wall time of the group, split by forward pre-hooks on the decoder layers into a
  fixed part (before the first layer: rotary, the mask) and one span per layer (the layer and the
  policy's eviction after it);
- peak memory: process RSS, the kernel's high-water mark (VmHWM, /proc/self/status) reset right
  before the group; reported as the stream's memory above the loaded decoder (peak minus the RSS
  after the model was built and warmed up), which on CPU is where the tensors live (large tensors
  are mmap'd by the allocator and returned on free, so RSS follows them);
- retained memory: exact bytes of the per-layer memories before and after the group (keys, values,
  the policy's per-token state, the engine's bookkeeping);
- extrapolation to the full depth L (28 or 36 layers), from the measured n layers:
    time(L)  = fixed + L x (mean measured layer span)
    memory(L) = weights(L layers) + L x (retained before + after, per layer) + transient,
    transient = stream peak - n x (retained before + after, per layer)
  (old and new memory of every layer coexist until the group commits; the transient part, one
  layer's activations, the shared mask and the scorer's temporaries, does not grow with depth).
  Not counted: embedding table, lm_head, encoders, the Python runtime.

A case that would not fit is skipped, not run: its need (the loaded RSS, the retained memory before
and after, the additive mask, the keys/values repeated to every query head by sdpa with a mask, and
the MLP activations) is estimated from the KV size first and compared with `--ram-limit-gib`.

Each decoder runs in its own worker process (this script with a hidden `--worker` flag), so one
model's memory never shows in another's peaks; the driver never imports torch.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _isolation import REPO, proc_status, repo_on_path, reset_hwm  # noqa: E402

GROUP = 16384  # the release's group size
BUDGET = 8192  # the release's memory: ~8k audio+visual tokens per layer
FPS = 2.0
PREFIX_TOKENS = 30  # system prompt and the user turn before the media (always-kept text)
MINUTES = (1, 5, 15)
FLAT_TARGET = 1.05

# The decoders. Shapes: Qwen2.5-Omni-7B thinker = transformers' Qwen2_5OmniThinkerConfig defaults
# (documented against Qwen/Qwen2.5-Omni-7B; its LLM is Qwen2.5-7B: 3584 wide, 28 layers, 28 heads,
# 4 KV heads, head_dim 128, MLP 18944, mrope_section [16, 24, 24]); video-SALMONN 2+ 7B and the
# OmniMem Qwen3-VL-8B from the release configs in recipes/models/.
MODELS = {
    "omni-7b": {"label": "Qwen2.5-Omni-7B thinker", "config": None, "depth": 28, "decoder": "Qwen2.5-7B"},
    "vsalmonn2plus-7b": {"label": "video-SALMONN 2+ 7B (Qwen2.5-VL-7B)",
                         "config": "recipes/models/vsalmonn2plus-7b.json", "depth": 28, "decoder": "Qwen2.5-7B"},
    "omnimem-qwen3vl-8b": {"label": "OmniMem Qwen3-VL-8B",
                           "config": "recipes/models/omnimem-qwen3vl-8b.json", "depth": 36, "decoder": "Qwen3-8B"},
}
GIB = 2**30


# --- building a decoder without its encoders ------------------------------------------------------

def omni_config(text_overrides: dict | None = None):
    """Qwen2.5-Omni-7B's thinker config (transformers' defaults are that checkpoint's), M-RoPE
    sections [16, 24, 24] as in its config.json; `text_overrides` shrinks it (dry runs)."""
    from transformers import Qwen2_5OmniThinkerConfig

    text = {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}}
    text.update(text_overrides or {})
    # Special-token ids of the Qwen2.5-Omni vocabulary (they only label tokens here).
    ids = dict(audio_token_index=151646, image_token_index=151655, video_token_index=151656,
               audio_start_token_id=151647, audio_end_token_id=151648, vision_start_token_id=151652,
               vision_end_token_id=151653)
    return Qwen2_5OmniThinkerConfig(text_config=text, position_id_per_seconds=25, seconds_per_chunk=2, **ids)


class _FakeEmbedding:
    """Stands in for the (unbuilt) embedding table: rows of a random bank, by id."""

    def __init__(self, bank):
        self.bank, self.embedding_dim = bank, bank.shape[1]

    def __call__(self, ids):
        return self.bank[ids.to(self.bank.device) % self.bank.shape[0]]


class _Bank:
    """Random embeddings handed out in turn (cyclically), `n` rows at a time."""

    def __init__(self, bank):
        self.bank, self.at = bank, 0

    def take(self, n: int):
        import torch

        idx = (torch.arange(self.at, self.at + n, device=self.bank.device)) % self.bank.shape[0]
        self.at = (self.at + n) % self.bank.shape[0]
        return self.bank[idx]


class _FakeVideo:
    """`get_video_features(pixels, grid_thw)` of the vision towers, without the tower: one random
    embedding per merged token (T·h·w / merge²), plus DeepStack features when the model has them."""

    def __init__(self, bank: _Bank, merge: int, deepstack: int):
        self.bank, self.merge, self.deepstack = bank, merge, deepstack

    def __call__(self, pixel_values_videos, video_grid_thw, **kwargs):
        from types import SimpleNamespace

        t, h, w = (int(x) for x in video_grid_thw[0])
        emb = self.bank.take(t * h * w // self.merge**2)
        deep = [[self.bank.take(len(emb))] for _ in range(self.deepstack)] if self.deepstack else None
        return SimpleNamespace(pooler_output=[emb], deepstack_features=deep)


class _FakeAudio:
    """The audio encoders without their weights, at the real token counts: Qwen2.5-Omni's
    `get_audio_features(feats, feature_attention_mask=)` (25 tokens/s) and the video-SALMONN 2+
    bridge's `encode(mel)` (60·Q tokens per 30-s window)."""

    def __init__(self, bank: _Bank, per_window: int | None = None):
        self.bank, self.per_window = bank, per_window

    def __call__(self, feats, feature_attention_mask=None, **kwargs):  # Qwen2.5-Omni
        from types import SimpleNamespace

        from omnimem_train.media.features import audio_tokens_for_frames

        return SimpleNamespace(last_hidden_state=self.bank.take(audio_tokens_for_frames(feats.shape[-1])))

    def encode(self, mel):  # video-SALMONN 2+ bridge: (1, n_mels, 3000) -> (1, 60·Q, D)
        return self.bank.take(self.per_window).unsqueeze(0)


class _StampTokenizer:
    """Token ids for Qwen3-VL's per-step timestamps ("<12.5 seconds>"), split the way Qwen's
    pre-tokenizer splits them: every digit alone, a word with its leading space, each other symbol
    alone ("<", "1", "2", ".", "5", " seconds", ">": 7 tokens). Only the count matters here."""

    def __call__(self, text: str, add_special_tokens: bool = False):
        import re

        parts = re.findall(r"\d| ?[A-Za-z]+|[^\sA-Za-z\d]", text)
        return {"input_ids": [1000 + (hash(p) % 1000) for p in parts]}


def _materialize(module, device, dtype, std: float) -> int:
    """Allocate a meta-built module on `device` in `dtype` with random weights: matrices N(0, std),
    biases 0, norm scales 1. -> its parameter bytes."""
    import torch

    module.to(dtype)
    module.to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    if any(True for _ in module.buffers()):
        raise RuntimeError(f"{type(module).__name__} has buffers that would stay uninitialised")
    return sum(p.numel() * p.element_size() for p in module.parameters())


def build_adapter(key: str, n_layers: int, dtype, device="cpu", vocab: bool = False,
                  text_overrides: dict | None = None, seed: int = 0):
    """(adapter, info): the real adapter of model `key` with `n_layers` random-weight decoder layers at
    the real widths (or `text_overrides`), built on the meta device so that encoders, embedding table
    and lm_head cost nothing; the decoder layers, final norm and rotary embedding are then made on
    `device` in `dtype`. Encoders are replaced by `_FakeVideo` / `_FakeAudio`. `vocab`: also make the
    embedding table and lm_head (logits for a training loss); otherwise text embeddings come from the
    random bank and lm_head is a 1-output stand-in (it only tells the engine device and dtype)."""
    import torch

    from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter
    from omnimem_train.models.vsalmonn import model_from_config_file
    from omnimem_train.models.vsalmonn_stream import VSalmonnAdapter

    torch.manual_seed(seed)
    spec = MODELS[key]
    if spec["config"] is None:
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        config = omni_config(dict(text_overrides or {}, num_hidden_layers=n_layers))
        config._attn_implementation = "sdpa"
        with torch.device("meta"):
            model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    else:
        if text_overrides:
            import tempfile

            cfg = json.loads((REPO / spec["config"]).read_text())
            (cfg["text_config"] if "text_config" in cfg else cfg).update(text_overrides)
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(cfg, f)
            path = f.name
        else:
            path = REPO / spec["config"]
        model = model_from_config_file(path, num_layers=n_layers, device="meta")
        if text_overrides:
            os.unlink(path)
    model.config._attn_implementation = "sdpa"
    text_cfg = model.config.get_text_config()
    text_cfg._attn_implementation = "sdpa"
    lm = model.model.language_model
    std = float(getattr(text_cfg, "initializer_range", 0.02))
    layer_bytes = [_materialize(layer, device, dtype, std) for layer in lm.layers]
    norm_bytes = _materialize(lm.norm, device, dtype, std)
    lm.rotary_emb = type(lm.rotary_emb)(config=lm.config).to(device)  # inv_freq from the config, float32
    d = text_cfg.hidden_size
    bank = torch.randn(4096, d, generator=torch.Generator().manual_seed(seed)).to(device, dtype) * std * 10
    if vocab:
        _materialize(lm.embed_tokens, device, dtype, std)
        _materialize(model.lm_head, device, dtype, std)
    stub_head = None if vocab else torch.nn.Linear(d, 1, bias=False, device=device, dtype=dtype)
    tokens = _Bank(bank)
    if spec["config"] is None:
        ad = Qwen2_5OmniAdapter(model, tokenizer=None, name=key)
        model.model.get_audio_features = _FakeAudio(tokens)
        deepstack = 0
    else:
        ad = VSalmonnAdapter(model, _StampTokenizer(), name=key)
        ac = model.config.audio_config
        q = ac.qformer_config if isinstance(ac.qformer_config, dict) else vars(ac.qformer_config)
        ad.audio_bridge = _FakeAudio(tokens, per_window=round(30 / float(ac.second_per_window)) * int(q.get("query_length", 1)))
        deepstack = len(getattr(model.config.vision_config, "deepstack_visual_indexes", None) or [])
    model.model.get_video_features = _FakeVideo(tokens, ad.merge, deepstack)
    if not vocab:
        ad.embed_tokens = _FakeEmbedding(bank)
        ad.lm_head = stub_head
    ad.rotary_emb = lm.rotary_emb
    attn = lm.layers[0].self_attn
    info = {
        "key": key, "label": spec["label"], "depth": spec["depth"], "layers": n_layers,
        "hidden": d, "heads": text_cfg.num_attention_heads, "kv_heads": text_cfg.num_key_value_heads,
        "head_dim": attn.head_dim, "intermediate": text_cfg.intermediate_size,
        "attn_impl": lm.layers[0].self_attn.config._attn_implementation,
        "layer_weight_bytes": sum(layer_bytes) / len(layer_bytes), "norm_bytes": norm_bytes,
        "deepstack": deepstack, "frame_multiple": ad.frame_multiple,
    }
    return ad, info


def frame_side_for(ad, side: int) -> int:
    """The frame side the model's processor would use: `side` rounded to its token size (28 or 32 px)."""
    m = ad.frame_multiple
    return max(m, round(side / m) * m)


def stream(ad, seconds: float, side: int, prefix_tokens: int = PREFIX_TOKENS):
    """The adapter's own stream of a `seconds`-long clip of blank side x side frames at 2 fps with
    blank 30-s log-mel windows (encoders replaced: see `build_adapter`)."""
    import numpy as np

    from omnimem_train.models.base import MediaInput

    frame = np.zeros((side, side, 3), np.uint8)
    n_frames = int(round(seconds * FPS))
    n_mel = int(round(seconds * 100))
    full = np.zeros((128, 3000), np.float32)

    def windows():
        for start in range(0, n_mel, 3000):
            yield full if n_mel - start >= 3000 else full[:, : n_mel - start]

    media = MediaInput(frames=(frame for _ in range(n_frames)), fps=FPS, mel_windows=windows(), duration_s=seconds)
    return ad.stream(media, list(range(1000, 1000 + prefix_tokens)))


def split_at(pieces, seconds: float, group: int):
    """-> (bookkeeping of the stream's first `seconds`: positions (P, N), modality (N,), next_pos,
    and the next `group` tokens as one piece). Pieces ending at or before `seconds` (and leading text)
    belong to the first part; their embeddings are dropped as they go."""
    import torch

    from omnimem_train.streaming.grouping import Grouper

    pos, mod, next_pos = [], [], 0
    it = iter(pieces)
    rest = None
    for piece in it:
        if piece.end_s is not None and piece.end_s > seconds + 1e-6:
            rest = piece
            break
        pos.append(piece.positions)
        mod.append(piece.modality)
        next_pos = piece.next_pos()
    grouper = Grouper(group_size=group)
    out = []
    for piece in ([rest] if rest is not None else []):
        out += grouper.push(piece)
    for piece in it:
        if out:
            break
        out += grouper.push(piece)
    if not out:
        out = grouper.flush()
    return torch.cat(pos, dim=1), torch.cat(mod), next_pos, out[0]


def rebuilt_state(engine, positions, modality, next_pos: int, dtype, seed: int = 0):
    """The StreamState `engine.prefill` leaves after a stream with this bookkeeping, rebuilt without
    running it: per layer, every token for `full`; for a scored policy all text plus `select`'s
    choice under the policy's limits for this layer (recency scores); random keys/values and
    per-token policy state of the real shapes. See the module doc."""
    import torch

    from omnimem_train.memory.layer_memory import LayerMemory
    from omnimem_train.memory.policies.full import FullMemory
    from omnimem_train.memory.selection import select
    from omnimem_train.models.base import Modality
    from omnimem_train.streaming.engine import StreamState

    ad, policy = engine.adapter, engine.policy
    n = modality.shape[0]
    index = torch.arange(n)
    seen = {m: int((modality == int(m)).sum()) for m in (Modality.AUDIO, Modality.VISUAL)}
    attn = ad.decoder_layers[0].self_attn
    g = ad.decoder_layers[0].self_attn.config.num_key_value_heads
    d = attn.head_dim
    proto = policy.new_token_extras(torch.zeros(1, ad.decoder_layers[0].self_attn.config.hidden_size,
                                                dtype=dtype, device=ad.device))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    layers = []
    for i in range(len(ad.decoder_layers)):
        if isinstance(policy, FullMemory):
            keep = None
        elif hasattr(policy, "budgets"):
            keep = select(index.float(), modality, policy.budgets.limits(i, seen))
        else:
            raise ValueError(f"cannot rebuild the memory of policy {policy.describe()}")
        idx = index if keep is None else keep
        k = len(idx)
        kv = [torch.randn(1, g, k, d, generator=gen).to(ad.device, dtype) for _ in range(2)]
        extras = {name: torch.rand(k, *v.shape[1:], generator=gen).to(ad.device, v.dtype) for name, v in proto.items()}
        layers.append(LayerMemory(kv[0], kv[1], positions[:, idx].to(ad.device), modality[idx].to(ad.device),
                                  idx.to(ad.device), extras))
    return StreamState(layers=layers, tokens_seen=n, next_pos=next_pos, groups=math.ceil(n / engine.group_size),
                       seen=dict(seen))


def retained_bytes(layers) -> int:
    return sum(m.kv_bytes() + m.extra_bytes() + m.meta_bytes() for m in layers if m is not None)


class LayerClock:
    """Forward pre-hooks on the decoder layers: the time each layer's span starts."""

    def __init__(self, layers):
        self.starts: list[float] = []
        self.handles = [layer.register_forward_pre_hook(self._hook) for layer in layers]

    def _hook(self, module, args):
        self.starts.append(time.perf_counter())

    def remove(self):
        for h in self.handles:
            h.remove()


class single_thread:
    """Run a block on one intra-op thread: laying out the stream is thousands of small tensor ops,
    which on a loaded 2-core machine are ~100x slower with 2 threads (their barriers wait on the
    other jobs) than with 1."""

    def __enter__(self):
        import torch

        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.threads)


def trim_memory() -> None:
    """Collect garbage and hand freed heap pages back to the kernel (glibc), so RSS follows tensors."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def need_bytes(info: dict, n_layers: int, mem_tokens: int, extra_per_token: int, dtype_bytes: int) -> dict:
    """Estimate (bytes) of what a case holds at its peak beyond the loaded decoder, from the KV size:
    the memory before and after the group (old and new coexist until the group commits), the
    additive mask over [memory ; group], the keys/values sdpa repeats to every query head when a mask
    is given, the group's own embeddings (and DeepStack features), its queries and attention output,
    and the MLP's three intermediate tensors plus a few hidden-size ones."""
    kv_tok = 2 * info["kv_heads"] * info["head_dim"] * dtype_bytes
    per_tok = kv_tok + extra_per_token + 5 * 8  # keys+values, policy state, positions/modality/index
    n_kv = mem_tokens + GROUP
    q_width = info["heads"] * info["head_dim"]
    return {
        "memory before": n_layers * mem_tokens * per_tok,
        "memory after": n_layers * n_kv * per_tok,
        "mask": GROUP * n_kv * dtype_bytes,
        "k/v repeated to every head": 2 * q_width * n_kv * dtype_bytes,
        "group, queries, attention output": GROUP * ((1 + info["deepstack"]) * info["hidden"] + 2 * q_width) * dtype_bytes,
        "activations": GROUP * (3 * info["intermediate"] + 8 * info["hidden"]) * dtype_bytes,
    }


# --- worker: all cases of one decoder in one fresh process ------------------------------------------

def run_model(key: str, layers: int, minutes: list[float], policies: list[str], side: int, budget: int,
              ram_limit_gib: float, dtype: str = "bfloat16") -> dict:
    import torch

    from omnimem_train.memory.registry import make_policy
    from omnimem_train.models.base import Modality
    from omnimem_train.streaming.engine import StreamingEngine

    torch_dtype = getattr(torch, dtype)
    rss_start = proc_status("VmRSS")
    t0 = time.perf_counter()
    ad, info = build_adapter(key, layers, torch_dtype)
    side = frame_side_for(ad, side)
    info.update(frame_side=side, build_s=time.perf_counter() - t0, threads=torch.get_num_threads(),
                torch=torch.__version__, dtype=dtype)
    # Warm up (one-time kernel and allocator set-up is not timed): a short stream, both policies.
    for pol in policies:
        eng = StreamingEngine(ad, make_policy(pol, layers, budget=512) if pol != "full" else make_policy("full", layers),
                              group_size=1024)
        with torch.inference_mode():
            eng.prefill(stream(ad, 12, side))
    trim_memory()
    rss_loaded = proc_status("VmRSS")
    info.update(rss_start_mib=rss_start, rss_loaded_mib=rss_loaded)
    print("INFO " + json.dumps(info), flush=True)
    rows = []
    for m in minutes:
        seconds = 60.0 * m
        # Enough stream after T for one group (the slowest rate, Qwen3-VL's ~83 tokens/s, needs ~200 s).
        with single_thread():
            positions, modality, next_pos, group = split_at(stream(ad, seconds + 400, side), seconds, GROUP)
        counts = {mod.name.lower(): int((modality == int(mod)).sum()) for mod in Modality}
        for pol in policies:
            policy = make_policy("full", layers) if pol == "full" else make_policy(pol, layers, budget=budget)
            engine = StreamingEngine(ad, policy, group_size=GROUP)
            row = {"minutes": m, "policy": pol, "stream_tokens": int(modality.shape[0]), "counts": counts,
                   "group_tokens": len(group)}
            extra = sum(v[:1].numel() * v.element_size()
                        for v in policy.new_token_extras(torch.zeros(1, info["hidden"], dtype=torch_dtype)).values())
            mem_tokens = int(modality.shape[0]) if pol == "full" else min(int(modality.shape[0]), budget + counts["text"])
            dtype_bytes = torch.finfo(torch_dtype).bits // 8
            parts = need_bytes(info, layers, mem_tokens, extra, dtype_bytes)
            need = rss_loaded * 2**20 + sum(parts.values())
            if need > ram_limit_gib * GIB:
                kv_full_depth = info["depth"] * mem_tokens * 2 * info["kv_heads"] * info["head_dim"] * dtype_bytes
                row.update(status="skipped", need_gib=need / GIB, need_parts={k: v / GIB for k, v in parts.items()},
                           kv_full_depth_gib=kv_full_depth / GIB)
                print(f"  {key} {m:g} min {pol}: skipped, would need {need / GIB:.1f} GiB "
                      f"(> {ram_limit_gib:.1f}); KV at {info['depth']} layers: {kv_full_depth / GIB:.1f} GiB",
                      file=sys.stderr, flush=True)
                print("ROW " + json.dumps(row), flush=True)
                rows.append(row)
                continue
            with single_thread():
                state = rebuilt_state(engine, positions, modality, next_pos, torch_dtype)
            before = retained_bytes(state.layers)
            per_layer_before = [m_.n for m_ in state.layers]
            text_before = state.layers[0].count(Modality.TEXT)
            trim_memory()
            rss_before = proc_status("VmRSS")
            reset_hwm()
            clock = LayerClock(ad.decoder_layers)
            end, selection = [], [0.0]
            update = policy.update

            def timed_update(ctx, update=update, selection=selection):  # the policy's choice (scoring, top-k, take)
                t = time.perf_counter()
                out = update(ctx)
                selection[0] += time.perf_counter() - t
                return out

            policy.update = timed_update
            t_start = time.perf_counter()
            with torch.inference_mode():
                state, _ = engine.prefill([group], state=state, on_group=lambda s, n, end=end: end.append(time.perf_counter()))
            clock.remove()
            hwm = proc_status("VmHWM")
            after = retained_bytes(state.layers)
            starts = clock.starts
            spans = [b - a for a, b in zip(starts, starts[1:] + [end[0]])]
            row.update(
                status="ok", group_s=end[0] - t_start, fixed_s=starts[0] - t_start, layer_s=spans,
                selection_s=selection[0],
                memory_tokens_before=per_layer_before, memory_tokens_after=[m_.n for m_ in state.layers],
                text_before=text_before, text_after=state.layers[0].count(Modality.TEXT),
                retained_before=before, retained_after=after, rss_before_mib=rss_before, hwm_mib=hwm,
                load1=os.getloadavg()[0],
            )
            print(f"  {key} {m:g} min {pol}: group {row['group_s']:.1f} s (selection {selection[0]:.1f} s), memory {per_layer_before[0]:,} -> "
                  f"{row['memory_tokens_after'][0]:,} tokens/layer, peak RSS {hwm:,.0f} MiB (loaded {rss_loaded:,.0f}, "
                  f"before the group {rss_before:,.0f}, retained before {before / 2**20:,.0f} MiB)",
                  file=sys.stderr, flush=True)
            print("ROW " + json.dumps(row), flush=True)
            rows.append(row)
            del state, engine, policy
            trim_memory()
        del positions, modality, group
        trim_memory()
    return {"info": info, "rows": rows}


def _worker(spec: str) -> None:
    repo_on_path()
    run_model(**json.loads(spec))  # reports on stdout as it goes: INFO once, then one ROW per case


def spawn_model(case: dict) -> dict:
    """Run one decoder's cases in a fresh interpreter; its progress lines pass through (stderr). A
    worker that dies (e.g. killed for memory) keeps the cases it finished, and says so."""
    # Every allocation of 256 KiB or more is its own mapping, returned to the kernel on free (glibc
    # otherwise raises this threshold as tensors are freed and keeps later ones in its heap), so the
    # process RSS follows the live tensors and its high-water mark is the tensors' peak.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="262144", MALLOC_TRIM_THRESHOLD_="262144")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)],
                          stdout=subprocess.PIPE, text=True, env=env)
    info = [json.loads(ln[5:]) for ln in proc.stdout.splitlines() if ln.startswith("INFO ")]
    rows = [json.loads(ln[4:]) for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
    if not info:
        raise SystemExit(f"worker failed (exit {proc.returncode}) before any case: {case}")
    died = None if proc.returncode == 0 else f"worker exited with status {proc.returncode} after {len(rows)} cases"
    return {"info": info[0], "rows": rows, "died": died}


# --- driver: tables and ratios ------------------------------------------------------------------------

def extrapolate(info: dict, row: dict) -> dict:
    """Full-depth time and memory from the measured layers (formulas in the module doc)."""
    n, depth = info["layers"], info["depth"]
    per_layer_s = sum(row["layer_s"]) / n
    stream_peak = (row["hwm_mib"] - info["rss_loaded_mib"]) * 2**20
    persistent = (row["retained_before"] + row["retained_after"]) / n
    transient = stream_peak - n * persistent
    weights = depth * info["layer_weight_bytes"] + info["norm_bytes"]
    return {
        "per_layer_s": per_layer_s,
        "time_full": row["fixed_s"] + depth * per_layer_s,
        "stream_peak": stream_peak,
        "transient": transient,
        "mem_full": weights + depth * persistent + transient,
        "weights_full": weights,
    }


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def format_tables(results: list[dict]) -> str:
    head = ("| decoder (layers run / depth) | stream | stream tokens | policy | memory tokens per layer before → after | "
            "group s | of which selection s | s per layer | stream peak GiB | retained GiB before / after | "
            "full depth: group s | full depth: tokens/s | full depth: decoder GiB |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for res in results:
        info = res["info"]
        for r in res["rows"]:
            name = f"{info['key']} ({info['layers']}/{info['depth']})"
            base = f"| {name} | {r['minutes']:g} min | {r['stream_tokens']:,} | {r['policy']} |"
            if r["status"] != "ok":
                out.append(f"{base} skipped: would need {r['need_gib']:.1f} GiB | | | | | | | | "
                           f"KV alone {r['kv_full_depth_gib']:.1f} GiB |")
                continue
            e = extrapolate(info, r)
            out.append(
                f"{base} {r['memory_tokens_before'][0]:,} → {r['memory_tokens_after'][0]:,} | {r['group_s']:.1f} | "
                f"{r['selection_s']:.1f} | {e['per_layer_s']:.1f} | {_gib(e['stream_peak'])} | {_gib(r['retained_before'])} / "
                f"{_gib(r['retained_after'])} | {e['time_full']:.0f} | {GROUP / e['time_full']:,.0f} | "
                f"{_gib(e['mem_full'])} |")
    return "\n".join(out)


def ratio_lines(results: list[dict]) -> tuple[list[str], bool]:
    """Longest/shortest stream for each decoder and policy: stream peak memory (the check), retained
    memory, per-group time."""
    lines, ok = [], True
    for res in results:
        info = res["info"]
        for pol in sorted({r["policy"] for r in res["rows"]}):
            rows = [r for r in res["rows"] if r["policy"] == pol and r["status"] == "ok"]
            if len(rows) < 2:
                lines.append(f"{info['key']:>18} {pol:>7}: fewer than two lengths measured")
                continue
            a, b = rows[0], rows[-1]
            ea, eb = extrapolate(info, a), extrapolate(info, b)
            peak = eb["stream_peak"] / ea["stream_peak"]
            full_depth = eb["mem_full"] / ea["mem_full"]
            kept = b["retained_after"] / a["retained_after"]
            verdict = ""
            if pol != "full":
                passed = peak <= FLAT_TARGET
                ok &= passed
                verdict = f" (target <= {FLAT_TARGET}: {'PASS' if passed else 'FAIL'})"
            media = [r["memory_tokens_after"][0] - r["text_after"] for r in (a, b)]
            lines.append(
                f"{info['key']:>18} {pol:>7}: {b['minutes']:g} min / {a['minutes']:g} min: stream peak {peak:.3f}{verdict}; "
                f"at full depth {full_depth:.3f}; retained memory {kept:.3f} (layer 0 after the group: audio+visual "
                f"{media[0]:,} -> {media[1]:,}, text {a['text_after']:,} -> {b['text_after']:,} tokens); "
                f"group time {b['group_s'] / a['group_s']:.2f}")
    return lines, ok


def other_processes(own: set[int]) -> list[str]:
    """The busiest other processes right now (what else was running)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,rss,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    except OSError:
        return []
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) == 4 and int(parts[0]) not in own and float(parts[1]) >= 5.0:
            rows.append(f"{parts[3]} (pid {parts[0]}, {parts[1]} % CPU, {int(parts[2]) / 1024:,.0f} MiB)")
    return rows[:6]


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 8.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--layers", type=int, default=1, help="decoder layers built and run (default 1)")
    p.add_argument("--minutes", type=float, nargs="+", default=list(MINUTES), help="stream lengths (default 1 5 15)")
    p.add_argument("--policies", nargs="+", default=["omnimem", "full"], choices=["omnimem", "full"])
    p.add_argument("--all-full", action="store_true",
                   help="measure full memory for every model (default: once per decoder shape; video-SALMONN 2+ 7B "
                        "has the Qwen2.5-Omni-7B decoder)")
    p.add_argument("--frame-side", type=int, default=280, help="frame side in px before the model's rounding (default 280)")
    p.add_argument("--budget", type=int, default=BUDGET, help="omnimem: audio+visual tokens per layer (default 8192)")
    p.add_argument("--ram-limit-gib", type=float, default=None,
                   help="skip a case whose estimated need exceeds this (default: 75%% of MemAvailable at start)")
    p.add_argument("--quick", action="store_true", help="smoke run: omni-7b, 1 and 5 minutes, omnimem only")
    p.add_argument("--out", type=Path, default=None, help="also write the tables and ratios as markdown here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    if args.quick:
        args.models, args.minutes, args.policies = ["omni-7b"], [1, 5], ["omnimem"]
    if args.layers < 1:
        p.error("--layers must be >= 1")
    minutes = sorted(set(args.minutes))
    ram_limit = args.ram_limit_gib if args.ram_limit_gib is not None else 0.75 * mem_available_gib()
    load_start = os.getloadavg()
    others_start = other_processes({os.getpid()})
    print(f"scale benchmark: {', '.join(args.models)}; {args.layers} layer(s) each, bf16, sdpa, CPU "
          f"({os.cpu_count()} CPUs), group {GROUP:,}, omnimem budget {args.budget:,}, {args.frame_side}px @ {FPS:g} fps; "
          f"RAM limit {ram_limit:.1f} GiB; load average {load_start[0]:.2f}; python {platform.python_version()}",
          flush=True)
    t_all = time.perf_counter()
    results, full_done, shared = [], {}, []
    for key in args.models:
        policies = list(args.policies)
        decoder = MODELS[key]["decoder"]
        if "full" in policies and not args.all_full and decoder in full_done:
            policies.remove("full")
            shared.append(f"{key}: full memory not run: same decoder ({decoder}) as {full_done[decoder]}, whose full-memory "
                          f"cost at a given memory length it shares (--all-full runs it)")
        elif "full" in policies:
            full_done[decoder] = key
        case = dict(key=key, layers=args.layers, minutes=minutes, policies=policies, side=args.frame_side,
                    budget=args.budget, ram_limit_gib=ram_limit)
        results.append(spawn_model(case))
    total = time.perf_counter() - t_all
    load_end = os.getloadavg()
    others_end = other_processes({os.getpid()})

    table = format_tables(results)
    lines, ok = ratio_lines(results)
    notes = []
    for res in results:
        i = res["info"]
        rates = next((r["counts"] for r in res["rows"] if r["minutes"] == minutes[-1]), {})
        notes.append(f"{i['key']}: {i['label']}; hidden {i['hidden']}, {i['heads']} heads, {i['kv_heads']} KV heads, "
                     f"head_dim {i['head_dim']}, MLP {i['intermediate']}, attention {i['attn_impl']}, "
                     f"{i['layer_weight_bytes'] / GIB:.2f} GiB per layer; frames {i['frame_side']}px; "
                     f"{minutes[-1]:g}-min stream: {rates}; loaded RSS {i['rss_loaded_mib']:,.0f} MiB "
                     f"(built in {i['build_s']:.0f} s); torch {i['torch']}, {i['threads']} threads")
    notes += shared + [f"{res['info']['key']}: {res['died']}" for res in results if res["died"]]
    notes.append(f"total {total:.0f} s; load average {load_start[0]:.2f} at start, "
                 f"{load_end[0]:.2f} at the end")
    notes.append("other processes at start: " + ("; ".join(others_start) or "none above 5 % CPU"))
    notes.append("other processes at the end: " + ("; ".join(others_end) or "none above 5 % CPU"))
    print()
    print(table)
    print()
    print("\n".join(lines))
    print("\n".join(notes))
    print(f"check: omnimem stream peak flat in stream length (<= {FLAT_TARGET}): {'PASS' if ok else 'FAIL'}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n\n```\n" + "\n".join(lines + notes) + "\n```\n")
    return 0 if ok and not any(res["died"] for res in results) else 1


if __name__ == "__main__":
    sys.exit(main())
