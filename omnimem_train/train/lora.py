"""What is trained: LoRA on the LLM decoder's projections (peft), or full fine-tuning.

The LoRA target is a regex anchored to the language-model layers — `model.language_model.layers.N`
(Qwen2.5-Omni thinker, transformers 5.24) or `model.layers.N` (Llama/Qwen2) — because a plain
module-name list like ["q_proj", "k_proj", "v_proj"] would also hit the audio tower's attention.
Encoders and projectors stay frozen unless `train_encoders` names them (full fine-tuning only).
"""

from __future__ import annotations

import warnings

from torch import nn

from omnimem_train.errors import ConfigError

PROJECTIONS = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}
ENCODER_PREFIXES = ("model.audio_tower.", "model.visual.")
# `train_encoders` -> the tower parameters it unfreezes (each tower includes its projection into the LLM).
TRAINED_PREFIXES = {"none": (), "audio": ("model.audio_tower.",), "vision": ("model.visual.",),
                    "all": ENCODER_PREFIXES}


def lora_target_regex(names: str) -> str:
    """'q_proj,k_proj,v_proj' (or 'all') -> a regex peft full-matches against module names."""
    parsed = list(PROJECTIONS) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in parsed if n not in PROJECTIONS]
    if unknown or not parsed:
        raise ConfigError(f"lora_target: unknown projection {', '.join(unknown) or names!r}; "
                          f"known: {', '.join(PROJECTIONS)}, all")
    return rf"^model\.(language_model\.)?layers\.\d+\.(self_attn|mlp)\.({'|'.join(parsed)})$"


def prepare_model(model: nn.Module, cfg) -> nn.Module:
    """Return the model to train (peft-wrapped for LoRA) with requires_grad set per `cfg`."""
    if cfg.finetuning_type == "full":
        trained = TRAINED_PREFIXES[cfg.train_encoders]
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(ENCODER_PREFIXES) or name.startswith(trained))
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_regex(cfg.lora_target), bias="none")
    with warnings.catch_warnings():  # peft probes a deprecated transformers attribute
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)  # the config refuses trained towers with LoRA


def trainable_summary(model: nn.Module) -> str:
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {n_train:,} of {n_all:,} ({100 * n_train / max(n_all, 1):.3f}%)"
