"""Put the trained weights into the base model: attach + merge a LoRA adapter, or load full weights.

`attach_lora` injects the adapter's LoRA layers into the base model in place (the model adapter that
wraps it then computes base + LoRA, the reference for verification), after checking every tensor's
name and shape against what the base model expects, so an adapter from a different base fails naming
its file. `merge_lora` folds W + (alpha/r)·B·A into each target Linear and removes the LoRA layers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from omnimem_train.errors import ModelError, first_line
from omnimem_train.export.source import ADAPTER_CONFIG, ADAPTER_FILE, TrainedSource
from omnimem_train.export.zero import consolidate


def trained_tensors(source: TrainedSource) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, where it came from): the safetensors file(s) of `source`, or its DeepSpeed shards.

    LoRA from a file: peft's saved names (`base_model.model.<module>.lora_A.weight`, A: (r, in),
    B: (out, r)); LoRA from shards: runtime names (`...lora_A.default.weight`); full: runtime names."""
    if source.zero_dir is not None:
        return consolidate(source.zero_dir, trainable_only=True), str(source.zero_dir)
    from safetensors.torch import load_file

    state = {}
    for f in source.weights:
        try:
            state.update(load_file(str(f)))
        except Exception as e:  # SafetensorError/OSError: the header was fine, the data is not
            raise ModelError(f"{f}: corrupted or unreadable safetensors file ({first_line(e)})") from e
    return state, ", ".join(str(f) for f in source.weights)


def attach_lora(model: nn.Module, source: TrainedSource) -> nn.Module:
    """Inject `source`'s LoRA adapter into `model` (in place); returns the PeftModel wrapping it."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    cfg_file = source.folder / ADAPTER_CONFIG
    try:
        lora = LoraConfig.from_pretrained(str(source.folder))
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise ModelError(f"{cfg_file}: unreadable LoRA config ({first_line(e)})") from e
    lora.inference_mode = True
    state, origin = trained_tensors(source)
    with warnings.catch_warnings():  # peft probes a deprecated transformers attribute
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            peft_model = get_peft_model(model, lora)
        except ValueError as e:  # "Target modules ... not found in the base model"
            raise ModelError(f"{cfg_file}: does not fit base model {source.base} ({first_line(e)})") from e
    if source.zero_dir is not None:  # runtime names -> peft's saved names (adapter name dropped)
        state = get_peft_model_state_dict(peft_model, state_dict=state)
    _check_against(get_peft_model_state_dict(peft_model), state,
                   source.folder / ADAPTER_FILE if source.zero_dir is None else Path(origin), source.base)
    result = set_peft_model_state_dict(peft_model, state)
    if result.unexpected_keys:
        raise ModelError(f"{origin}: tensor {result.unexpected_keys[0]} was not used by base model {source.base}")
    return peft_model


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold the LoRA weights into the base Linears; returns the plain base model (same object)."""
    return peft_model.merge_and_unload(safe_merge=True)


def load_full_weights(model: nn.Module, source: TrainedSource) -> int:
    """Copy a full fine-tune's weights into `model` (the base structure); returns how many tensors.

    From safetensors the run folder is loaded with the base model's class (so the checkpoint's key
    conversions apply), from DeepSpeed shards the trainable tensors are copied by runtime name (the
    frozen ones, e.g. the encoders, equal the base's)."""
    if source.zero_dir is not None:
        state, origin = consolidate(source.zero_dir, trainable_only=True), source.zero_dir
    else:
        state, origin = _from_pretrained_state(type(model), source), source.weights[0]
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ModelError(f"{origin}: tensor {unexpected[0]} does not exist in base model {source.base} "
                         f"(trained from a different base?)")
    _check_shapes(expected, state, origin, source.base)
    if source.zero_dir is None:
        missing = [k for k in expected if k not in state]
        if missing:
            raise ModelError(f"{origin}: tensor {missing[0]} is missing")
    model.load_state_dict(state, strict=False)
    return len(state)


def _from_pretrained_state(cls, source: TrainedSource) -> dict[str, torch.Tensor]:
    try:
        trained = cls.from_pretrained(str(source.folder), dtype=torch.float32, local_files_only=True,
                                      use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{source.folder}: cannot load the full fine-tuned weights ({first_line(e)})") from e
    return trained.state_dict()


def _check_against(expected: dict, state: dict, origin: Path, base: str) -> None:
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(f"{origin}: has no tensor {missing[0]} that base model {base} needs "
                         f"(an adapter for a different base?)")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ModelError(f"{origin}: tensor {unexpected[0]} has no place in base model {base} "
                         f"(an adapter for a different base?)")
    _check_shapes(expected, state, origin, base)


def _check_shapes(expected: dict, state: dict, origin, base: str) -> None:
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelError(f"{origin}: tensor {k} has shape {tuple(v.shape)}, base model {base} expects "
                             f"{tuple(expected[k].shape)} (trained on a different base model?)")
