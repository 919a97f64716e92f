"""Training the video-SALMONN 2+ family (both built-ins): LoRA wraps the LLM's q/k/v only (never the
Whisper, Q-Former or vision projections), `lora_modules_to_save` trains the Q-Former and the audio
projection next to it, full fine-tuning keeps the family's frozen towers frozen, the packed
full-context loss equals the streaming loss at an unlimited budget (DeepStack included), and both
built-ins train on the 56x56 tiny manifest with and without compression."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omnimem_train.config import load_config
from omnimem_train.config.schema import Config, MediaConfig
from omnimem_train.errors import ConfigError
from omnimem_train.media.features import LogMelExtractor
from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.load import load_adapter
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.streaming.answer import answer_loss
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.inputs import media_input
from omnimem_train.train.full_context import Sequence, full_context_loss
from omnimem_train.train.lora import prepare_model

BUILTINS = ["tiny-vsalmonn2plus", "tiny-omnimem-qwen3vl"]
RECIPE = {"tiny-vsalmonn2plus": "recipes/train/tiny_vsalmonn2plus.yaml",
          "tiny-omnimem-qwen3vl": "recipes/train/tiny_omnimem_qwen3vl.yaml"}
FPS, SR = 2.0, 16000
QUESTIONS = [("What colour?\nA. red\nB. blue", "B. blue"),
             ("Which shape is shown at the very end of the clip?", "a small square"),
             ("Count?", "3")]


def _adapter(name):
    ad = load_adapter(f"builtin:{name}", device="cpu")
    ad.model.eval()  # no dropout (the Q-Former has some): both losses see the same network
    return ad


def _media(ad, seed, n_frames, audio_s):
    """Seeded frames (sides multiples of the adapter's `frame_multiple`) and a tone's log-mel windows."""
    rng = np.random.default_rng(seed)
    fm = ad.frame_multiple
    frames = rng.integers(0, 256, (n_frames, 2 * fm, 2 * fm, 3), dtype=np.uint8)
    t = np.arange(int(SR * audio_s)) / SR
    wave = (0.3 * np.sin(2 * np.pi * (300 + 100 * seed) * t)).astype(np.float32)
    return MediaInput(frames=iter(list(frames)), fps=FPS, mel_windows=LogMelExtractor().iter_windows(wave),
                      duration_s=max(n_frames / FPS, audio_s))


def _lora_names(model) -> set[str]:
    """Names (in the base model) of the modules peft wrapped with LoRA."""
    return {n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")}


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("target", ["q_proj,k_proj,v_proj", "all"])
def test_lora_wraps_only_the_llm_decoder(name, target):
    ad = _adapter(name)
    all_names = {n for n, _ in ad.model.named_modules()}
    bridge = "audio" if "audio.layers.0.self_attn.q_proj" in all_names else "model.audio"
    # The towers have projections a plain ["q_proj", "k_proj", "v_proj"] list would also hit.
    assert f"{bridge}.layers.0.self_attn.q_proj" in all_names and f"{bridge}.audio_proj" in all_names
    assert any(n.startswith(f"{bridge}.qformer.") and n.endswith(".query") for n in all_names)
    assert any(n.startswith("model.visual.blocks.0.attn.") for n in all_names)
    peft_model = prepare_model(ad.model, Config(lora_target=target, lora_dropout=0.0))
    projections = ("q_proj", "k_proj", "v_proj") if target != "all" else (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    want = {f"model.language_model.layers.{i}.{'self_attn' if p.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{p}"
            for i in range(len(ad.decoder_layers)) for p in projections}
    assert _lora_names(peft_model) == want
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model.layers." in n for n in trainable)


@pytest.mark.parametrize("name", BUILTINS)
def test_modules_to_save_trains_the_qformer_and_audio_projection(name):
    ad = _adapter(name)
    bridge = "audio" if name == "tiny-vsalmonn2plus" else "model.audio"
    peft_model = prepare_model(ad.model, Config(lora_dropout=0.0, lora_modules_to_save=["qformer", "audio_proj"]))
    trainable = {n.removeprefix("base_model.model.") for n, p in peft_model.named_parameters() if p.requires_grad}
    saved = {n for n in trainable if "lora_" not in n}
    assert saved and all(n.startswith((f"{bridge}.qformer.modules_to_save.default.",
                                       f"{bridge}.audio_proj.modules_to_save.default.")) for n in saved)
    assert any(".audio_proj." in n for n in saved) and any(".qformer." in n for n in saved)
    # Whisper, the learned queries and the vision tower stay frozen; LoRA is still on the LLM only.
    assert not any(n.startswith((f"{bridge}.layers.", f"{bridge}.q_tokens", "model.visual.")) for n in trainable)
    assert _lora_names(peft_model) == {f"model.language_model.layers.{i}.self_attn.{p}"
                                      for i in range(len(ad.decoder_layers)) for p in ("q_proj", "k_proj", "v_proj")}


@pytest.mark.parametrize(("names", "message"), [
    (["q_tokens"], r"lora_modules_to_save: 'q_tokens' is a parameter \((model\.)?audio\.q_tokens\), not a module"),
    (["qformr"], r"lora_modules_to_save: no module of builtin:tiny-vsalmonn2plus is named 'qformr' or ends "
                 r"with '\.qformr'"),
    (["proj"], r"lora_modules_to_save: 'proj' matches [\w.]+_proj only by the end of its name"),
    (["q_proj"], r"lora_modules_to_save: 'q_proj' names .*layers\.0\.self_attn\.q_proj.*, a LoRA target"),
    (["blocks"], r"lora_modules_to_save: 'blocks' names model\.visual\.blocks, a module list peft cannot copy; "
                 r"name its items \(e\.g\. blocks\.0\)"),
])
def test_modules_to_save_names_are_checked_at_start_up(names, message):
    ad = _adapter("tiny-vsalmonn2plus")
    with pytest.raises(ConfigError, match=message) as info:
        prepare_model(ad.model, Config(lora_modules_to_save=names, model_name_or_path="builtin:tiny-vsalmonn2plus"))
    assert "\n" not in str(info.value)


def test_modules_to_save_is_refused_with_full_finetuning():
    with pytest.raises(ValueError, match="lora_modules_to_save"):
        Config(finetuning_type="full", lora_modules_to_save=["qformer"])


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("towers", ["none", "audio", "vision", "all"])
def test_full_finetuning_keeps_the_frozen_towers_frozen(name, towers):
    ad = _adapter(name)
    model = prepare_model(ad.model, Config(finetuning_type="full", train_encoders=towers))
    grad = {n: p.requires_grad for n, p in model.named_parameters()}
    audio = [n for n in grad if n.startswith(("audio.", "model.audio."))]
    visual = [n for n in grad if n.startswith("model.visual.")]
    llm = [n for n in grad if n.startswith(("model.language_model.", "lm_head."))]
    assert audio and visual and llm and len(audio) + len(visual) + len(llm) == len(grad)
    assert all(grad[n] for n in llm)
    assert all(grad[n] == (towers in ("audio", "all")) for n in audio)
    assert all(grad[n] == (towers in ("vision", "all")) for n in visual)


def _examples(ad, specs):
    out = []
    for (seed, n_frames, audio_s), (question, answer) in zip(specs, QUESTIONS, strict=True):
        prefix, q_ids = split_chat_prompt(ad.tokenizer, "You watch.", question)
        a_ids = ad.tokenizer(answer, add_special_tokens=False)["input_ids"] + [ad.tokenizer.eos_token_id]
        out.append((list(ad.stream(_media(ad, seed, n_frames, audio_s), prefix)), q_ids, a_ids))
    return out


def _grads(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].grad.detach().clone() for n in names}


@pytest.mark.parametrize("name", BUILTINS)
def test_full_context_loss_equals_streaming_at_an_unlimited_budget(name):
    """Loss and gradients of the packed full-context forward equal the streaming ones (FullMemory),
    3 streams of different lengths; on Qwen3-VL the DeepStack features count (without them the loss
    differs) and the DeepStack mergers get the same gradients."""
    ad = _adapter(name)
    model = ad.model
    bridge = "audio" if ad.layout == "span" else "model.audio"
    names = ["model.language_model.layers.1.self_attn.q_proj.weight", "model.language_model.embed_tokens.weight",
             f"{bridge}.audio_proj.weight"]
    if ad.layout == "steps":
        names += ["model.visual.merger.linear_fc1.weight", "model.visual.deepstack_merger_list.1.linear_fc1.weight"]
    else:
        names.append("model.visual.merger.mlp.0.weight")
    specs = [(1, 4, 2.0), (2, 7, 3.6), (3, 5, 1.3)]

    model.zero_grad()
    examples = _examples(ad, specs)
    assert len({sum(len(p) for p in pieces) for pieces, _, _ in examples}) == 3
    deep = [p for pieces, _, _ in examples for p in pieces if p.layer_adds is not None]
    assert bool(deep) == (ad.layout == "steps")
    batched = full_context_loss(ad, [Sequence(p, [(q, a)]) for p, q, a in examples])
    batched.backward()
    g_batched = _grads(model, names)

    model.zero_grad()
    losses = []
    for pieces, q_ids, a_ids in _examples(ad, specs):
        engine = StreamingEngine(ad, FullMemory(), group_size=9)
        state, _ = engine.prefill(iter(pieces))
        assert state.groups > 1
        losses.append(answer_loss(engine, state, q_ids, a_ids))
    reference = torch.stack(losses).mean()
    reference.backward()
    g_ref = _grads(model, names)

    assert abs(batched.item() - reference.item()) <= 1e-5, (batched.item(), reference.item())
    for n in names:
        assert g_ref[n].abs().sum() > 0, n
        torch.testing.assert_close(g_batched[n], g_ref[n], atol=1e-5, rtol=0, msg=n)
    if ad.layout == "steps":  # the check bites: the same batch without DeepStack gives another loss
        with torch.no_grad():
            stripped = []
            for pieces, q, a in _examples(ad, specs):
                for p in pieces:
                    p.layer_adds = None
                stripped.append(Sequence(pieces, [(q, a)]))
            assert abs(full_context_loss(ad, stripped).item() - batched.item()) > 1e-4


@pytest.mark.parametrize("name", BUILTINS)
def test_tiny_manifest_frames_fit_each_model(name, tiny_manifest):
    """The 56x56 clips are decoded at sides that are multiples of the model's frame multiple (28 or
    32), and the stream holds the visual tokens the estimate promised."""
    from omnimem_train.data.manifest import read_manifest

    ad = _adapter(name)
    sample = read_manifest(tiny_manifest, split="train")[0]
    media, _ = media_input(ad, MediaConfig(), sample.video, sample.audio)
    frames = list(media.frames)
    assert {f.shape for f in frames} == {{28: (56, 56, 3), 32: (64, 64, 3)}[ad.frame_multiple]}
    media.frames = iter(frames)
    pieces = list(ad.stream(media, [1, 2]))
    visual = sum(int((p.modality == int(Modality.VISUAL)).sum()) for p in pieces)
    assert visual == media.expected_tokens[Modality.VISUAL] > 0


def _train(name, manifest, out, *overrides):
    from omnimem_train.train.run import run_training

    cfg = load_config(RECIPE[name], [f"dataset={manifest}", f"output_dir={out}", "report_to=none", "max_steps=2",
                                     "save_steps=2", "per_device_train_batch_size=2", "learning_rate=1e-2",
                                     *overrides])
    return run_training(cfg)


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("compression", ["streaming", "none"])
def test_builtin_trains_on_the_tiny_manifest(name, compression, tiny_manifest, tmp_path):
    trainer = _train(name, tiny_manifest, tmp_path / "run", f"compression={compression}", "memory.budget=6")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(np.isfinite(losses))
    adapter = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    assert adapter and all(re.search(r"\.language_model\.layers\.\d+\.self_attn\.[qkv]_proj\.lora_[AB]\.", k)
                           for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # it trained
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] in (None, [])
    metrics = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kept = [m["memory_tokens_per_layer"] for m in metrics if "loss" in m]
    # a 2-s clip streams 8 visual + 4 audio tokens: all kept in full context, at most 6 under compression
    assert all(k <= 6 for k in kept) if compression == "streaming" else all(k == 12 for k in kept)


@pytest.mark.parametrize("name", BUILTINS)
def test_training_with_modules_to_save_moves_the_qformer(name, tiny_manifest, tmp_path):
    """With `lora_modules_to_save: [qformer, audio_proj]` the audio path runs with autograd: the saved
    Q-Former and projection differ from the base's, and the Whisper encoder is not saved."""
    trainer = _train(name, tiny_manifest, tmp_path / "run", "lora_modules_to_save=[qformer,audio_proj]",
                     "compression=none")
    assert trainer.state.global_step == 2
    saved = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    base = load_adapter(f"builtin:{name}", device="cpu").model.state_dict()
    bridge = "audio" if name == "tiny-vsalmonn2plus" else "model.audio"
    extra = {k.removeprefix("base_model.model."): v for k, v in saved.items() if "lora_" not in k}
    assert {k.split(".")[len(bridge.split("."))] for k in extra} == {"qformer", "audio_proj"}
    moved = [k for k, v in extra.items() if not torch.equal(v, base[k])]
    assert f"{bridge}.audio_proj.weight" in moved and any(".qformer." in k for k in moved)
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert sorted(cfg["modules_to_save"]) == ["audio_proj", "qformer"]


@pytest.mark.parametrize("saved", [[], ["qformer"]])
def test_frozen_tower_parts_run_in_eval_mode_while_training(saved):
    """The Q-Former has dropout: frozen, it runs in eval mode while the LLM trains, so the audio it
    encodes is a constant; named in `lora_modules_to_save`, its trained copy keeps its dropout."""
    from omnimem_train.train.run import build_objective

    cfg = load_config(RECIPE["tiny-vsalmonn2plus"], [f"lora_modules_to_save={saved}".replace("'", "")])
    objective, ad = build_objective(cfg)
    objective.train()
    bridge = ad.model.audio
    assert ad.model.model.language_model.layers[0].training and not ad.model.model.visual.training
    assert not bridge.layers[0].training  # Whisper: frozen either way
    qformer = bridge.qformer.modules_to_save["default"] if saved else bridge.qformer
    assert qformer.training == bool(saved)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in qformer.modules())
    mel = np.random.default_rng(0).standard_normal((128, 300)).astype(np.float32)
    with torch.no_grad():
        first, second = ad.encode_audio_windows([mel]), ad.encode_audio_windows([mel])
    assert torch.equal(first, second) != bool(saved)  # dropout only in the trained copy
    objective.eval()
    assert not qformer.training and not ad.model.model.language_model.layers[0].training


@pytest.mark.slow
def test_two_process_zero2_launch_trains_lora_and_the_qformer(tiny_manifest, tmp_path):
    """`./launch.sh` with 2 CPU processes under ZeRO-2 on builtin:tiny-vsalmonn2plus, LoRA plus the
    Q-Former and audio projection (about 20-40 s on 2 cores)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from omnimem_train.train.checkpoints import MANIFEST, incomplete

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "zero2"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED")}
    env.update(NPROC_PER_NODE="2", NUM_GPUS="0", MASTER_PORT=str(27500 + os.getpid() % 2000),
               PYTHON=sys.executable, OMNIMEM_HOME=str(tmp_path / "home"))
    cmd = ["bash", "launch.sh", RECIPE["tiny-vsalmonn2plus"], "deepspeed=zero2", f"dataset={tiny_manifest}",
           f"output_dir={out}", "report_to=none", "max_steps=3", "save_steps=1", "per_device_train_batch_size=1",
           "learning_rate=1e-2", "memory.budget=6", "lora_modules_to_save=[qformer,audio_proj]"]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "--num_gpus 2" in log
    metrics = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert all(m["memory_tokens_per_layer"] <= 6 for m in metrics if "loss" in m)  # under compression
    final = load_file(str(out / "adapter_model.safetensors"))
    first = load_file(str(out / "checkpoint-1" / "adapter_model.safetensors"))
    lora = [k for k in final if "lora_" in k]
    assert lora and all(".language_model.layers." in k for k in lora)
    assert {k.split(".")[3] for k in final if "lora_" not in k} == {"qformer", "audio_proj"}
    assert all(v.numel() > 0 for v in final.values())
    assert any((final[k] - first[k]).abs().max() > 0 for k in lora)
    assert any((final[k] - first[k]).abs().max() > 0 for k in final if ".qformer." in k)
    # What trained is what was saved: LoRA plus the two modules' copies.
    trainable = int(re.search(r"trainable parameters: ([\d,]+)", log).group(1).replace(",", ""))
    assert trainable == sum(v.numel() for k, v in final.items() if not k.endswith("position_ids"))
    listed = json.loads((out / "checkpoint-3" / MANIFEST).read_text())["files"]
    assert incomplete(out / "checkpoint-3") is None and "rng_state_1.pth" in listed
    assert any(name.startswith("global_step3/") for name in listed)


def test_modules_to_save_in_the_vision_tower_train_through_the_stream(tiny_manifest, tmp_path):
    """Vision modules named in `lora_modules_to_save` (Qwen3-VL's merger and a DeepStack merger) get
    gradients: the stream is built with autograd through the vision tower, under compression."""
    _train("tiny-omnimem-qwen3vl", tiny_manifest, tmp_path / "run", "memory.budget=6",
           "lora_modules_to_save=[merger,deepstack_merger_list.1]")
    saved = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    base = load_adapter("builtin:tiny-omnimem-qwen3vl", device="cpu").model.state_dict()
    extra = {k.removeprefix("base_model.model."): v for k, v in saved.items() if "lora_" not in k}
    modules = ("model.visual.merger.", "model.visual.deepstack_merger_list.1.")
    assert extra and all(k.startswith(modules) for k in extra)
    for prefix in ("model.visual.merger.linear_fc1.", "model.visual.deepstack_merger_list.1.linear_fc1."):
        assert not torch.equal(extra[prefix + "weight"], base[prefix + "weight"]), prefix
