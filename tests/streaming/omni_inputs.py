"""Build the *full-sequence* inputs the official processor would produce for a tiny Omni sample,
independently of the adapter's streaming code, for exactness checks."""

from types import SimpleNamespace

import numpy as np
import torch
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor

from omnimem_train.media.features import audio_tokens_for_frames, patchify


def official_av_placeholder(tok, grid_thw, second_per_grid: float, n_audio_tokens: int) -> str:
    """The processor's own `replace_video_with_audio_token` layout string (audio_bos … audio_eos)."""
    fake = SimpleNamespace(
        audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>", video_token="<|VIDEO|>",
        audio_token="<|AUDIO|>", video_processor=SimpleNamespace(merge_size=2),
    )
    fake.get_chunked_index = lambda idx, n: Qwen2_5OmniProcessor.get_chunked_index(fake, idx, n)
    return Qwen2_5OmniProcessor.replace_video_with_audio_token(
        fake, {"video_grid_thw": grid_thw.numpy(), "video_second_per_grid": [second_per_grid]}, 0,
        {"num_audio_tokens": [n_audio_tokens]}, 0, position_id_per_seconds=25, seconds_per_chunk=2.0,
    )


def full_inputs(tok, prefix_ids, question_ids, frames=None, fps=2.0, mel=None):
    """-> (input_ids (1, N), model kwargs) for one full forward of the thinker."""
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    kw = {}
    if frames is not None:
        pixels, grid = patchify(np.asarray(frames))
        kw.update(pixel_values_videos=pixels, video_grid_thw=grid,
                  video_second_per_grid=torch.tensor([2.0 / fps]))
    if mel is not None:
        kw.update(input_features=torch.from_numpy(mel).unsqueeze(0),
                  feature_attention_mask=torch.ones(1, mel.shape[1], dtype=torch.long))
    if frames is not None and mel is not None:
        body = "<|vision_bos|>" + official_av_placeholder(
            tok, grid, 2.0 / fps, audio_tokens_for_frames(mel.shape[1])) + "<|vision_eos|>"
        kw["use_audio_in_video"] = True
    elif frames is not None:
        body = "<|vision_bos|>" + "<|VIDEO|>" * (int(kw["video_grid_thw"].prod()) // 4) + "<|vision_eos|>"
    else:
        body = "<|audio_bos|>" + "<|AUDIO|>" * audio_tokens_for_frames(mel.shape[1]) + "<|audio_eos|>"
    ids = prefix_ids + enc(body) + question_ids
    input_ids = torch.tensor([ids])
    kw["attention_mask"] = torch.ones_like(input_ids)
    return input_ids, kw
