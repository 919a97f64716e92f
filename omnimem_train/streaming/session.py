"""A live audio-visual stream, fed as it arrives and questioned at any time (the Python session API).

    from omnimem_train.streaming.session import StreamSession

    session = StreamSession.from_pretrained("builtin:tiny-omni", memory={"scorer": "omnimem", "budget": 256})
    for frames, samples in camera:               # pieces of any size
        session.feed(frames=frames, audio=samples)
    for text in session.ask("What just happened?"):
        print(text, end="", flush=True)
    print(session.memory_report().line())
    session.close()

`feed` takes uint8 frames (N, H, W, 3) sampled at `media.video_fps` and float32 mono samples at
16 kHz. As soon as a 2-s chunk (Qwen2.5-Omni's `seconds_per_chunk`) is complete in every streamed
modality it is encoded and laid out exactly as `Qwen2_5OmniAdapter.stream` lays out the same media
(that chunk's video tokens, then its audio tokens; the same TMRoPE positions), and every group of
`group_size` tokens (or `group_seconds`) it completes runs through the `StreamingEngine` with
eviction. So after each `feed` the retained memory is within the policy's budget; only the tokens
of a not-yet-full group (fewer than `group_size`) and not-yet-complete media wait in buffers.

Asking never changes the stream. `ask` runs on a snapshot: a copy of the per-layer memory list
(memories are never modified in place, so this is cheap), of the pending group and of the policy.
On the snapshot it streams what is pending as the end of a stream would (with `flush=True`, the
default, also the incomplete last chunk and the incomplete audio window), then the closing
`<audio_eos><vision_eos>` the model saw in training, then the question. Later feeds continue the
original stream: positions come from media time, not from what was asked.

Audio features, and which equality holds. Whisper's log-mel is clamped per window (`max(x,
x.max() - 8)`) and framed with padding at window ends, so features depend on where windows are
cut. The offline path (`omnimem-train infer`, training) cuts 30-s windows from the start of the
audio; the session cuts the same windows (`audio_window_s`, default 30) and featurizes a window
once all its samples have arrived. Consequences:

- The committed memory after any sequence of feeds equals the one-shot stream's memory after the
  same groups, however the media was split into pieces (tested with 5 pieces vs 1, to the bit).
- `ask(flush=True)` over media M equals `answer_question` on M offline (the same MediaInput:
  frames, and the audio's log-mel in the same windows, e.g. `LogMelExtractor().iter_windows(wave)`)
  and `close()` leaves exactly the memory `engine.prefill(adapter.stream(M, prefix))` leaves.
- The cost: with audio, a chunk is committed only once its 30-s window is complete, so committed
  memory lags the feed by up to 30 s (video-only streams lag by nothing), and each flushing `ask`
  encodes that tail again on its snapshot (up to 30 s of media). `audio_window_s=2` (one chunk)
  removes the lag, at the price of features normalised per 2 s, which differ from what the model
  saw offline near quiet passages and at every window edge.

Limits: Qwen2.5-Omni adapters only (text-only LMs take text, not media), and no policy that
filters the stream before the model (`frame_drop` needs the stream's length in advance).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterator
from itertools import zip_longest

import numpy as np
import torch

from omnimem_train.config.schema import MediaConfig
from omnimem_train.errors import ConfigError, MediaError, ModelError
from omnimem_train.media.features import LogMelExtractor, smart_resize
from omnimem_train.memory.policy import MemoryPolicy
from omnimem_train.memory.report import MemoryReport
from omnimem_train.models.base import Modality, StreamPiece
from omnimem_train.models.prompt import (
    ANSWER_FORMATS,
    LETTERS,
    option_text,
    question_prompt,
    split_chat_prompt,
)
from omnimem_train.models.qwen2_5_omni import ChunkCounter, Qwen2_5OmniAdapter
from omnimem_train.streaming.answer import iter_generate, iter_text, score_options
from omnimem_train.streaming.engine import StreamingEngine, StreamState
from omnimem_train.streaming.grouping import Grouper

log = logging.getLogger(__name__)


class StreamSession:
    """One live stream through a Qwen2.5-Omni adapter under a memory policy (see the module doc)."""

    def __init__(self, adapter: Qwen2_5OmniAdapter, policy: MemoryPolicy, media_cfg: MediaConfig | None = None,
                 *, system_prompt: str = "", group_size: int | None = 1024, group_seconds: float | None = None,
                 answer_format: str = "letter", max_new_tokens: int = 32, video: bool = True,
                 audio: bool | None = None, audio_window_s: float = 30.0, stream_tokens: int | None = None):
        """video / audio: which modalities the stream carries (fixed up front: the opening
        delimiters depend on it); audio=None means "unless media_cfg.audio is off".
        stream_tokens: the planned stream's audio+visual token count, required by a
        `memory.budget_fraction` budget (a live stream cannot count itself in advance); the budget
        is then resolved from it by the same function as everywhere else (`budgets.fraction_budget`)."""
        if not isinstance(adapter, Qwen2_5OmniAdapter):
            raise ModelError(f"{getattr(adapter, 'name', adapter)}: a live session needs an audio-visual "
                             "(Qwen2.5-Omni) model; text-only LMs take text, not frames or samples")
        if type(policy).filter_stream is not MemoryPolicy.filter_stream:
            raise ConfigError(f"memory.scorer: {policy.name} drops stream tokens before the model, spaced by the "
                              "stream's length, which a live stream does not know; use an eviction method")
        if policy.needs_counts:
            if stream_tokens is None:
                raise ConfigError("memory.budget_fraction: a live session does not know its stream's length; pass "
                                  "stream_tokens=N (the planned audio+visual tokens) or set memory.budget")
            # The split between audio and visual does not enter a budget_fraction's size.
            policy.expect({Modality.VISUAL: int(stream_tokens), Modality.AUDIO: 0})
        media_cfg = media_cfg or MediaConfig()
        audio = media_cfg.audio != "off" if audio is None else audio
        if not (video or audio):
            raise ValueError("a session needs video, audio or both")
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {' | '.join(ANSWER_FORMATS)}, got {answer_format!r}")
        self.adapter, self.policy, self.media_cfg = adapter, policy, media_cfg
        self.system_prompt, self.answer_format, self.max_new_tokens = system_prompt, answer_format, max_new_tokens
        self.engine = StreamingEngine(adapter, policy, group_size, group_seconds)
        self.state = self.engine.new_state()  # committed memory: what every later question builds on
        self.grouper = Grouper(group_size, group_seconds)
        prefix, _ = split_chat_prompt(adapter.tokenizer, system_prompt, "", answer_format)
        mel = LogMelExtractor.from_dir(adapter.model_dir) if getattr(adapter, "model_dir", None) else LogMelExtractor()
        self.chunks = _ChunkBuilder(adapter, media_cfg, prefix, video, audio, mel, audio_window_s)
        self.closed = False
        self.config, self.settings_note = None, None  # set by from_pretrained: the resolved Config, its note
        with torch.no_grad():  # a long system prompt may already fill a group
            self._commit(self.chunks.start())

    @classmethod
    def from_pretrained(cls, model: str, *, video: bool = True, audio: bool | None = None,
                        audio_window_s: float = 30.0, stream_tokens: int | None = None, **settings) -> StreamSession:
        """Load `model` (a model directory or builtin:<name>) with the memory settings saved next to
        it (as `omnimem-train infer` does), then `settings` on top: config keys as a recipe would
        set them, e.g. `memory={"scorer": "omnimem", "budget": 256}, device="cpu"`."""
        from omnimem_train.config.load import load_serving_config
        from omnimem_train.memory.registry import build_policy
        from omnimem_train.models.load import load_adapter

        cfg, note = load_serving_config(settings={"model_name_or_path": model, **settings})
        if note:
            log.info(note)
        torch.manual_seed(cfg.seed)
        adapter = load_adapter(cfg.model_name_or_path, cfg.dtype, cfg.device, cfg.attn_implementation,
                               cfg.trust_remote_code)
        policy = build_policy(cfg.memory, len(adapter.decoder_layers))
        gen = cfg.generation
        session = cls(adapter, policy, cfg.media, system_prompt=gen.system_prompt, group_size=cfg.memory.group_size,
                      group_seconds=cfg.memory.group_seconds, answer_format=gen.answer_format,
                      max_new_tokens=gen.max_new_tokens, video=video, audio=audio, audio_window_s=audio_window_s,
                      stream_tokens=stream_tokens)
        session.config, session.settings_note = cfg, note
        return session

    # --- feeding ---------------------------------------------------------------------------
    @torch.no_grad()
    def feed(self, frames: np.ndarray | None = None, audio: np.ndarray | None = None) -> None:
        """Buffer `frames` (uint8 (N, H, W, 3) or one (H, W, 3) frame, at media.video_fps; resized
        to the model's frame size if needed) and/or `audio` (float (N,) mono at 16 kHz), then stream
        every chunk and group they complete."""
        if self.closed:
            raise RuntimeError("the session is closed; start a new one")
        self._commit(self.chunks.push(frames, audio))

    @torch.no_grad()
    def close(self) -> MemoryReport:
        """End the stream: stream the incomplete tail and the closing delimiters for good. Later
        questions still work (over the final memory); feeding does not."""
        if not self.closed:
            self._commit(self.chunks.finish(flush=True))
            for group in self.grouper.flush():
                self.engine.forward(self.state, group, evict=True)
            self.closed = True
        return self.memory_report()

    def _commit(self, pieces: list[StreamPiece]) -> None:
        for piece in pieces:
            for group in self.grouper.push(piece):
                self.engine.forward(self.state, group, evict=True)

    # --- asking ----------------------------------------------------------------------------
    @torch.no_grad()
    def snapshot(self, flush: bool = True) -> tuple[StreamingEngine, StreamState]:
        """The memory a question asked now runs over, as an engine + state of its own: the stream so
        far ended as a stream ends (pending group, with `flush` the incomplete media too, then the
        closing delimiters). Nothing of the session changes."""
        state = dataclasses.replace(self.state, layers=list(self.state.layers), seen=dict(self.state.seen))
        engine = StreamingEngine(self.adapter, copy.deepcopy(self.policy), self.engine.group_size,
                                 self.engine.group_seconds)
        if self.closed:
            return engine, state
        grouper = self.grouper.copy()
        for piece in self.chunks.copy().finish(flush):
            for group in grouper.push(piece):
                engine.forward(state, group, evict=True)
        for group in grouper.flush():
            engine.forward(state, group, evict=True)
        return engine, state

    @torch.no_grad()
    def ask(self, question: str, options: list[str] | None = None, max_new_tokens: int | None = None,
            flush: bool = True) -> Answer:
        """Answer over the stream so far (see `snapshot`). Without options: iterate the returned
        `Answer` for the greedy answer's text as it is generated. With options: each is scored by
        log-likelihood as written in `answer_format`; `Answer.choice` is the best letter."""
        engine, state = self.snapshot(flush)
        report = state.report()
        tok = self.adapter.tokenizer
        _, q_ids = question_prompt(tok, self.system_prompt, question, options, self.answer_format)
        if options:
            opts = [tok(option_text(options, i, self.answer_format), add_special_tokens=False)["input_ids"]
                    for i in range(len(options))]
            scores = score_options(engine, state, q_ids, opts)
            best = max(range(len(options)), key=scores.__getitem__)
            return Answer(iter([f"{LETTERS[best]}. {options[best]}"]), report, scores, LETTERS[best])
        ids = iter_generate(engine, state, q_ids, max_new_tokens or self.max_new_tokens, self.adapter.eos_token_ids)
        return Answer(iter_text(tok, ids), report)

    def memory_report(self) -> MemoryReport:
        """The committed memory (what the stream has left behind; a question's snapshot adds the
        pending tail on top, see `Answer.report`)."""
        return self.state.report()


class Answer:
    """What `StreamSession.ask` returns. Iterate it for the answer's text pieces as they are
    generated (decoding runs while you iterate; iterating again replays them); `text` is the whole
    answer. `report`: the memory the question ran over. For multiple choice, `option_scores` (one
    log-likelihood per option) and `choice` (its letter)."""

    def __init__(self, pieces: Iterator[str], report: MemoryReport, option_scores: list[float] | None = None,
                 choice: str | None = None):
        self._source, self._pieces = pieces, []
        self.report, self.option_scores, self.choice = report, option_scores, choice

    def __iter__(self) -> Iterator[str]:
        yield from list(self._pieces)
        for piece in self._source:
            self._pieces.append(piece)
            yield piece

    @property
    def text(self) -> str:
        return "".join(self)


# ---------------------------------------------------------------------------------------------
# media -> stream pieces, incrementally


class _ChunkBuilder:
    """Buffered frames and samples -> the stream pieces `Qwen2_5OmniAdapter.stream` would yield for
    the same media: the text prefix and opening delimiters, one piece per 2-s chunk (its video part,
    then its audio part) once the chunk is complete in every streamed modality, and at the end the
    incomplete last chunks and the closing delimiters. Uses the adapter's own encoders and position
    helpers, so layout and positions cannot drift from the offline path."""

    def __init__(self, ad: Qwen2_5OmniAdapter, media_cfg: MediaConfig, prefix: list[int], video: bool,
                 audio: bool, mel: LogMelExtractor, audio_window_s: float):
        self.ad, self.prefix = ad, prefix
        self.st = len(prefix) + 1  # first media position: after the prefix and the shared-position BOS pair
        self.video = _VideoChunks(ad, media_cfg, self.st) if video else None
        self.audio = _AudioChunks(ad, mel, audio_window_s, self.st) if audio else None
        self.v_parts: list[StreamPiece] = []  # complete chunks of one modality waiting for the other
        self.a_parts: list[StreamPiece] = []
        self.n_chunks = 0
        self.last_max = self.st - 1  # max position of the last appended block (where EOS goes)

    def start(self) -> list[StreamPiece]:
        pieces = [self.ad.text_piece(self.prefix, 0)] if self.prefix else []
        names = ["vision_bos", "audio_bos"] if self.video and self.audio else (
            ["vision_bos"] if self.video else ["audio_bos"])
        return pieces + [self.ad._specials(names, self.st - 1)]

    def push(self, frames, samples) -> list[StreamPiece]:
        if frames is not None:
            if self.video is None:
                raise MediaError("this session streams no video (video=False); feed audio only")
            self.v_parts += self.video.push(frames)
        if samples is not None:
            if self.audio is None:
                raise MediaError("this session streams no audio (audio=False or media.audio=off); feed frames only")
            self.a_parts += self.audio.push(samples)
        return self._pair(final=False)

    def finish(self, flush: bool) -> list[StreamPiece]:
        """The end of the stream: with `flush`, the incomplete media as the last chunks; then the
        closing delimiters. Leaves this builder spent (call it on a `copy` to peek)."""
        if flush:
            self.v_parts += self.video.finish() if self.video else []
            self.a_parts += self.audio.finish() if self.audio else []
        pieces = self._pair(final=flush)
        names = ["audio_eos", "vision_eos"] if self.video and self.audio else (
            ["vision_eos"] if self.video else ["audio_eos"])
        return pieces + [self.ad._specials(names, self.last_max + 1)]

    def copy(self) -> _ChunkBuilder:
        other = copy.copy(self)
        other.v_parts, other.a_parts = list(self.v_parts), list(self.a_parts)
        other.video = self.video.copy() if self.video else None
        other.audio = self.audio.copy() if self.audio else None
        return other

    def duration_s(self) -> float:
        """Media fed so far, in seconds (the longer modality)."""
        v = self.video.n_frames / self.video.media_cfg.video_fps if self.video else 0.0
        a = self.audio.n_samples / self.audio.mel.sampling_rate if self.audio else 0.0
        return max(v, a)

    def _pair(self, final: bool) -> list[StreamPiece]:
        """Pieces for chunks complete in every streamed modality (`final`: all, as zip_longest does)."""
        if final:
            n = max(len(self.v_parts), len(self.a_parts))
        elif self.video and self.audio:
            n = min(len(self.v_parts), len(self.a_parts))
        else:
            n = len(self.v_parts) + len(self.a_parts)
        out = []
        for v, a in zip_longest(self.v_parts[:n], self.a_parts[:n]):
            parts = [p for p in (v, a) if p is not None]
            self.last_max = int(parts[-1].positions.max())
            piece = StreamPiece.cat(parts)
            self.n_chunks += 1
            end = self.n_chunks * self.ad.seconds_per_chunk
            # As the adapter clips at the media's duration (only an incomplete last chunk is shorter).
            piece.end_s = min(end, self.duration_s()) if final else end
            out.append(piece)
        self.v_parts, self.a_parts = self.v_parts[n:], self.a_parts[n:]
        return out


class _VideoChunks:
    """Frames -> the video part of each 2-s chunk, cut as `Qwen2_5OmniAdapter._video_chunks` cuts
    them (temporal patches of `temporal_patch_size` frames, chunk by TMRoPE time), but emitted as
    soon as the chunk's last patch is in rather than when the next patch arrives."""

    def __init__(self, ad: Qwen2_5OmniAdapter, media_cfg: MediaConfig, st: int):
        self.ad, self.st, self.media_cfg = ad, st, media_cfg
        self.second_per_grid = torch.tensor(ad.tps / media_cfg.video_fps, dtype=torch.float32)
        self.counter = ChunkCounter(ad.chunk_len)
        self.size: tuple[int, int] | None = None  # (H, W) every frame is brought to (set by the first)
        self.n_frames = 0
        self.grid = 0  # index of the next temporal patch
        self.loose: list[np.ndarray] = []  # frames of the next, incomplete patch
        self.chunk, self.chunk_frames, self.t_ids = 0, [], []

    def push(self, frames) -> list[StreamPiece]:
        out = []
        for frame in self._frames(frames):
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

    def copy(self) -> _VideoChunks:
        other = copy.copy(self)
        other.counter = copy.copy(self.counter)
        return other  # lists are only ever rebound, never appended to in place

    def _t_idx(self, grid: int) -> int:
        # Same float32 arithmetic as the adapter (and get_rope_index), so truncation matches.
        return int((torch.tensor(grid) * self.second_per_grid * self.ad.pos_per_s).long())

    def _add_patch(self, frames: list[np.ndarray]) -> list[StreamPiece]:
        out = []
        t = self._t_idx(self.grid)
        c = self.counter(t)
        if c != self.chunk and self.chunk_frames:
            out.append(self._emit())
        self.chunk = c
        self.chunk_frames, self.t_ids = self.chunk_frames + frames, self.t_ids + [t]
        self.grid += 1
        # The chunk is complete when the next patch would open a new one (the counter's own rule).
        if self._t_idx(self.grid) >= (self.counter.current + 1) * self.ad.chunk_len:
            out.append(self._emit())
        return out

    def _emit(self) -> StreamPiece:
        piece = self.ad._encode_video(self.chunk_frames, self.t_ids, self.st)
        self.chunk_frames, self.t_ids = [], []
        return piece

    def _frames(self, frames) -> list[np.ndarray]:
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise MediaError(f"frames must be uint8 RGB (N, H, W, 3) or (H, W, 3), got {arr.dtype} {arr.shape}")
        if not len(arr):
            return []
        self.n_frames += len(arr)
        if self.size is None:
            h, w = arr.shape[1:3]
            try:
                self.size = smart_resize(h, w, 28, self.media_cfg.min_pixels, self.media_cfg.max_pixels)
            except ValueError as e:
                raise MediaError(f"unsupported frame size {w}x{h} ({e})") from e
        if tuple(arr.shape[1:3]) == self.size:
            return list(arr)
        return [_resize(f, *self.size) for f in arr]


class _AudioChunks:
    """Samples -> log-mel windows -> audio-tower blocks -> the audio part of each 2-s chunk, cut as
    `Qwen2_5OmniAdapter._mel_blocks` / `_audio_chunks` cut the same windows."""

    def __init__(self, ad: Qwen2_5OmniAdapter, mel: LogMelExtractor, window_s: float, st: int):
        self.ad, self.mel, self.window_s, self.st = ad, mel, window_s, st
        self.window = round(window_s * mel.sampling_rate)
        mel.iter_windows(np.zeros(0, np.float32), window_s)  # checks window_s now, not at the first window
        self.n_samples = 0
        self.wave = np.zeros(0, np.float32)  # samples of the current, incomplete window
        self.frames = np.zeros((mel.n_mels, 0), np.float32)  # mel frames not yet in a whole block
        self.embeds = torch.zeros(0, ad.embed_tokens.embedding_dim, device=ad.device, dtype=ad.dtype)
        self.emitted = 0  # audio tokens already in chunks

    def push(self, samples) -> list[StreamPiece]:
        samples = np.asarray(samples)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            raise MediaError(f"audio must be float mono samples (N,) at 16 kHz, got {samples.dtype} {samples.shape}")
        self.wave = np.concatenate([self.wave, samples.astype(np.float32)])
        self.n_samples += len(samples)
        out = []
        while len(self.wave) >= self.window:
            out += self._add_mel(self.mel.log_mel(self.wave[: self.window], self.window_s))
            self.wave = self.wave[self.window:]
        return out

    def finish(self) -> list[StreamPiece]:
        out = self._add_mel(self.mel.log_mel(self.wave, self.window_s)) if len(self.wave) else []
        if self.frames.shape[1]:
            out += self._add_block(self.frames)  # the short last block
        if len(self.embeds):
            out.append(self.ad._audio_piece(self.embeds, self.st + self.emitted))
        self.wave, self.frames, self.embeds = self.wave[:0], self.frames[:, :0], self.embeds[:0]
        return out

    def copy(self) -> _AudioChunks:
        return copy.copy(self)  # arrays and tensors are only ever rebound, never written in place

    def _add_mel(self, feats: np.ndarray) -> list[StreamPiece]:
        self.frames = np.concatenate([self.frames, feats], axis=1)
        block = self.ad.audio_window
        cut = (self.frames.shape[1] // block) * block
        out = []
        for s in range(0, cut, block):
            out += self._add_block(self.frames[:, s: s + block])
        self.frames = self.frames[:, cut:]
        return out

    def _add_block(self, block: np.ndarray) -> list[StreamPiece]:
        self.embeds = torch.cat([self.embeds, self.ad._encode_audio(np.ascontiguousarray(block))])
        out, n = [], self.ad.chunk_len
        while len(self.embeds) >= n:
            out.append(self.ad._audio_piece(self.embeds[:n], self.st + self.emitted))
            self.embeds, self.emitted = self.embeds[n:], self.emitted + n
        return out


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (height, width, 3), bicubic as the file decoder does (it scales from the
    decoded YUV, so pixels can differ slightly from resizing RGB)."""
    import av

    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return rgb.to_ndarray(width=width, height=height, format="rgb24", interpolation="BICUBIC")
