"""Consolidate trained weights from DeepSpeed ZeRO-2/ZeRO-3 shards (`checkpoint-N/global_stepN/`).

Used when a checkpoint's `adapter_model.safetensors` (or full `model.safetensors`) is missing or holds
only empty ZeRO-3 placeholders. DeepSpeed's `zero_to_fp32` rebuilds the fp32 master weights from the
per-rank optimizer shards. It unpickles those shards with `weights_only=False`; here every `torch.load`
it makes is forced to `weights_only=True`, with only DeepSpeed's plain state classes allow-listed, so
a tampered shard cannot run code.

The Trainer wraps our model in `StreamingObjective`, so shard keys read
`inner.base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight` (LoRA) or
`inner.model.language_model...` (full); `consolidate` strips the `inner.` prefix.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from omnimem_train.errors import ModelError, first_line

WRAPPER_PREFIX = "inner."


def consolidate(zero_dir: Path, trainable_only: bool) -> dict[str, torch.Tensor]:
    """fp32 state dict (runtime module names, `inner.` removed) gathered from `zero_dir`'s shards.

    trainable_only: skip frozen parameters (LoRA: the base weights are read from the base model)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with weights_only_torch_load():
            state = get_fp32_state_dict_from_zero_checkpoint(
                str(zero_dir.parent), tag=zero_dir.name, exclude_frozen_parameters=trainable_only)
    except ModelError:
        raise
    except Exception as e:  # deepspeed raises ValueError, FileNotFoundError, UnpicklingError, RuntimeError...
        raise ModelError(f"{zero_dir}: cannot consolidate the DeepSpeed shards ({first_line(e)})") from e
    out = {k[len(WRAPPER_PREFIX):]: v for k, v in state.items() if k.startswith(WRAPPER_PREFIX)}
    if not out:
        raise ModelError(f"{zero_dir}: the DeepSpeed shards hold no '{WRAPPER_PREFIX}*' weights "
                         f"(not an omnimem-train checkpoint?)")
    return out


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Within the block, `torch.load` always unpickles with `weights_only=True` (DeepSpeed's
    ZeroStageEnum and loss-scaler classes allowed); the original is restored on exit."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    original = torch.load

    def safe_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if "unsupported global" in ln.lower()]
            what = lines[0] if lines else first_line(e)
            raise ModelError(f"{f}: refusing to unpickle a non-tensor object ({what})") from e

    torch.load = safe_load
    try:
        with torch.serialization.safe_globals([ZeroStageEnum, LossScaler, DynamicLossScaler]):
            yield
    finally:
        torch.load = original
