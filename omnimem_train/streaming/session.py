"""A live audio-visual stream, fed as it arrives and questioned at any time (the Python session API).

    from omnimem_train.serving import open_session

    session = open_session("builtin:tiny-omni", memory={"scorer": "omnimem", "budget": 256})
    for frames, samples in camera:               # pieces of any size
        session.feed(frames=frames, audio=samples)
    for text in session.ask("What just happened?"):
        print(text, end="", flush=True)
    print(session.memory_report().line())
    session.close()

`feed` takes uint8 frames (N, H, W, 3) sampled at `media.video_fps` and float32 mono samples at
16 kHz, and pushes them through the adapter's chunker: the same one its offline `stream` pushes a
file through. As soon as a chunk (Qwen2.5-Omni: 2 s) is complete in every streamed modality it is
encoded and laid out (positions included) as the offline stream lays out the same media, and every group of
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

Limits: media adapters only (text-only LMs take text, not frames or samples), and no policy that
filters the stream before the model (`frame_drop` needs the stream's length in advance).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from omnimem_train.config.schema import MediaConfig
from omnimem_train.errors import ConfigError, MediaError, ModelError
from omnimem_train.media.features import LogMelExtractor, smart_resize
from omnimem_train.memory.policy import MemoryPolicy
from omnimem_train.memory.report import MemoryReport
from omnimem_train.models.base import Modality, StreamPiece
from omnimem_train.models.prompt import ANSWER_FORMATS, split_chat_prompt
from omnimem_train.streaming.answer import Answer, ask
from omnimem_train.streaming.engine import StreamingEngine, StreamState
from omnimem_train.streaming.grouping import Grouper


class StreamSession:
    """One live stream through a media adapter under a memory policy (see the module doc)."""

    def __init__(self, engine: StreamingEngine, media_cfg: MediaConfig | None = None,
                 *, system_prompt: str = "", answer_format: str = "letter", max_new_tokens: int = 32, video: bool = True,
                 audio: bool | None = None, audio_window_s: float = 30.0, stream_tokens: int | None = None):
        """engine: the adapter, memory policy and grouping to stream with (`StreamingEngine.from_config`).
        video / audio: which modalities the stream carries (fixed up front: the opening
        delimiters depend on it); audio=None means "unless media_cfg.audio is off".
        stream_tokens: the planned stream's audio+visual token count, required by a
        `memory.budget_fraction` budget (a live stream cannot count itself in advance); the budget
        is then resolved from it by the same function as everywhere else (`budgets.fraction_budget`)."""
        adapter, policy = engine.adapter, engine.policy
        if not adapter.takes_media:
            raise ModelError(f"{getattr(adapter, 'name', adapter)}: a live session needs an audio-visual "
                             "model; text-only LMs take text, not frames or samples")
        if type(policy).filter_stream is not MemoryPolicy.filter_stream:
            raise ConfigError(f"memory.scorer: {policy.name} drops stream tokens before the model, spaced by the "
                              "stream's length, which a live stream does not know; use an eviction method")
        if policy.needs_counts:
            if stream_tokens is None:
                raise ConfigError("memory.budget_fraction: a live session does not know its stream's length; pass "
                                  "stream_tokens=N (the planned audio+visual tokens) or set memory.budget")
            # The split between audio and visual does not enter a budget_fraction's size.
            policy.expect({Modality.VISUAL: int(stream_tokens), Modality.AUDIO: 0})
        if adapter.audio_window_s is not None and audio_window_s != adapter.audio_window_s:
            raise ConfigError(f"audio_window_s: {adapter.name} encodes audio in {adapter.audio_window_s:g}-s windows, "
                              f"got {audio_window_s:g}")
        media_cfg = media_cfg or MediaConfig()
        audio = media_cfg.audio != "off" if audio is None else audio
        if not (video or audio):
            raise ValueError("a session needs video, audio or both")
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {' | '.join(ANSWER_FORMATS)}, got {answer_format!r}")
        self.adapter, self.policy, self.media_cfg = adapter, policy, media_cfg
        self.system_prompt, self.answer_format, self.max_new_tokens = system_prompt, answer_format, max_new_tokens
        self.engine = engine
        self.state = engine.new_state()  # committed memory: what every later question builds on
        self.grouper = Grouper(engine.group_size, engine.group_seconds)
        prefix, _ = split_chat_prompt(adapter.tokenizer, system_prompt, "", answer_format)
        chunker = adapter.chunker(prefix, fps=media_cfg.video_fps, video=video, audio=audio)
        self.media = _Media(chunker, media_cfg, adapter.frame_multiple, adapter.feature_extractor() if audio else None,
                            audio_window_s)
        self.closed = False
        self.config, self.settings_note = None, None  # set by serving.open_session: the resolved Config, its note
        with torch.no_grad():  # a long system prompt may already fill a group
            self._commit(chunker.start())

    # --- feeding ---------------------------------------------------------------------------
    @torch.no_grad()
    def feed(self, frames: np.ndarray | None = None, audio: np.ndarray | None = None) -> None:
        """Buffer `frames` (uint8 (N, H, W, 3) or one (H, W, 3) frame, at media.video_fps; resized
        to the model's frame size if needed) and/or `audio` (float (N,) mono at 16 kHz), then stream
        every chunk and group they complete."""
        if self.closed:
            raise RuntimeError("the session is closed; start a new one")
        self._commit(self.media.push(frames, audio))

    @torch.no_grad()
    def close(self) -> MemoryReport:
        """End the stream: stream the incomplete tail and the closing delimiters for good. Later
        questions still work (over the final memory); feeding does not."""
        if not self.closed:
            self._commit(self.media.finish(flush=True))
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
        for piece in self.media.copy().finish(flush):
            for group in grouper.push(piece):
                engine.forward(state, group, evict=True)
        for group in grouper.flush():
            engine.forward(state, group, evict=True)
        return engine, state

    def ask(self, question: str, options: list[str] | None = None, max_new_tokens: int | None = None,
            flush: bool = True) -> Answer:
        """Answer over the stream so far (see `snapshot`), by `answer.ask`: without options, iterate
        the returned `Answer` for the greedy answer's text as it is generated; with options, each is
        scored by log-likelihood as written in `answer_format` and `Answer.choice` is the best letter."""
        engine, state = self.snapshot(flush)
        return ask(engine, state, question, options, system_prompt=self.system_prompt,
                   answer_format=self.answer_format, max_new_tokens=max_new_tokens or self.max_new_tokens)

    def memory_report(self) -> MemoryReport:
        """The committed memory (what the stream has left behind; a question's snapshot adds the
        pending tail on top, see `Answer.report`)."""
        return self.state.report()


# ---------------------------------------------------------------------------------------------
# what a feed gives -> what the adapter's chunker takes


class _Media:
    """The session's chunker with its inputs: frames brought to the model's frame size, samples cut
    into `audio_window_s` windows and featurized once a window is whole (as the offline path cuts
    them from the start of the audio)."""

    def __init__(self, chunker, media_cfg: MediaConfig, frame_multiple: int, mel: LogMelExtractor | None,
                 window_s: float):
        self.chunker, self.media_cfg, self.frame_multiple = chunker, media_cfg, frame_multiple
        self.mel, self.window_s = mel, window_s
        if mel is not None:
            self.window = round(window_s * mel.sampling_rate)
            mel.iter_windows(np.zeros(0, np.float32), window_s)  # checks window_s now, not at the first window
        self.size: tuple[int, int] | None = None  # (H, W) every frame is brought to (set by the first)
        self.n_samples = 0
        self.wave = np.zeros(0, np.float32)  # samples of the current, incomplete window

    def push(self, frames, samples) -> list[StreamPiece]:
        out = []
        if frames is not None:
            out += self.chunker.feed(frames=self._frames(frames))
        if samples is not None:
            if self.mel is None:
                raise MediaError("this session streams no audio (audio=False or media.audio=off); feed frames only")
            samples = np.asarray(samples)
            if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
                raise MediaError(f"audio must be float mono samples (N,) at 16 kHz, got {samples.dtype} {samples.shape}")
            self.wave = np.concatenate([self.wave, samples.astype(np.float32)])
            self.n_samples += len(samples)
            while len(self.wave) >= self.window:
                out += self.chunker.feed(audio=self.mel.log_mel(self.wave[: self.window], self.window_s))
                self.wave = self.wave[self.window:]
        return out

    def finish(self, flush: bool) -> list[StreamPiece]:
        """The end of the stream (see `OmniChunker.finish`); leaves this object spent."""
        out = []
        if flush and len(self.wave):
            out += self.chunker.feed(audio=self.mel.log_mel(self.wave, self.window_s))
        seconds = max(self.chunker.video_s, self.n_samples / self.mel.sampling_rate if self.mel else 0.0)
        return out + self.chunker.finish(flush, duration_s=seconds)

    def copy(self) -> _Media:
        other = copy.copy(self)  # arrays are only ever rebound, never written in place
        other.chunker = self.chunker.copy()
        return other

    def _frames(self, frames) -> np.ndarray:
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            return arr  # the chunker says what is wrong
        if not len(arr):
            return arr
        if self.size is None:
            h, w = arr.shape[1:3]
            try:
                self.size = smart_resize(h, w, self.frame_multiple, self.media_cfg.min_pixels, self.media_cfg.max_pixels)
            except ValueError as e:
                raise MediaError(f"unsupported frame size {w}x{h} ({e})") from e
        if tuple(arr.shape[1:3]) == self.size:
            return arr
        return np.stack([_resize(f, *self.size) for f in arr])


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (height, width, 3), bicubic as the file decoder does (it scales from the
    decoded YUV, so pixels can differ slightly from resizing RGB)."""
    import av

    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return rgb.to_ndarray(width=width, height=height, format="rgb24", interpolation="BICUBIC")
