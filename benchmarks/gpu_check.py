"""GPU check: a real-width decoder over a 1-hour stream, OmniMem vs full memory, and one LoRA step.

Run it through `benchmarks/gpu_check.sh` (which caps the wall time at 8 minutes):

    bash benchmarks/gpu_check.sh              # on a machine with one GPU (sized for one H100 80 GB)
    bash benchmarks/gpu_check.sh --dry-run    # anywhere: a tiny config, a short stream, CPU (< 1 min)

What it runs (`--model`, default omni-7b: the Qwen2.5-Omni-7B thinker; see benchmarks/scale.py for
the models, the stand-in encoders and the token rates):

1. Streaming. The decoder at its full depth (28 layers), random weights, bf16, sdpa attention, with
   its embedding table and lm_head, streams `--minutes` (60) of video at 2 fps (280x280 frames:
   100 visual + 25 audio tokens/s for Qwen2.5-Omni) in groups of 16,384 tokens through the real
   engine, first under OmniMem with 8,192 audio+visual tokens per layer, then with full memory until
   it runs out of GPU memory (or `--full-time-limit` seconds). One row each: stream minutes and
   tokens reached, decoder time (the engine's group forwards, synchronised) and tokens/s, peak GPU
   memory (torch's allocator: tensors allocated, and reserved), and the memory left at the end.
2. Training. One budget-aware LoRA step (rank 128, alpha 256, q/k/v of every decoder layer, as the
   release's scripts) under DeepSpeed ZeRO-2 (`recipes/deepspeed/zero2.json`, bf16) on one process:
   a `--train-minutes` (2) stream through the compressed engine with gradients and per-group
   checkpointing (`prefill(checkpoint=True)`, as `compression: streaming` trains), the answer loss
   (`streaming.answer.answer_loss`) on a random question and answer, backward and the optimizer step.
   Its groups are `--train-group-size` (4,096) tokens: the backward recomputes one whole group
   through every layer, ~1 GB of activations per layer at 4,096 tokens but ~3.5 GB at the release's
   16,384 (~100 GB for 28 layers), more than one 80 GB GPU holds.

`--dry-run`: the same code on CPU, fp32, with a 2-layer decoder 64 wide, 1 minute of 56x56 frames,
groups of 256 and a budget of 64, a 30-s LoRA stream at rank 8; peak memory is then the process RSS
high-water mark.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _isolation import proc_status, repo_on_path, reset_hwm  # noqa: E402

GIB = 2**30
# The dry run's decoder: 64 wide, 4 heads of 16 (M-RoPE sections resized to 8 = 16 / 2), 2 KV heads.
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
TINY_ROPE = {"omni-7b": {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
             "vsalmonn2plus-7b": {"rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
             "omnimem-qwen3vl-8b": {"head_dim": 16, "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                                     "mrope_interleaved": True}}}


class _TimeLimit(Exception):
    pass


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_hwm()


def peak_gib(device) -> tuple[float, float | None]:
    """(peak allocated, peak reserved) GiB on the GPU; (process peak RSS, None) on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB
    return (proc_status("VmHWM") or 0.0) / 1024, None


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_stream(ad, policy_name: str, n_layers: int, args, device, time_limit: float | None) -> dict:
    """Stream `args.minutes` through the engine under one policy; stops at OOM or the time limit."""
    import scale
    import torch

    from omnimem_train.memory.registry import make_policy
    from omnimem_train.streaming.engine import StreamingEngine

    policy = make_policy("full", n_layers) if policy_name == "full" else make_policy(policy_name, n_layers,
                                                                                         budget=args.budget)
    engine = StreamingEngine(ad, policy, group_size=args.group_size)
    side = scale.frame_side_for(ad, args.frame_side)
    reached = {"s": 0.0}

    def pieces():
        for piece in scale.stream(ad, args.minutes * 60, side):
            if piece.end_s is not None:
                reached["s"] = piece.end_s
            yield piece

    forward = engine.forward
    busy = {"s": 0.0}
    t_start = time.perf_counter()

    def timed_forward(*a, **k):  # the decoder and the policy, without the stream's layout
        sync(device)
        t = time.perf_counter()
        out = forward(*a, **k)
        sync(device)
        busy["s"] += time.perf_counter() - t
        return out

    engine.forward = timed_forward
    done = {"tokens": 0, "groups": 0, "s": 0.0, "memory": 0}

    def on_group(state, n):
        done.update(tokens=state.tokens_seen, groups=state.groups, s=reached["s"],
                    memory=scale.retained_bytes(state.layers))
        if time_limit is not None and time.perf_counter() - t_start > time_limit:
            raise _TimeLimit

    free(device)
    reset_peak(device)
    status = "complete"
    try:
        with torch.inference_mode():
            engine.prefill(pieces(), on_group=on_group)
    except torch.cuda.OutOfMemoryError:
        status = "out of memory"
    except RuntimeError as e:  # some kernels report an allocation failure as a plain RuntimeError
        if "out of memory" not in str(e).lower() and "ALLOC_FAILED" not in str(e):
            raise
        status = "out of memory"
    except _TimeLimit:
        status = f"stopped: time limit {time_limit:.0f} s"
    wall = time.perf_counter() - t_start
    peak, reserved = peak_gib(device)
    free(device)
    return {"policy": policy.describe() if policy_name != "full" else "full", "minutes": done["s"] / 60,
            "tokens": done["tokens"], "groups": done["groups"], "decoder_s": busy["s"], "wall_s": wall,
            "tokens_per_s": done["tokens"] / busy["s"] if busy["s"] else 0.0, "peak_gib": peak,
            "reserved_gib": reserved, "memory_mib": done["memory"] / 2**20, "status": status}


def lora_step(ad, args, device, dtype) -> dict:
    """One budget-aware LoRA step under DeepSpeed ZeRO-2 on one process."""
    import dataclasses

    import deepspeed
    import scale
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from omnimem_train.memory.registry import make_policy
    from omnimem_train.streaming.answer import answer_loss
    from omnimem_train.streaming.engine import StreamingEngine
    from omnimem_train.train.deepspeed import (
        deepspeed_config_for_device,
        default_extensions_dir,
        ensure_single_process_dist_env,
        resolve_deepspeed,
    )
    from omnimem_train.train.lora import lora_target_regex

    lm = ad.model.model.language_model

    class Decoder(nn.Module):
        """The decoder named as the release's models name it (`model.layers.N.self_attn.q_proj`, which
        `train.lora.lora_target_regex` matches), without the (unbuilt) encoders."""

        def __init__(self):
            super().__init__()
            self.model, self.lm_head = lm, ad.lm_head

    n_layers = len(ad.decoder_layers)
    engine = StreamingEngine(ad, make_policy("omnimem", n_layers, budget=args.budget), group_size=args.train_group_size)
    side = scale.frame_side_for(ad, args.frame_side)
    gen = torch.Generator().manual_seed(1)
    question = torch.randint(0, 1000, (12,), generator=gen).tolist()
    answer = torch.randint(0, 1000, (4,), generator=gen).tolist()

    class StreamLoss(nn.Module):
        """The compressed streaming forward with gradients and the answer loss (encoder outputs
        detached: the towers are frozen)."""

        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self):
            pieces = (dataclasses.replace(p, embeds=p.embeds.detach()) for p in
                      scale.stream(ad, args.train_minutes * 60, side))
            state, _ = engine.prefill(pieces, checkpoint=True)
            return answer_loss(engine, state, question, answer), state.tokens_seen

    peft_model = get_peft_model(Decoder(), LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                      lora_dropout=0.05, bias="none",
                                                      target_modules=lora_target_regex("q_proj,k_proj,v_proj")))
    module = StreamLoss(peft_model)
    trainable = [p for p in module.parameters() if p.requires_grad]
    on_gpu = device.type == "cuda"
    hidden = ad.decoder_layers[0].self_attn.config.hidden_size
    cfg = deepspeed_config_for_device(resolve_deepspeed("zero2"), on_gpu=on_gpu, hidden_size=hidden)
    cfg.pop("_comment", None)
    cfg.update(train_batch_size=1, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
               gradient_clipping=1.0)
    left = [k for k, v in cfg.items() if v == "auto"] + [k for k, v in cfg["zero_optimization"].items() if v == "auto"]
    if left:
        raise RuntimeError(f"DeepSpeed config still has 'auto' values: {left}")
    default_extensions_dir()
    ensure_single_process_dist_env()
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ds, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=cfg)
    free(device)
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    loss, tokens = ds()
    ds.backward(loss)
    ds.step()
    sync(device)
    step_s = time.perf_counter() - t0
    peak, reserved = peak_gib(device)
    norm = ds.get_global_grad_norm()
    return {"minutes": args.train_minutes, "group": args.train_group_size, "tokens": tokens, "loss": float(loss.detach().float()),
            "grad_norm": None if norm is None else float(norm), "step_s": step_s, "peak_gib": peak,
            "reserved_gib": reserved, "trainable": sum(p.numel() for p in trainable),
            "zero_stage": cfg["zero_optimization"]["stage"], "bf16": cfg["bf16"]["enabled"], "status": "ok"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny config, short stream, CPU")
    p.add_argument("--model", default="omni-7b", choices=["omni-7b", "vsalmonn2plus-7b", "omnimem-qwen3vl-8b"])
    p.add_argument("--minutes", type=float, default=None, help="stream length (default 60; dry run 1)")
    p.add_argument("--budget", type=int, default=None, help="omnimem tokens per layer (default 8192; dry run 64)")
    p.add_argument("--group-size", type=int, default=None, help="tokens per group (default 16384; dry run 256)")
    p.add_argument("--frame-side", type=int, default=None, help="frame side px (default 280; dry run 56)")
    p.add_argument("--full-time-limit", type=float, default=150.0, help="stop full memory after this many s")
    p.add_argument("--train-minutes", type=float, default=None, help="LoRA step stream (default 2; dry run 0.5)")
    p.add_argument("--train-group-size", type=int, default=None,
                   help="LoRA step group (default 4096; dry run 256): the backward recomputes one whole group "
                        "through every layer, ~1 GB of activations per layer at 4,096 tokens, ~3.5 GB at 16,384")
    p.add_argument("--lora-rank", type=int, default=None, help="default 128 (dry run 8)")
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args(argv)
    repo_on_path()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dry = args.dry_run
    defaults = dict(minutes=(1.0, 60.0), budget=(64, 8192), group_size=(256, 16384), frame_side=(56, 280),
                    train_minutes=(0.5, 2.0), train_group_size=(256, 4096), lora_rank=(8, 128))
    for k, (d_dry, d_real) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, d_dry if dry else d_real)

    import scale
    import torch

    # Laying out the stream is many small CPU tensor ops: one intra-op thread is as fast and does not
    # fight other jobs (the decoder runs on the GPU; the dry run's is tiny).
    torch.set_num_threads(1)
    if dry:
        device, dtype, overrides, n_layers = torch.device("cpu"), torch.float32, {**TINY, **TINY_ROPE[args.model]}, 2
    else:
        if not torch.cuda.is_available():
            print("no GPU: run with --dry-run for the CPU check", file=sys.stderr)
            return 2
        device, dtype, overrides, n_layers = torch.device("cuda"), torch.bfloat16, None, scale.MODELS[args.model]["depth"]
    t0 = time.perf_counter()
    ad, info = scale.build_adapter(args.model, n_layers, dtype, device=device, vocab=True, text_overrides=overrides)
    build_s = time.perf_counter() - t0
    side = scale.frame_side_for(ad, args.frame_side)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    memory_kind = "torch.cuda.max_memory_allocated (reserved in brackets)" if device.type == "cuda" else \
        "process peak RSS (VmHWM)"
    print(f"gpu_check{' --dry-run' if dry else ''}: {info['label']} ({args.model}), {n_layers} layers, hidden "
          f"{info['hidden']}, {info['heads']} heads / {info['kv_heads']} KV heads x {info['head_dim']}, "
          f"{str(dtype).replace('torch.', '')}, attention {info['attn_impl']}, random weights (built in {build_s:.0f} s); "
          f"{gpu}; torch {torch.__version__}", flush=True)
    print(f"stream: {args.minutes:g} min at 2 fps, {side}x{side} frames, groups of {args.group_size:,}; "
          f"omnimem budget {args.budget:,} tokens per layer; peak memory = {memory_kind}", flush=True)
    failed = False

    print("\n== streaming ==")
    print("| policy | stream min | tokens | groups | wall s | decoder s | tokens/s | peak GiB | memory left MiB | status |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name, limit in (("omnimem", None), ("full", args.full_time_limit)):
        try:
            r = run_stream(ad, name, n_layers, args, device, limit)
        except Exception as e:  # report and go on: the other parts still run
            failed = True
            print(f"| {name} | | | | | | | | | error: {type(e).__name__}: {str(e).splitlines()[0][:200]} |", flush=True)
            free(device)
            continue
        reserved = "" if r["reserved_gib"] is None else f" ({r['reserved_gib']:.1f})"
        print(f"| {r['policy']} | {r['minutes']:.1f} | {r['tokens']:,} | {r['groups']} | {r['wall_s']:.1f} | {r['decoder_s']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['peak_gib']:.2f}{reserved} | {r['memory_mib']:,.1f} | {r['status']} |",
              flush=True)
        if name == "omnimem" and r["status"] != "complete":
            failed = True

    if not args.skip_train:
        # The table is printed after the step: DeepSpeed writes its own lines while it starts.
        try:
            r = lora_step(ad, args, device, dtype)
            reserved = "" if r["reserved_gib"] is None else f" ({r['reserved_gib']:.1f})"
            norm = "" if r["grad_norm"] is None else f"{r['grad_norm']:.3g}"
            row = (f"| {r['minutes']:g} | {r['group']:,} | {r['tokens']:,} | {r['loss']:.4f} | {norm} | {r['step_s']:.1f} | "
                   f"{r['peak_gib']:.2f}{reserved} | {r['trainable']:,} | ZeRO-{r['zero_stage']}, bf16 {r['bf16']}: ok |")
        except Exception as e:
            failed = True
            row = f"| | | | | | | | | error: {type(e).__name__}: {str(e).splitlines()[0][:200]} |"
        print(f"\n== budget-aware LoRA step (rank {args.lora_rank}, q/k/v; DeepSpeed ZeRO-2, one process) ==")
        print("| stream min | group | tokens | loss | grad norm | step s | peak GiB | trainable params | status |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(row, flush=True)
    print(f"\ngpu_check: {'FAILED' if failed else 'done'} in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
