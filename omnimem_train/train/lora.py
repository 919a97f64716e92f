"""What is trained: LoRA on the LLM decoder's projections (peft), or full fine-tuning.

The LoRA target is a regex anchored to the language-model layers — `model.language_model.layers.N`
(Qwen2.5-Omni thinker and the video-SALMONN 2+ family, transformers 5.24) or `model.layers.N`
(Llama/Qwen2) — because a plain module-name list like ["q_proj", "k_proj", "v_proj"] would also hit
the audio tower's attention (Omni's `model.audio_tower`, the family's Whisper at `audio.layers.N` /
`model.audio.layers.N`).
Encoders and projectors stay frozen unless `train_encoders` names them (full fine-tuning), or, with
LoRA, `lora_modules_to_save` names whole modules to train next to the adapter (peft's
`modules_to_save`: a trained copy of each is saved in the adapter file), e.g. the family's Q-Former
and audio projection (`qformer`, `audio_proj`). peft copies modules only: a bare parameter such as
the Q-Former's learned queries `q_tokens` cannot be named there, and trains with full fine-tuning
(`train_encoders: audio`) instead.
"""

from __future__ import annotations

import re
import warnings

from torch import nn

from omnimem_train.errors import ConfigError

PROJECTIONS = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}
# The towers' parameter names: Qwen2.5-Omni (`model.audio_tower.`, `model.visual.`), video-SALMONN 2+
# (Qwen2.5-VL: `audio.`, `model.visual.`; `visual.` is its saved name) and the OmniMem Qwen3-VL
# release (`model.audio.`, `model.visual.`).
AUDIO_PREFIXES = ("model.audio_tower.", "audio.", "model.audio.")
VISION_PREFIXES = ("model.visual.", "visual.")
ENCODER_PREFIXES = AUDIO_PREFIXES + VISION_PREFIXES
# `train_encoders` -> the tower parameters it unfreezes (each tower includes its projection into the LLM).
TRAINED_PREFIXES = {"none": (), "audio": AUDIO_PREFIXES, "vision": VISION_PREFIXES, "all": ENCODER_PREFIXES}
_PEFT_PREFIX = "base_model.model."  # what get_peft_model puts before the base model's names


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

    saved = modules_to_save(model, cfg)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_regex(cfg.lora_target), bias="none", modules_to_save=saved or None)
    with warnings.catch_warnings():  # peft probes a deprecated transformers attribute
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)  # the config refuses trained towers with LoRA


def modules_to_save(model: nn.Module, cfg) -> list[str]:
    """`cfg.lora_modules_to_save`, checked against `model` (before peft wraps anything): peft trains
    every module whose name ends with a given name, so each must match at least one module, and only
    as whole dotted names; none may be a module list (peft copies single modules) or be or hold a LoRA
    target; with the encoder cache on, none may be in the vision tower. ConfigError (one line)
    otherwise."""
    names = list(getattr(cfg, "lora_modules_to_save", None) or ())
    by_name = dict(model.named_modules())
    modules = list(by_name)
    lora = re.compile(lora_target_regex(cfg.lora_target))
    where = getattr(cfg, "model_name_or_path", "the model")
    for name in names:
        hits = [m for m in modules if m.endswith(name)]  # peft's rule (`_set_trainable`)
        if not hits:
            param = next((p for p, _ in model.named_parameters() if p == name or p.endswith("." + name)), None)
            if param is not None:
                raise ConfigError(f"lora_modules_to_save: {name!r} is a parameter ({param}), not a module: peft's "
                                  f"modules_to_save trains whole modules (train it with finetuning_type: full)")
            raise ConfigError(f"lora_modules_to_save: no module of {where} is named {name!r} or ends with '.{name}'")
        partial = [m for m in hits if m != name and not m.endswith("." + name)]
        if partial:
            raise ConfigError(f"lora_modules_to_save: {name!r} matches {partial[0]} only by the end of its name "
                              f"(peft would train it too); give whole module names")
        containers = [m for m in hits if isinstance(by_name[m], (nn.ModuleList, nn.ModuleDict))]
        if containers:
            raise ConfigError(f"lora_modules_to_save: {name!r} names {containers[0]}, a module list peft cannot copy; "
                              f"name its items (e.g. {containers[0].rsplit('.', 1)[-1]}.0)")
        clash = [t for t in modules if lora.fullmatch(t) and any(t == m or t.startswith(m + ".") for m in hits)]
        if clash:
            raise ConfigError(f"lora_modules_to_save: {name!r} names {clash[0]}, a LoRA target (or a module "
                              f"holding one); lora_target trains it already")
        vision = [m for m in hits if (m + ".").startswith(VISION_PREFIXES)]
        if vision and getattr(cfg, "cache_encoder_outputs", False):
            raise ConfigError(f"lora_modules_to_save: {name!r} names {vision[0]} in the vision tower; the encoder "
                              f"cache needs a frozen vision tower (set cache_encoder_outputs: false)")
    return names


def trained_towers(model: nn.Module) -> str:
    """Which towers have trainable parameters (after `prepare_model`): none | audio | vision | all,
    the value `train_encoders` would have (LoRA's `modules_to_save` may name tower modules)."""
    names = [n.removeprefix(_PEFT_PREFIX) for n, p in model.named_parameters() if p.requires_grad]
    audio = any(n.startswith(AUDIO_PREFIXES) for n in names)
    vision = any(n.startswith(VISION_PREFIXES) for n in names)
    return {(False, False): "none", (True, False): "audio", (False, True): "vision", (True, True): "all"}[audio, vision]


def frozen_tower_parts(model: nn.Module) -> list[nn.Module]:
    """The largest modules of `model`'s encoder towers whose parameters are all frozen (a whole frozen
    tower, or e.g. the Whisper layers of a bridge whose Q-Former trains). They run in eval mode while
    training (no dropout, e.g. in a frozen Q-Former), so their outputs are constants, as the encoder
    cache assumes; a trained part keeps its dropout."""
    roots = {p.rstrip(".") for p in ENCODER_PREFIXES}
    found, stack = [], [m for n, m in model.named_modules() if n in roots]
    while stack:
        module = stack.pop()
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(module)
        elif params:
            stack += list(module.children())
    return found


def trainable_summary(model: nn.Module) -> str:
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {n_train:,} of {n_all:,} ({100 * n_train / max(n_all, 1):.3f}%)"
