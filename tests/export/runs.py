"""Trained folders made without training, saved the way `StreamingTrainer._save` saves them, a tiny
full Qwen2.5-Omni base, and reference logits computed independently of `omnimem_train.export`."""

from pathlib import Path

import torch

from omnimem_train.config import load_config, save_config

RECIPE = "recipes/train/tiny_cpu.yaml"


def save_like_trainer(folder: Path, base: str, finetuning_type: str = "lora", seed: int = 0, **memory) -> Path:
    """A run folder as `StreamingTrainer._save` writes it, without training: LoRA with random B
    (so the merge changes the weights), or the base's weights perturbed (full fine-tuning)."""
    from omnimem_train.config.load import memory_settings
    from omnimem_train.config.served import write_memory_settings
    from omnimem_train.models.load import load_adapter
    from omnimem_train.train.lora import prepare_model

    overrides = [f"model_name_or_path={base}", f"output_dir={folder}", f"finetuning_type={finetuning_type}"]
    cfg = load_config(RECIPE, overrides + [f"memory.{k}={v}" for k, v in memory.items()])
    adapter = load_adapter(base, "float32", "cpu")
    inner = prepare_model(adapter.model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in inner.named_parameters():
            if finetuning_type == "lora" and "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif finetuning_type == "full" and ".layers." in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    inner.save_pretrained(str(folder))
    adapter.tokenizer.save_pretrained(str(folder))
    save_config(cfg, folder)
    write_memory_settings(folder, memory_settings(cfg))  # budget_file, if any, left where it is
    return folder


def tiny_full_omni(folder: Path) -> Path:
    """Save a tiny Qwen2_5OmniForConditionalGeneration (the tiny-omni thinker, a 2-layer talker, a
    small DiT + BigVGAN token2wav; talker weights stored in bf16) with tokenizer, feature extractor
    and a speaker file."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration, WhisperFeatureExtractor

    from omnimem_train.models.builtin import build_tokenizer, tiny_omni_config

    tok = build_tokenizer()
    thinker = tiny_omni_config(tok)
    ids = {k: getattr(thinker, k) for k in ("audio_token_index", "image_token_index", "video_token_index",
                                            "vision_start_token_id", "vision_end_token_id",
                                            "audio_start_token_id", "audio_end_token_id")}
    talker = dict(vocab_size=64, embedding_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                  tts_codec_start_token_id=60, tts_codec_end_token_id=61, tts_codec_pad_token_id=62,
                  tts_codec_mask_token_id=63, tts_text_start_token_id=0, tts_text_end_token_id=1,
                  tts_text_pad_token_id=2, **ids)
    dit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ff_mult=1, emb_dim=16, head_dim=16,
               num_embeds=64, mel_dim=16, enc_emb_dim=16, enc_dim=16, enc_channels=[16, 16, 16, 16, 48],
               enc_attention_channels=8, enc_se_channels=8, look_ahead_layers=[1], look_backward_layers=[0])
    bigvgan = dict(mel_dim=16, upsample_initial_channel=16, resblock_kernel_sizes=[3],
                   resblock_dilation_sizes=[[1, 3, 5]], upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4])
    cfg = Qwen2_5OmniConfig(thinker_config=thinker.to_dict(), talker_config=talker,
                            token2wav_config=dict(dit_config=dit, bigvgan_config=bigvgan))
    torch.manual_seed(0)
    model = Qwen2_5OmniForConditionalGeneration(cfg).eval()
    model.talker.to(torch.bfloat16)  # a stored dtype other than the thinker's must survive the export
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(folder))
    torch.save({"Chelsie": {"cond": torch.zeros(16), "ref_mel": torch.zeros(4, 16), "bos_token": 60}},
               folder / "spk_dict.pt")
    return folder


def peft_reference(base: str, adapter_dir: Path):
    """The model adapter of `base` with `adapter_dir`'s LoRA attached by peft's own loader."""
    from peft import PeftModel

    from omnimem_train.models.load import load_adapter

    adapter = load_adapter(base, "float32", "cpu")
    PeftModel.from_pretrained(adapter.model, str(adapter_dir))
    return adapter


@torch.no_grad()
def text_logits(adapter) -> torch.Tensor:
    """(1, L, V) logits of the model's own HF forward on a fixed text (no streaming code involved)."""
    ids = adapter.tokenizer("What colour was the square? The answer is B.", return_tensors="pt")["input_ids"]
    return adapter.model(input_ids=ids).logits
