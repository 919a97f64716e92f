"""Qwen2.5-Omni thinker adapter: time-interleaved audio-visual stream with TMRoPE positions.

Layout (what `Qwen2_5OmniProcessor` writes with audio taken from the video):

    prefix… <vision_bos> <audio_bos> [V×n₀][A×50] [V×n₁][A×50] … <audio_eos> <vision_eos>

Each 2-second chunk (`seconds_per_chunk · position_id_per_seconds` = 50 temporal position ids)
holds that chunk's video tokens, then its audio tokens. Positions replicate
`Qwen2_5OmniPreTrainedModelForConditionalGeneration.get_rope_index` token for token, but are
computed incrementally so a stream of unknown length can be positioned as it arrives.

Encoders run chunk by chunk and are exact w.r.t. encoding everything at once: the vision tower
attends within one temporal patch only, and the audio tower within windows of `2·n_window` mel
frames, so we feed whole windows and buffer their tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import zip_longest

import numpy as np
import torch

from omnimem_train.media.features import patchify
from omnimem_train.models.base import MediaInput, Modality, ModelAdapter, StreamPiece

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ChunkCounter:
    """Assigns chunk indices to a monotone sequence of temporal ids, exactly like the model's
    `get_chunked_index`: a new chunk starts when an id reaches `(current + 1) · chunk_len`
    (one boundary per element, as the reference does)."""

    def __init__(self, chunk_len: int):
        self.chunk_len = chunk_len
        self.current = 0

    def __call__(self, t_rel: int) -> int:
        if t_rel >= (self.current + 1) * self.chunk_len:
            self.current += 1
        return self.current


class Qwen2_5OmniAdapter(ModelAdapter):
    position_dims = 3

    def __init__(self, thinker, tokenizer, image_mean=CLIP_MEAN, image_std=CLIP_STD, name: str = "qwen2_5_omni"):
        self.model = thinker
        self.tokenizer = tokenizer
        self.name = name
        cfg = thinker.config
        self.cfg = cfg
        inner = thinker.model
        lm = inner.language_model
        self.audio_tower, self.visual = inner.audio_tower, inner.visual
        self.embed_tokens = lm.embed_tokens
        self.decoder_layers, self.final_norm, self.rotary_emb = lm.layers, lm.norm, lm.rotary_emb
        self.lm_head = thinker.lm_head
        self.backbone = lm
        vc = cfg.vision_config
        self.patch, self.tps, self.merge = vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.pos_per_s = int(cfg.position_id_per_seconds)
        self.seconds_per_chunk = float(cfg.seconds_per_chunk)
        self.chunk_len = int(self.pos_per_s * self.seconds_per_chunk)
        self.audio_window = 2 * int(cfg.audio_config.n_window)  # mel frames the audio tower attends within
        self.ids = {
            "video": cfg.video_token_id,
            "audio": cfg.audio_token_id,
            "vision_bos": cfg.vision_start_token_id,
            "vision_eos": cfg.vision_end_token_id,
            "audio_bos": cfg.audio_start_token_id,
            "audio_eos": cfg.audio_end_token_id,
        }

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids.to(self.device))

    # --- stream ------------------------------------------------------------------------------
    def stream(self, media: MediaInput, prefix_ids: list[int]) -> Iterator[StreamPiece]:
        pos = 0
        if prefix_ids:
            yield self.text_piece(prefix_ids, 0)
            pos = len(prefix_ids)
        has_v, has_a = media.frames is not None, media.mel_windows is not None
        if not (has_v or has_a):
            return
        bos = ["vision_bos", "audio_bos"] if has_v and has_a else ["vision_bos"] if has_v else ["audio_bos"]
        yield self._specials(bos, pos)
        st = pos + 1
        video = self._video_chunks(media.frames, media.fps, st) if has_v else iter(())
        audio = self._audio_chunks(media.mel_windows, st) if has_a else iter(())
        last_max = st - 1
        for j, (v, a) in enumerate(zip_longest(video, audio)):
            parts = [p for p in (v, a) if p is not None]
            last_max = int(parts[-1].positions.max())
            piece = StreamPiece.cat(parts)
            end = (j + 1) * self.seconds_per_chunk
            piece.end_s = min(end, media.duration_s) if media.duration_s is not None else end
            yield piece
        # The reference puts the closing specials after the max of the *last appended* block (the
        # last chunk's audio if it has any), which can be below an earlier video patch's time.
        # Without audio the whole video is one block, whose max is its last chunk's max.
        eos_at = last_max + 1
        eos = ["audio_eos", "vision_eos"] if has_v and has_a else ["vision_eos"] if has_v else ["audio_eos"]
        yield self._specials(eos, eos_at)

    def _specials(self, names: list[str], pos: int) -> StreamPiece:
        """Delimiters that share one position id (both BOS, or both EOS)."""
        piece = self.text_piece([self.ids[n] for n in names], pos)
        piece.positions[:] = pos
        return piece

    def _grids(self, frames) -> Iterator[list[np.ndarray]]:
        """Group frames into temporal patches of `temporal_patch_size` (the last may be short)."""
        buf: list[np.ndarray] = []
        for frame in frames:
            buf.append(frame)
            if len(buf) == self.tps:
                yield buf
                buf = []
        if buf:
            yield buf

    def _video_chunks(self, frames, fps: float, st: int) -> Iterator[StreamPiece]:
        """Encode frames chunk by chunk. Yields one piece per 2-s chunk: (n_grids·h·w/4) tokens."""
        second_per_grid = torch.tensor(self.tps / fps, dtype=torch.float32)
        counter = ChunkCounter(self.chunk_len)
        chunk, chunk_frames, t_ids = 0, [], []
        for grid, grid_frames in enumerate(self._grids(frames)):
            # Same float32 arithmetic as get_rope_index, so truncation matches for any fps.
            t_idx = int((torch.tensor(grid) * second_per_grid * self.pos_per_s).long())
            c = counter(t_idx)
            if c != chunk and chunk_frames:
                yield self._encode_video(chunk_frames, t_ids, st)
                chunk_frames, t_ids = [], []
            chunk = c
            chunk_frames.extend(grid_frames)  # a short last patch is padded by patchify
            t_ids.append(t_idx)
        if chunk_frames:
            yield self._encode_video(chunk_frames, t_ids, st)

    def _encode_video(self, frames: list[np.ndarray], t_ids: list[int], st: int) -> StreamPiece:
        pixels, grid_thw = patchify(
            np.stack(frames), patch_size=self.patch, temporal_patch_size=self.tps, merge_size=self.merge,
            mean=self.image_mean, std=self.image_std,
        )
        inner = self.model.model
        out = inner.get_video_features(pixels.to(self.device, self.dtype), grid_thw.to(self.device))
        embeds = torch.cat(out.pooler_output).to(self.dtype)
        gh, gw = int(grid_thw[0, 1]) // self.merge, int(grid_thw[0, 2]) // self.merge
        h = torch.arange(gh).view(-1, 1).expand(gh, gw).flatten()
        w = torch.arange(gw).view(1, -1).expand(gh, gw).flatten()
        pos = torch.cat(
            [torch.stack([torch.full_like(h, t), h, w]) for t in t_ids], dim=1
        ) + st
        n = embeds.shape[0]
        return StreamPiece(
            embeds,
            torch.full((n,), int(Modality.VISUAL), dtype=torch.long, device=self.device),
            pos.to(self.device),
            None,
            torch.full((n,), self.ids["video"], dtype=torch.long, device=self.device),
        )

    def _mel_blocks(self, mel_windows) -> Iterator[np.ndarray]:
        """Re-cut log-mel windows into blocks of exactly `audio_window` frames (the last may be short)."""
        pending = None
        for win in mel_windows:
            win = np.asarray(win, dtype=np.float32)
            pending = win if pending is None else np.concatenate([pending, win], axis=1)
            cut = (pending.shape[1] // self.audio_window) * self.audio_window
            for s in range(0, cut, self.audio_window):
                yield pending[:, s : s + self.audio_window]
            pending = pending[:, cut:]
        if pending is not None and pending.shape[1]:
            yield pending

    def _audio_chunks(self, mel_windows, st: int) -> Iterator[StreamPiece]:
        """Encode audio block by block; yield 2-s chunks (`chunk_len` tokens) of the result."""
        pending = torch.zeros(0, self.embed_tokens.embedding_dim, device=self.device, dtype=self.dtype)
        emitted = 0
        for block in self._mel_blocks(mel_windows):
            pending = torch.cat([pending, self._encode_audio(block)])
            while pending.shape[0] >= self.chunk_len:
                yield self._audio_piece(pending[: self.chunk_len], st + emitted)
                pending, emitted = pending[self.chunk_len :], emitted + self.chunk_len
        if pending.shape[0]:
            yield self._audio_piece(pending, st + emitted)

    def encode_audio_windows(self, mel_windows) -> torch.Tensor:
        """Log-mel windows (n_mels, T_i) of a whole stream -> (n_audio_tokens, D): every audio token of
        the stream in order, the same values `stream` puts in its audio pieces (a trained audio tower
        re-encodes a cached stream's audio with this)."""
        parts = [self._encode_audio(block) for block in self._mel_blocks(mel_windows)]
        if not parts:
            return torch.zeros(0, self.embed_tokens.embedding_dim, device=self.device, dtype=self.dtype)
        return torch.cat(parts)

    def _encode_audio(self, mel: np.ndarray) -> torch.Tensor:
        """(n_mels, T) log-mel -> (n_tokens, D) audio embeddings."""
        t = mel.shape[1]
        if ((t - 1) // 2 + 1 - 2) // 2 + 1 <= 0:  # too short to yield a token (the model drops it too)
            return torch.zeros(0, self.embed_tokens.embedding_dim, device=self.device, dtype=self.dtype)
        feats = torch.from_numpy(mel).to(self.device, self.dtype).unsqueeze(0)
        mask = torch.ones(1, t, dtype=torch.long, device=self.device)
        out = self.model.model.get_audio_features(feats, feature_attention_mask=mask)
        return out.last_hidden_state.to(self.dtype)

    def _audio_piece(self, embeds: torch.Tensor, start: int) -> StreamPiece:
        n = embeds.shape[0]
        pos = torch.arange(start, start + n, device=self.device).unsqueeze(0).expand(3, -1).clone()
        return StreamPiece(
            embeds,
            torch.full((n,), int(Modality.AUDIO), dtype=torch.long, device=self.device),
            pos,
            None,
            torch.full((n,), self.ids["audio"], dtype=torch.long, device=self.device),
        )
