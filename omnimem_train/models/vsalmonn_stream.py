"""The stream layout of the video-SALMONN 2+ family (`models/vsalmonn.py`): Qwen2.5-VL or Qwen3-VL
with a Whisper + window Q-Former audio bridge.

One temporal step is one temporal patch (`temporal_patch_size` frames, `spg = tps / fps` seconds).
Each step holds its video tokens, then the audio tokens of its time span: audio token k (Q per
0.5-s Whisper window, so `rate` = 2 tokens/s) belongs to step j when
`floor(j·spg·rate) <= k < floor((j+1)·spg·rate)`, as the release splits audio over steps; audio left
after the last step follows it. Two layouts:

- `span` (video-SALMONN 2+, Qwen2.5-VL):
      prefix… <|vision_start|> [V×hw A×a₀] [V×hw A×a₁] … [A×rest] <|vision_end|>
  M-RoPE as the release computes it for an audio-visual span starting at S (the first media
  position): video of step j at (S + floor(j·spg·tokens_per_second), S + row, S + col), audio token k
  at (S + k, S, S + k) (audio only: (S + k, S + k, S)); `<|vision_end|>` after the largest temporal
  position of the span (video only: after the largest position on any axis).
- `steps` (the OmniMem release, Qwen3-VL):
      prefix… [<t seconds><|vision_start|> V×hw A×a₀ <|vision_end|>] [<t seconds><|vision_start|> …] …
  Video of one step at (P, P + row, P + col) with P the next text position; everything else,
  audio included, is text-positioned (t = h = w, consecutive). Each step's `<|vision_end|>` is
  emitted with the next step (or at the end), so audio left after the last step goes inside it.
  DeepStack features of the video tokens travel with the piece (`StreamPiece.layer_adds`).
  Audio only: the audio tokens as text, no delimiters.

The release rounds audio up to whole 30-s windows and keeps the tokens of the padding; here a
stream ends where its audio ends: the last window gives the tokens of its real frames only.
Encoders are exact chunk by chunk: the vision towers attend within one temporal patch, Whisper
within one 30-s window (each window is encoded once it is complete, so audio lags up to 30 s).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch

from omnimem_train.errors import MediaError
from omnimem_train.media.features import LogMelExtractor, patchify
from omnimem_train.models.base import Modality, ModelAdapter, StreamPiece, as_frames

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MEL_WINDOW = 3000  # log-mel frames of one 30-s Whisper window
MEL_FRAMES_PER_S = 100


class VSalmonnAdapter(ModelAdapter):
    position_dims = 3
    takes_media = True
    audio_window_s = 30.0  # Whisper attends over a whole 30-s window; a shorter feed is the stream's last

    def __init__(self, model, tokenizer, image_mean=None, image_std=None, name: str = "vsalmonn"):
        from transformers import Qwen3VLForConditionalGeneration

        self.model, self.tokenizer, self.name = model, tokenizer, name
        cfg = self.cfg = model.config
        inner = model.model
        lm = inner.language_model
        self.visual = inner.visual
        self.audio_bridge = model.audio if hasattr(model, "audio") else inner.audio
        self.embed_tokens = lm.embed_tokens
        self.decoder_layers, self.final_norm, self.rotary_emb = lm.layers, lm.norm, lm.rotary_emb
        self.lm_head, self.backbone = model.lm_head, lm
        self.layout = "steps" if isinstance(model, Qwen3VLForConditionalGeneration) else "span"
        vc = cfg.vision_config
        self.patch, self.tps, self.merge = vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size
        self.frame_multiple = self.patch * self.merge
        default_mean, default_std = (CLIP_MEAN, CLIP_STD) if self.layout == "span" else ((0.5,) * 3, (0.5,) * 3)
        self.image_mean = tuple(image_mean or default_mean)
        self.image_std = tuple(image_std or default_std)
        self.tokens_per_second = int(getattr(vc, "tokens_per_second", 2))  # span layout: temporal positions per s
        ac = cfg.audio_config
        self.audio_rate = _query_length(ac) / float(ac.second_per_window)  # audio tokens per second
        self.mel_per_token = round(MEL_FRAMES_PER_S * float(ac.second_per_window))
        self.ids = {"video": cfg.video_token_id, "audio": cfg.audio_token_id,
                    "vision_start": cfg.vision_start_token_id, "vision_end": cfg.vision_end_token_id}

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids.to(self.device))

    # --- capabilities ------------------------------------------------------------------------
    def feature_extractor(self) -> LogMelExtractor:
        """The folder's Whisper extractor when its preprocessor_config.json is one; a release folder's
        is the image processor's, and the audio path is whisper-large-v3's 128-bin log-mel."""
        model_dir = getattr(self, "model_dir", None)
        config = Path(model_dir or "") / "preprocessor_config.json"
        if model_dir and config.is_file() and "WhisperFeatureExtractor" in config.read_text(encoding="utf-8"):
            return LogMelExtractor.from_dir(model_dir)
        return LogMelExtractor()

    def visual_tokens(self, n_frames: int, height: int, width: int) -> int:
        return math.ceil(n_frames / self.tps) * (height // self.frame_multiple) * (width // self.frame_multiple)

    def audio_tokens(self, n_mel_frames: int) -> int:
        return math.ceil(n_mel_frames / self.mel_per_token) * _query_length(self.cfg.audio_config)

    # --- stream ------------------------------------------------------------------------------
    def chunker(self, prefix_ids: list[int], *, fps: float = 2.0, video: bool = True, audio: bool = True,
                duration_s: float | None = None) -> VSalmonnChunker:
        return VSalmonnChunker(self, prefix_ids, fps, video, audio, duration_s)

    def encode_audio_windows(self, mel_windows) -> torch.Tensor:
        """Log-mel windows (n_mels, T_i ≤ 3000) of a whole stream -> (n_audio_tokens, D), the values
        `stream` puts in its audio pieces."""
        parts = [self._encode_audio(np.asarray(w, dtype=np.float32)) for w in mel_windows]
        if not parts:
            return torch.zeros(0, self.embed_tokens.embedding_dim, device=self.device, dtype=self.dtype)
        return torch.cat(parts)

    def _encode_audio(self, mel: np.ndarray) -> torch.Tensor:
        """(n_mels, T ≤ 3000) log-mel of one window -> (tokens of its T real frames, D). The window is
        padded to 30 s at the floor a silent tail has (the extractor clamps at max - 8 dB: 2 after
        its (x + 4) / 4 scaling)."""
        t = mel.shape[1]
        if t > MEL_WINDOW:
            raise MediaError(f"audio window of {t} log-mel frames; at most {MEL_WINDOW} (30 s)")
        if t < MEL_WINDOW:
            floor = float(mel.max()) - 2.0 if t else 0.0
            mel = np.concatenate([mel, np.full((mel.shape[0], MEL_WINDOW - t), floor, np.float32)], axis=1)
        feats = torch.from_numpy(np.ascontiguousarray(mel)).to(self.device, self.dtype).unsqueeze(0)
        tokens = self.audio_bridge.encode(feats)[0].to(self.dtype)  # (60·Q, D)
        return tokens[: self.audio_tokens(t)]

    def _encode_video(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
        """Frames of one temporal step -> ((h·w, D) tokens, (K, h·w, D) DeepStack features or None,
        h, w) with h, w the merged grid."""
        pixels, grid_thw = patchify(np.stack(frames), patch_size=self.patch, temporal_patch_size=self.tps,
                                    merge_size=self.merge, mean=self.image_mean, std=self.image_std)
        out = self.model.model.get_video_features(pixels.to(self.device, self.dtype), grid_thw.to(self.device))
        tokens = torch.cat(list(out.pooler_output)).to(self.dtype)
        deep = getattr(out, "deepstack_features", None)
        deep = torch.stack([torch.cat(list(d)) for d in deep]).to(self.dtype) if deep else None
        return tokens, deep, int(grid_thw[0, 1]) // self.merge, int(grid_thw[0, 2]) // self.merge

    def _piece(self, parts: list[tuple], end_s: float | None) -> StreamPiece:
        """Parts (modality, embeds (n, D), positions (3, n), token ids (n,), DeepStack (K, n, D) or
        None) -> one piece; DeepStack rows of the other parts are zero."""
        k = max((deep.shape[0] for *_, deep in parts if deep is not None), default=0)
        adds = None
        if k:
            adds = torch.cat([deep if deep is not None else emb.new_zeros(k, *emb.shape)
                              for _, emb, _, _, deep in parts], dim=1)
        return StreamPiece(
            torch.cat([emb for _, emb, _, _, _ in parts]),
            torch.cat([torch.full((len(ids),), int(kind), dtype=torch.long, device=self.device)
                       for kind, _, _, ids, _ in parts]),
            torch.cat([pos.to(self.device) for _, _, pos, _, _ in parts], dim=1),
            end_s,
            torch.cat([ids for _, _, _, ids, _ in parts]),
            adds,
        )

    def _media_ids(self, kind: str, n: int) -> torch.Tensor:
        return torch.full((n,), self.ids[kind], dtype=torch.long, device=self.device)


class VSalmonnChunker:
    """The push-based layout of the module doc: `start()`, `feed(frames=, audio=)` -> the steps it
    completes, `finish(flush)`, `copy()`; `video_s` / `audio_s` fed. Positions are assigned here, as
    the tokens are laid out."""

    def __init__(self, ad: VSalmonnAdapter, prefix: list[int], fps: float, video: bool, audio: bool,
                 duration_s: float | None):
        self.ad, self.prefix, self.fps, self.duration_s = ad, list(prefix), fps, duration_s
        self.video, self.audio = video, audio
        self.spg = torch.tensor(ad.tps / fps, dtype=torch.float32)
        self.n_frames, self.loose = 0, []          # frames fed; frames of the next, incomplete step
        self.steps: list[tuple] = []               # encoded steps waiting for their audio
        self.step_index = 0                        # index of the next step to emit
        self.n_mel, self.audio_done = 0, not audio
        self.audio_pending = None                  # (n, D) encoded audio tokens not yet laid out
        self.audio_laid = 0                        # audio tokens already laid out
        self.next_pos = 0                          # next text position
        self.span_start = len(self.prefix) + 1     # S of the span layout (after <|vision_start|>)
        self.max_t = -1                            # span layout: largest temporal offset so far
        self.max_any = -1                          # span layout: largest offset on any axis
        self.pending_end = False                   # steps layout: a <|vision_end|> owed

    @property
    def video_s(self) -> float:
        return self.n_frames / self.fps if self.video else 0.0

    @property
    def audio_s(self) -> float:
        return self.n_mel / MEL_FRAMES_PER_S if self.audio else 0.0

    def start(self) -> list[StreamPiece]:
        parts = [self._text(self.prefix)] if self.prefix else []
        if self.ad.layout == "span" and (self.video or self.audio):
            parts.append(self._text([self.ad.ids["vision_start"]]))
        return [self.ad._piece(parts, None)] if parts else []

    def feed(self, frames=None, audio: np.ndarray | None = None) -> list[StreamPiece]:
        if frames is not None:
            if not self.video:
                raise MediaError("this stream carries no video; feed audio only")
            for frame in as_frames(frames):
                self.n_frames += 1
                self.loose = self.loose + [frame]
                if len(self.loose) == self.ad.tps:
                    self._add_step(self.loose)
                    self.loose = []
        if audio is not None:
            if not self.audio:
                raise MediaError("this stream carries no audio; feed frames only")
            mel = np.asarray(audio, dtype=np.float32)
            self.n_mel += mel.shape[1]
            tokens = self.ad._encode_audio(mel)
            self.audio_pending = tokens if self.audio_pending is None else torch.cat([self.audio_pending, tokens])
            if mel.shape[1] < MEL_WINDOW:  # a short window is the last one
                self.audio_done = True
        return self._emit(final=False)

    def finish(self, flush: bool = True, duration_s: float | None = None) -> list[StreamPiece]:
        if flush and self.loose:
            self._add_step(self.loose)
            self.loose = []
        if flush:
            self.audio_done = True
        pieces = self._emit(final=flush)
        parts = []
        if flush and self._audio_left():  # audio after the last step
            parts += self._audio_parts(self._audio_left())
        if self.ad.layout == "span" and (self.video or self.audio):
            parts.append(self._text([self.ad.ids["vision_end"]], at=self.span_start + self._span_end()))
        elif self.pending_end:
            parts.append(self._text([self.ad.ids["vision_end"]]))
        if parts:
            end = duration_s if duration_s is not None else self.duration_s
            pieces.append(self.ad._piece(parts, end if end is not None else max(self.video_s, self.audio_s)))
        return pieces

    def copy(self) -> VSalmonnChunker:
        other = copy.copy(self)
        other.steps = list(self.steps)
        return other

    # --- layout ------------------------------------------------------------------------------
    def _add_step(self, frames: list[np.ndarray]) -> None:
        tokens, deep, h, w = self.ad._encode_video(frames)
        self.steps = self.steps + [(tokens, deep, h, w)]

    def _boundary(self, step: int) -> int:
        """Audio tokens belonging to steps before `step` (the release's float32 arithmetic)."""
        return int((torch.tensor(step) * self.spg * self.ad.audio_rate).long())

    def _audio_left(self) -> int:
        """Encoded audio tokens not yet laid out."""
        return 0 if self.audio_pending is None else len(self.audio_pending)

    def _audio_ready(self) -> int:
        """Audio tokens encoded so far (laid out or pending)."""
        return self.audio_laid + self._audio_left()

    def _emit(self, final: bool) -> list[StreamPiece]:
        out = []
        if self.video:
            while self.steps:
                want = self._boundary(self.step_index + 1)
                if self.audio and not self.audio_done and self._audio_ready() < want:
                    break
                out.append(self._step_piece(*self.steps[0], n_audio=max(0, min(want, self._audio_ready())
                                                                          - self.audio_laid)))
                self.steps = self.steps[1:]
        elif self.audio and self._audio_left():  # audio only: every encoded token, in 2-s pieces
            size = max(1, round(2 * self.ad.audio_rate))
            while self._audio_left() >= size or (final and self._audio_left()):
                n = min(size, self._audio_left())
                end = (self.audio_laid + n) / self.ad.audio_rate
                out.append(self.ad._piece(self._audio_parts(n), min(end, self.audio_s)))
        return out

    def _step_piece(self, tokens, deep, h, w, n_audio: int) -> StreamPiece:
        ad, j = self.ad, self.step_index
        parts = []
        if ad.layout == "span":
            s = self.span_start
            t = int((torch.tensor(j) * self.spg * ad.tokens_per_second).long())
            parts.append((Modality.VISUAL, tokens, _grid_positions(s + t, s, s, h, w), ad._media_ids("video", len(tokens)),
                          deep))
            self.max_t, self.max_any = max(self.max_t, t), max(self.max_any, t, h - 1, w - 1)
        else:
            if self.pending_end:
                parts.append(self._text([ad.ids["vision_end"]]))
            first, last = j * ad.tps, min((j + 1) * ad.tps, self.n_frames) - 1
            stamp = f"<{(first + last) / 2 / self.fps:.1f} seconds>"
            parts.append(self._text(ad.tokenizer(stamp, add_special_tokens=False)["input_ids"]))
            parts.append(self._text([ad.ids["vision_start"]]))
            p = self.next_pos
            parts.append((Modality.VISUAL, tokens, _grid_positions(p, p, p, h, w), ad._media_ids("video", len(tokens)),
                          deep))
            self.next_pos = p + max(h, w)
            self.pending_end = True
        parts += self._audio_parts(n_audio)
        self.step_index += 1
        end = (j + 1) * float(self.spg)
        limit = self.duration_s
        return ad._piece(parts, min(end, limit) if limit is not None else end)

    def _audio_parts(self, n: int) -> list[tuple]:
        if n <= 0:
            return []
        k = torch.arange(self.audio_laid, self.audio_laid + n)
        emb, self.audio_pending = self.audio_pending[:n], self.audio_pending[n:]
        self.audio_laid += n
        if self.ad.layout == "span":
            s = self.span_start
            if self.video:
                pos = torch.stack([s + k, torch.full_like(k, s), s + k])
            else:
                pos = torch.stack([s + k, s + k, torch.full_like(k, s)])
            self.max_t, self.max_any = max(self.max_t, int(k[-1])), max(self.max_any, int(k[-1]))
        else:
            pos = torch.arange(self.next_pos, self.next_pos + n).expand(3, -1).clone()
            self.next_pos += n
        return [(Modality.AUDIO, emb, pos, self.ad._media_ids("audio", n), None)]

    def _span_end(self) -> int:
        """Offset from S where the span layout's `<|vision_end|>` goes."""
        if self.video and self.audio:
            return self.max_t + 1
        if self.video:
            return self.max_any + 1
        return self.audio_laid  # audio only

    def _text(self, ids: list[int], at: int | None = None) -> tuple:
        """Text tokens at consecutive positions from `at` (default: the next text position)."""
        start = self.next_pos if at is None else at
        piece = self.ad.text_piece(ids, start)
        self.next_pos = start + len(ids)
        return Modality.TEXT, piece.embeds, piece.positions, piece.token_ids, None


def _grid_positions(t: int, h0: int, w0: int, h: int, w: int) -> torch.Tensor:
    """(3, h·w) positions of one merged grid in row-major order: (t, h0 + row, w0 + col)."""
    rows = torch.arange(h).view(-1, 1).expand(h, w).flatten()
    cols = torch.arange(w).view(1, -1).expand(h, w).flatten()
    return torch.stack([torch.full_like(rows, t), h0 + rows, w0 + cols])


def _query_length(audio_config) -> int:
    q = getattr(audio_config, "qformer_config", None)
    q = q if isinstance(q, dict) else vars(q) if q is not None else {}
    return int(q.get("query_length", 1))
