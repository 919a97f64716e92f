"""Qwen2.5-Omni thinker adapter: time-interleaved audio-visual stream with TMRoPE positions.

Layout (what `Qwen2_5OmniProcessor` writes with audio taken from the video):

    prefix… <vision_bos> <audio_bos> [V×n₀][A×50] [V×n₁][A×50] … <audio_eos> <vision_eos>

Each 2-second chunk (`seconds_per_chunk · position_id_per_seconds` = 50 temporal position ids)
holds that chunk's video tokens, then its audio tokens. Positions replicate
`Qwen2_5OmniPreTrainedModelForConditionalGeneration.get_rope_index` token for token, but are
computed incrementally by one push-based `OmniChunker`, so a stream of unknown length is positioned
as it arrives: the offline `stream`, training and the live session all push media through it.

Encoders run chunk by chunk and are exact w.r.t. encoding everything at once: the vision tower
attends within one temporal patch only, and the audio tower within windows of `2·n_window` mel
frames, so we feed whole windows and buffer their tokens.
"""

from __future__ import annotations

import copy
import math
from itertools import zip_longest

import numpy as np
import torch

from omnimem_train.errors import MediaError
from omnimem_train.media.features import LogMelExtractor, audio_tokens_for_frames, patchify
from omnimem_train.models.base import Modality, ModelAdapter, StreamPiece, as_frames

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MEL_FRAMES_PER_S = 100  # Whisper log-mel: 16 kHz, hop 160


class Qwen2_5OmniAdapter(ModelAdapter):
    position_dims = 3
    takes_media = True

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
        self.frame_multiple = self.patch * self.merge  # frame sides are multiples of one merged patch (28 px)
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

    # --- capabilities ------------------------------------------------------------------------
    def feature_extractor(self) -> LogMelExtractor:
        """The Whisper log-mel extractor of the checkpoint folder (defaults without one)."""
        model_dir = getattr(self, "model_dir", None)
        return LogMelExtractor.from_dir(model_dir) if model_dir else LogMelExtractor()

    def visual_tokens(self, n_frames: int, height: int, width: int) -> int:
        """Visual tokens of `n_frames` frames of height x width (multiples of `frame_multiple`)."""
        return math.ceil(n_frames / self.tps) * (height // self.frame_multiple) * (width // self.frame_multiple)

    def audio_tokens(self, n_mel_frames: int) -> int:
        """Audio tokens of `n_mel_frames` log-mel frames (estimated for whole-window feeds)."""
        return audio_tokens_for_frames(n_mel_frames)

    # --- stream ------------------------------------------------------------------------------
    def chunker(self, prefix_ids: list[int], *, fps: float = 2.0, video: bool = True, audio: bool = True,
                duration_s: float | None = None) -> OmniChunker:
        return OmniChunker(self, prefix_ids, fps, video, audio, duration_s)

    def encode_audio_windows(self, mel_windows) -> torch.Tensor:
        """Log-mel windows (n_mels, T_i) of a whole stream -> (n_audio_tokens, D): every audio token of
        the stream in order, the same values `stream` puts in its audio pieces (a trained audio tower
        re-encodes a cached stream's audio with this)."""
        part = _AudioPart(self, 0)
        pieces = [p for window in mel_windows for p in part.push(window)] + part.finish()
        if not pieces:
            return torch.zeros(0, self.embed_tokens.embedding_dim, device=self.device, dtype=self.dtype)
        return torch.cat([p.embeds for p in pieces])

    def _specials(self, names: list[str], pos: int) -> StreamPiece:
        """Delimiters that share one position id (both BOS, or both EOS)."""
        piece = self.text_piece([self.ids[n] for n in names], pos)
        piece.positions[:] = pos
        return piece

    def _encode_video(self, frames: list[np.ndarray], t_ids: list[int], st: int) -> StreamPiece:
        """Frames of one chunk (whole temporal patches; a short last one is padded by patchify) with
        their patches' temporal ids -> the chunk's video piece, (n_patches·h·w/4) tokens."""
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


class OmniChunker:
    """The push-based Qwen2.5-Omni stream layout (see the module doc): `start()` gives the text prefix
    and the opening delimiters; `feed(frames=, audio=)` encodes what it is given and returns the
    pieces it completes, one per 2-s chunk (its video part, then its audio part) once the chunk is
    complete in every streamed modality; `finish()` the incomplete last chunks and the closing
    delimiters. Positions are computed here, incrementally, so a stream of unknown length is
    positioned as it arrives; how the media is cut into feeds changes nothing.

    A chunk's video part is emitted as soon as its last temporal patch is in (the next patch's
    TMRoPE time opens a new chunk); its audio part once `chunk_len` audio tokens are encoded, the
    audio tower taking whole blocks of `audio_window` mel frames."""

    def __init__(self, ad: Qwen2_5OmniAdapter, prefix: list[int], fps: float, video: bool, audio: bool,
                 duration_s: float | None):
        self.ad, self.prefix, self.duration_s = ad, list(prefix), duration_s
        self.st = len(self.prefix) + 1  # first media position: after the prefix and the shared-position BOS pair
        self.video = _VideoPart(ad, fps, self.st) if video else None
        self.audio = _AudioPart(ad, self.st) if audio else None
        self.v_parts: list[StreamPiece] = []  # complete chunks of one modality waiting for the other
        self.a_parts: list[StreamPiece] = []
        self.n_chunks = 0
        self.last_max = self.st - 1  # max position of the last appended block (where EOS goes)

    @property
    def video_s(self) -> float:
        """Seconds of video fed so far."""
        return self.video.n_frames / self.video.fps if self.video else 0.0

    @property
    def audio_s(self) -> float:
        """Seconds of audio fed so far (mel frames at 100 per second)."""
        return self.audio.n_mel / MEL_FRAMES_PER_S if self.audio else 0.0

    def start(self) -> list[StreamPiece]:
        pieces = [self.ad.text_piece(self.prefix, 0)] if self.prefix else []
        return pieces + self._delimiters(closing=False, pos=self.st - 1)

    def feed(self, frames=None, audio: np.ndarray | None = None) -> list[StreamPiece]:
        """frames: uint8 (N, H, W, 3) or one (H, W, 3) frame at `fps`, H and W multiples of
        `frame_multiple`; audio: log-mel (n_mels, T) from `feature_extractor()`, consecutive."""
        if frames is not None:
            if self.video is None:
                raise MediaError("this stream carries no video; feed audio only")
            self.v_parts += self.video.push(as_frames(frames))
        if audio is not None:
            if self.audio is None:
                raise MediaError("this stream carries no audio; feed frames only")
            self.a_parts += self.audio.push(audio)
        return self._pair(final=False)

    def finish(self, flush: bool = True, duration_s: float | None = None) -> list[StreamPiece]:
        """The end of the stream: with `flush`, the incomplete media as the last chunks; then the
        closing delimiters. `duration_s` clips the last chunk's end time (default: the duration given
        at construction, else the media fed). Leaves this chunker spent (call it on a `copy` to peek)."""
        if flush:
            self.v_parts += self.video.finish() if self.video else []
            self.a_parts += self.audio.finish() if self.audio else []
        if duration_s is None:
            duration_s = self.duration_s if self.duration_s is not None else max(self.video_s, self.audio_s)
        pieces = self._pair(final=flush, duration_s=duration_s)
        return pieces + self._delimiters(closing=True, pos=self.last_max + 1)

    def copy(self) -> OmniChunker:
        other = copy.copy(self)
        other.v_parts, other.a_parts = list(self.v_parts), list(self.a_parts)
        other.video = copy.copy(self.video)  # their lists, arrays and tensors are only ever rebound
        other.audio = copy.copy(self.audio)
        return other

    def _delimiters(self, closing: bool, pos: int) -> list[StreamPiece]:
        """<vision_bos><audio_bos> (closing: <audio_eos><vision_eos>) of the streamed modalities, at one
        shared position; none for a stream without media."""
        names = [n for n, on in (("vision", self.video), ("audio", self.audio)) if on]
        names = [f"{n}_eos" for n in reversed(names)] if closing else [f"{n}_bos" for n in names]
        return [self.ad._specials(names, pos)] if names else []

    def _pair(self, final: bool, duration_s: float | None = None) -> list[StreamPiece]:
        """Pieces for chunks complete in every streamed modality (`final`: all, as zip_longest does)."""
        if final:
            n = max(len(self.v_parts), len(self.a_parts))
        elif self.video and self.audio:
            n = min(len(self.v_parts), len(self.a_parts))
        else:
            n = len(self.v_parts) + len(self.a_parts)
        limit = self.duration_s if self.duration_s is not None else duration_s if final else None
        out = []
        for v, a in zip_longest(self.v_parts[:n], self.a_parts[:n]):
            parts = [p for p in (v, a) if p is not None]
            # The reference puts the closing specials after the max of the *last appended* block (the
            # last chunk's audio if it has any), which can be below an earlier video patch's time.
            self.last_max = int(parts[-1].positions.max())
            piece = StreamPiece.cat(parts)
            self.n_chunks += 1
            end = self.n_chunks * self.ad.seconds_per_chunk
            piece.end_s = min(end, limit) if limit is not None else end
            out.append(piece)
        self.v_parts, self.a_parts = self.v_parts[n:], self.a_parts[n:]
        return out


class _VideoPart:
    """Frames -> the video part of each 2-s chunk: temporal patches of `temporal_patch_size` frames,
    chunked by their TMRoPE time as `get_chunked_index` does (a new chunk starts when a patch's time
    reaches `(current + 1) · chunk_len`, one boundary per patch)."""

    def __init__(self, ad: Qwen2_5OmniAdapter, fps: float, st: int):
        self.ad, self.fps, self.st = ad, fps, st
        self.second_per_grid = torch.tensor(ad.tps / fps, dtype=torch.float32)
        self.n_frames = 0
        self.grid = 0  # index of the next temporal patch
        self.loose: list[np.ndarray] = []  # frames of the next, incomplete patch
        self.chunk, self.chunk_frames, self.t_ids = 0, [], []

    def push(self, frames: list[np.ndarray]) -> list[StreamPiece]:
        out = []
        for frame in frames:
            self.n_frames += 1
            self.loose = self.loose + [frame]
            if len(self.loose) == self.ad.tps:
                out += self._add_patch(self.loose)
                self.loose = []
        return out

    def finish(self) -> list[StreamPiece]:
        out = self._add_patch(self.loose) if self.loose else []  # a short last patch is padded by patchify
        self.loose = []
        if self.chunk_frames:
            out.append(self._emit())
        return out

    def _t_idx(self, grid: int) -> int:
        # Same float32 arithmetic as get_rope_index, so truncation matches for any fps.
        return int((torch.tensor(grid) * self.second_per_grid * self.ad.pos_per_s).long())

    def _add_patch(self, frames: list[np.ndarray]) -> list[StreamPiece]:
        out = []
        t = self._t_idx(self.grid)
        if t >= (self.chunk + 1) * self.ad.chunk_len:
            self.chunk += 1
            if self.chunk_frames:
                out.append(self._emit())
        self.chunk_frames, self.t_ids = self.chunk_frames + frames, self.t_ids + [t]
        self.grid += 1
        # The chunk is complete when the next patch would open a new one.
        if self._t_idx(self.grid) >= (self.chunk + 1) * self.ad.chunk_len:
            out.append(self._emit())
        return out

    def _emit(self) -> StreamPiece:
        piece = self.ad._encode_video(self.chunk_frames, self.t_ids, self.st)
        self.chunk_frames, self.t_ids = [], []
        return piece


class _AudioPart:
    """Log-mel frames -> audio-tower blocks of exactly `audio_window` frames (the tower attends within
    one; the last may be short) -> the audio part of each 2-s chunk (`chunk_len` tokens)."""

    def __init__(self, ad: Qwen2_5OmniAdapter, st: int):
        self.ad, self.st = ad, st
        self.n_mel = 0
        self.frames: np.ndarray | None = None  # mel frames not yet in a whole block
        self.embeds = torch.zeros(0, ad.embed_tokens.embedding_dim, device=ad.device, dtype=ad.dtype)
        self.emitted = 0  # audio tokens already in chunks

    def push(self, mel: np.ndarray) -> list[StreamPiece]:
        mel = np.asarray(mel, dtype=np.float32)
        self.n_mel += mel.shape[1]
        self.frames = mel if self.frames is None else np.concatenate([self.frames, mel], axis=1)
        block = self.ad.audio_window
        cut = (self.frames.shape[1] // block) * block
        out = []
        for s in range(0, cut, block):
            out += self._add_block(self.frames[:, s: s + block])
        self.frames = self.frames[:, cut:]
        return out

    def finish(self) -> list[StreamPiece]:
        out = self._add_block(self.frames) if self.frames is not None and self.frames.shape[1] else []
        if len(self.embeds):
            out.append(self.ad._audio_piece(self.embeds, self.st + self.emitted))
        self.frames, self.embeds = None, self.embeds[:0]
        return out

    def _add_block(self, block: np.ndarray) -> list[StreamPiece]:
        self.embeds = torch.cat([self.embeds, self.ad._encode_audio(np.ascontiguousarray(block))])
        out, n = [], self.ad.chunk_len
        while len(self.embeds) >= n:
            out.append(self.ad._audio_piece(self.embeds[:n], self.st + self.emitted))
            self.embeds, self.emitted = self.embeds[n:], self.emitted + n
        return out
