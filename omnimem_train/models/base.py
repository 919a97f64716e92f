"""The model-adapter interface: what the streaming engine needs from a model family.

An adapter turns one sample (media and/or text context) into a *stream*: an iterator of
`StreamPiece`s, each carrying input embeddings, a modality label per token and the token's
absolute rotary positions in the full sequence. Encoders run piece by piece, so an hour of video is
never encoded at once. The adapter also exposes the decoder stack (layers, rotary embedding, final
norm, lm_head) that the engine drives layer by layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch
from torch import nn

from omnimem_train.errors import MediaError


class Modality(IntEnum):
    """Per-token modality label. TEXT covers every always-kept token (prompt, specials, delimiters)."""

    TEXT = 0
    VISUAL = 1
    AUDIO = 2


@dataclass
class StreamPiece:
    """A contiguous run of stream tokens, ready for the decoder.

    embeds:    (L, D) input embeddings (encoder outputs already projected into the LLM space)
    modality:  (L,) long, values of `Modality`
    positions: (P, L) long, absolute rotary positions; P = 3 (TMRoPE t/h/w) or 1 (1-D RoPE)
    end_s:     media time (seconds) reached at the end of this piece; None for pure text
    token_ids: (L,) long, the placeholder/text ids (for inspection and full-forward checks)
    layer_adds: (K, L, D) or None, added to the hidden states after decoder layer k < K (DeepStack:
               multi-level visual features; zero rows for the other tokens)
    """

    embeds: torch.Tensor
    modality: torch.Tensor
    positions: torch.Tensor
    end_s: float | None = None
    token_ids: torch.Tensor | None = None
    layer_adds: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @property
    def is_text(self) -> bool:
        """Every token is text (a prompt or delimiter piece, embedded from `token_ids`)."""
        return bool((self.modality == int(Modality.TEXT)).all())

    def next_pos(self) -> int:
        """The rotary position text continues at after this (non-empty) piece: after its *last*
        token's position, as get_rope_index continues, which can be below the piece's max (a video
        patch later in time than the final audio)."""
        return int(self.positions[:, -1].max()) + 1

    def slice(self, start: int, stop: int) -> StreamPiece:
        ids = None if self.token_ids is None else self.token_ids[start:stop]
        end = self.end_s if stop >= len(self) else None
        adds = None if self.layer_adds is None else self.layer_adds[:, start:stop]
        return StreamPiece(self.embeds[start:stop], self.modality[start:stop], self.positions[:, start:stop], end, ids,
                           adds)

    def take(self, idx: torch.Tensor) -> StreamPiece:
        """Keep tokens `idx` ((k,) ascending); positions stay the original ones."""
        ids = None if self.token_ids is None else self.token_ids[idx]
        adds = None if self.layer_adds is None else self.layer_adds[:, idx]
        return StreamPiece(self.embeds[idx], self.modality[idx], self.positions[:, idx], self.end_s, ids, adds)

    @staticmethod
    def cat(pieces: list[StreamPiece]) -> StreamPiece:
        ends = [p.end_s for p in pieces if p.end_s is not None]
        ids = None if any(p.token_ids is None for p in pieces) else torch.cat([p.token_ids for p in pieces])
        k = max((p.layer_adds.shape[0] for p in pieces if p.layer_adds is not None), default=0)
        adds = None if not k else torch.cat([p.layer_adds if p.layer_adds is not None else
                                            p.embeds.new_zeros(k, *p.embeds.shape) for p in pieces], dim=1)
        return StreamPiece(
            torch.cat([p.embeds for p in pieces]),
            torch.cat([p.modality for p in pieces]),
            torch.cat([p.positions for p in pieces], dim=1),
            ends[-1] if ends else None,
            ids,
            adds,
        )


@dataclass
class MediaInput:
    """One sample's media, decoded lazily.

    frames:      iterator of uint8 RGB frames (H, W, 3), H and W multiples of 28, sampled at `fps`
    fps:         sampling rate of `frames`
    mel_windows: iterator of log-mel windows (n_mels, T_i) at 100 frames/s, concatenated in time
    context:     text-proxy stream for text-only LMs: list of (Modality, text) segments in time order
    duration_s:  media duration, used for group-by-seconds and reports
    expected_tokens: estimated audio/visual tokens of the whole stream, by modality (may be empty)
    """

    frames: Iterator[np.ndarray] | None = None
    fps: float = 2.0
    mel_windows: Iterator[np.ndarray] | None = None
    context: list[tuple[Modality, str]] = field(default_factory=list)
    duration_s: float | None = None
    expected_tokens: dict[Modality, int] = field(default_factory=dict)


class ModelAdapter(ABC):
    """One model family behind the interface the streaming engine drives.

    Subclasses set `model` (the causal-LM module), `tokenizer`, `decoder_layers`, `final_norm`,
    `lm_head`, `rotary_emb`, `backbone` (the decoder stack as one HF module: embeds -> final-normed
    hidden states) and `position_dims` (3 for TMRoPE, 1 for plain RoPE).
    """

    model: nn.Module
    tokenizer: object
    decoder_layers: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Module
    rotary_emb: nn.Module
    backbone: nn.Module
    position_dims: int
    name: str = "model"
    # An adapter that takes frames and audio (not only a text-proxy context) sets `takes_media` and
    # provides `chunker(prefix_ids, fps=, video=, audio=, duration_s=)` (its push-based stream layout:
    # start / feed(frames=, audio=) / finish / copy, with `video_s` and `audio_s` fed), the
    # `feature_extractor()` its audio is featurized with, `frame_multiple` (frame sides are multiples
    # of it), `visual_tokens(n_frames, height, width)` and `audio_tokens(n_mel_frames)`.
    takes_media: bool = False
    audio_window_s: float | None = None  # the log-mel window its audio encoder needs (None: any up to 30 s)

    # --- text -------------------------------------------------------------------------------
    @abstractmethod
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(L,) token ids -> (L, D) input embeddings."""

    def text_piece(self, ids: torch.Tensor | list[int], start_pos: int) -> StreamPiece:
        """Text tokens at consecutive positions start_pos, start_pos+1, ... (same on every rope axis)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        pos = torch.arange(start_pos, start_pos + len(ids), device=self.device)
        return StreamPiece(
            self.embed_ids(ids),
            torch.full((len(ids),), int(Modality.TEXT), dtype=torch.long, device=self.device),
            pos.unsqueeze(0).expand(self.position_dims, -1).clone(),
            None,
            ids,
        )

    def reembed(self, piece: StreamPiece) -> StreamPiece:
        """A text-only piece with embeddings freshly looked up from its ids (so they carry gradient
        to a trainable embedding table); any other piece unchanged."""
        if piece.token_ids is None or not piece.is_text:
            return piece
        return dataclasses.replace(piece, embeds=self.embed_ids(piece.token_ids))

    # --- the stream -------------------------------------------------------------------------
    def stream(self, media: MediaInput, prefix_ids: list[int]) -> Iterator[StreamPiece]:
        """The sample's context as pieces: the text prefix, then the media (or text-proxy) tokens.

        Positions are absolute over the whole sequence, exactly as the model would assign them
        to the full, uncompressed input. A media adapter pushes the media through its chunker
        (`push_media`); an adapter without one overrides this.
        """
        chunker = self.chunker(prefix_ids, fps=media.fps, video=media.frames is not None,
                               audio=media.mel_windows is not None, duration_s=media.duration_s)
        return push_media(chunker, media.frames, media.mel_windows)

    # --- decoder plumbing -------------------------------------------------------------------
    def rotary(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L, D) hidden, (P, L) positions -> (cos, sin), each (1, L, head_dim)."""
        if self.position_dims == 3:
            return self.rotary_emb(hidden, positions.unsqueeze(1))  # (3, 1, L)
        return self.rotary_emb(hidden, positions)  # (1, L)

    def group_queries(self, layer_idx: int, hidden: torch.Tensor, cos_sin,
                      q_proj_out: torch.Tensor | None = None) -> torch.Tensor:
        """The queries layer `layer_idx` computed for a group: (1, L, D) layer-input hidden ->
        (n_heads, L, head_dim), RoPE applied exactly as in the layer's attention. `q_proj_out`:
        the layer's own q_proj output (1, L, H·d) if it was captured, to skip recomputing it."""
        layer = self.decoder_layers[layer_idx]
        attn = layer.self_attn
        if q_proj_out is None:
            q_proj_out = attn.q_proj(layer.input_layernorm(hidden))
        q = q_proj_out.view(*q_proj_out.shape[:-1], -1, attn.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3-style per-head query norm, applied before RoPE
            q = attn.q_norm(q)
        q = q.transpose(1, 2)  # (1, H, L, d)
        cos, sin = (t.unsqueeze(1) for t in cos_sin)
        half = q.shape[-1] // 2
        rotated = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
        return (q * cos + rotated * sin)[0]

    def decoder_hidden(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                       layer_adds: torch.Tensor | None = None) -> torch.Tensor:
        """One batched full-context pass: (B, L, D) embeds, (P, B, L) positions, and either a (B, L)
        padding mask (1 = token; causal attention) or a (B, 1, L, L) additive mask used as it is
        (`train.full_context.packed_mask`) -> (B, L, D) final-normed hidden states (no cache).
        `layer_adds` (K, B, L, D): the batch's `StreamPiece.layer_adds`, added after decoder layer
        k < K as the streaming engine adds them (`adding_after_layers`)."""
        pos = positions if self.position_dims == 3 else positions[0]
        with self.adding_after_layers(layer_adds):
            out = self.backbone(inputs_embeds=embeds, position_ids=pos, attention_mask=mask, use_cache=False)
        return out.last_hidden_state

    @contextlib.contextmanager
    def adding_after_layers(self, layer_adds: torch.Tensor | None) -> Iterator[None]:
        """Within the block, decoder layer k < K adds `layer_adds[k]` ((K, B, L, D), cast to the hidden
        states' device and dtype) to the hidden states it outputs, through forward hooks on the first K
        `decoder_layers` (removed on exit); None adds nothing. Any backbone that runs its
        `decoder_layers` in order thus gets DeepStack-style features without a model-specific argument."""
        def hook(add: torch.Tensor):
            def add_to(module, args, output):  # a layer returns its hidden states, or a tuple starting with them
                if isinstance(output, tuple):
                    return (output[0] + add.to(output[0].device, output[0].dtype), *output[1:])
                return output + add.to(output.device, output.dtype)
            return add_to

        handles = []
        if layer_adds is not None:
            for k, layer in enumerate(self.decoder_layers[: len(layer_adds)]):
                handles.append(layer.register_forward_hook(hook(layer_adds[k])))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def eos_token_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's eos plus the chat end-of-turn markers it knows."""
        tok = self.tokenizer
        ids = {tok.eos_token_id} - {None}
        for name in ("<|im_end|>", "<|endoftext|>"):
            tid = tok.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != tok.unk_token_id:
                ids.add(tid)
        return sorted(ids)


def push_media(chunker, frames: Iterator[np.ndarray] | None, mel_windows: Iterator[np.ndarray] | None
               ) -> Iterator[StreamPiece]:
    """Drive a media adapter's chunker from lazy frame and log-mel iterators: its start, every piece
    it completes, its finish. Whichever modality is behind in media time is pulled next, so only
    about one chunk (or one feature window) of the other is held."""
    yield from chunker.start()
    frames = iter(frames) if frames is not None else None
    windows = iter(mel_windows) if mel_windows is not None else None
    while frames is not None or windows is not None:
        if windows is None or (frames is not None and chunker.video_s <= chunker.audio_s):
            frame = next(frames, None)
            if frame is None:
                frames = None
            else:
                yield from chunker.feed(frames=frame)
        else:
            window = next(windows, None)
            if window is None:
                windows = None
            else:
                yield from chunker.feed(audio=window)
    yield from chunker.finish()


def as_frames(frames) -> list[np.ndarray]:
    """uint8 RGB frames (N, H, W, 3), or one (H, W, 3) frame -> a list of (H, W, 3) frames."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise MediaError(f"frames must be uint8 RGB (N, H, W, 3) or (H, W, 3), got {arr.dtype} {arr.shape}")
    return list(arr)
