"""The training recipe, top to bottom: `omnimem-train train RECIPE.yaml [key=value ...]`.

setup (environment, model, what trains, memory policy, data) -> train (HF Trainer, resumable)
-> save (adapter or full weights + tokenizer + resolved config + memory settings).
Launch multi-process runs with `./launch.sh RECIPE.yaml` (DeepSpeed launcher).
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import torch

from omnimem_train.config.load import save_config
from omnimem_train.errors import ConfigError
from omnimem_train.train.deepspeed import accelerate_cpu_backend


def _setup_environment(cfg) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")  # never require an account or the network
    os.environ.setdefault("WANDB_DIR", cfg.output_dir)
    os.environ.setdefault("WANDB_PROJECT", "omnimem-train")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cfg.deepspeed:
        from omnimem_train.train.deepspeed import default_extensions_dir, ensure_single_process_dist_env

        default_extensions_dir()
        ensure_single_process_dist_env()  # a plain `python -m` run still needs RANK/WORLD_SIZE/...


def _training_args(cfg, hidden_size: int):
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available() and cfg.device != "cpu"
    extra = {}
    if cfg.deepspeed:
        from omnimem_train.train.deepspeed import (
            deepspeed_config_for_device,
            precision_args,
            resolve_deepspeed,
        )

        ds = deepspeed_config_for_device(resolve_deepspeed(cfg.deepspeed), on_gpu, hidden_size=hidden_size)
        extra.update(deepspeed=ds, **precision_args(ds))
    else:
        extra.update(use_cpu=not on_gpu, bf16=on_gpu and cfg.dtype == "bfloat16")
    return TrainingArguments(
        output_dir=cfg.output_dir, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        # warmup_steps < 1 is a fraction of the steps in transformers 5
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.lr_scheduler_type,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to], seed=cfg.seed, data_seed=cfg.seed,
        remove_unused_columns=False, dataloader_num_workers=cfg.dataloader_num_workers,
        **extra,
    )


def build_objective(cfg):
    """(objective module, adapter): the model to train wrapped with its streaming engine."""
    from omnimem_train.models.load import load_configured_adapter
    from omnimem_train.streaming.encoder_cache import EncoderCache
    from omnimem_train.streaming.engine import StreamingEngine
    from omnimem_train.train.lora import prepare_model, trained_towers
    from omnimem_train.train.objective import StreamingObjective

    adapter = load_configured_adapter(cfg)
    # LoRA's initial weights come from the seed alone, not from what loading drew (a built-in model's
    # first use builds it with random weights; later runs load the saved copy).
    torch.manual_seed(cfg.seed)
    inner = prepare_model(adapter.model, cfg)
    # The towers that run with autograd: `train_encoders` (full fine-tuning), or the tower modules
    # LoRA's `lora_modules_to_save` trains (e.g. the Q-Former: the audio is encoded with autograd).
    towers = trained_towers(inner)
    # compression: none trains through the packed full-context loss (`train.full_context`), no engine.
    engine = None if cfg.compression == "none" else StreamingEngine.from_config(adapter, cfg.memory)
    cache = EncoderCache(adapter, train_audio=towers == "audio") if cfg.cache_encoder_outputs else None
    objective = StreamingObjective(inner, adapter, engine, cfg.media, cfg.generation.system_prompt,
                                   checkpoint=cfg.gradient_checkpointing, train_encoders=towers,
                                   cache=cache, answer_format=cfg.generation.answer_format,
                                   budget_range=tuple(cfg.train_budget_fractions) or None,
                                   grad_groups=None if cfg.memory_grad_groups == "all" else cfg.memory_grad_groups)
    return objective, adapter


def _resume_path(cfg, say=print) -> str | None:
    """The complete checkpoint `resume_from_checkpoint` names; `latest` is the newest complete one in
    `output_dir` (the incomplete ones it passes over are reported through `say`)."""
    from omnimem_train.train.checkpoints import incomplete, latest_complete

    if cfg.resume_from_checkpoint in (None, ""):
        return None
    if cfg.resume_from_checkpoint == "latest":
        last, skipped = latest_complete(cfg.output_dir) if Path(cfg.output_dir).is_dir() else (None, [])
        for path, why in skipped:
            say(f"resume_from_checkpoint=latest: skipping incomplete {path} ({why})")
        if last is None:
            raise ConfigError(f"{cfg.output_dir}: resume_from_checkpoint: latest: no complete checkpoint-N folder "
                              f"to resume (start a new run without resume_from_checkpoint)")
        return str(last)
    if not Path(cfg.resume_from_checkpoint).is_dir():
        raise ConfigError(f"resume_from_checkpoint: {cfg.resume_from_checkpoint}: not a checkpoint folder")
    why = incomplete(cfg.resume_from_checkpoint)
    if why is not None:
        raise ConfigError(f"{cfg.resume_from_checkpoint}: resume_from_checkpoint: incomplete checkpoint ({why}); "
                          f"resume from a complete one (resume_from_checkpoint=latest picks the newest)")
    return cfg.resume_from_checkpoint


def _of_types(samples: list, cfg) -> list:
    """The samples whose question type is in `cfg.dataset_question_types` (all when it is empty)."""
    wanted = cfg.dataset_question_types
    if not wanted:
        return samples
    kept = [s for s in samples if s.question_type in wanted]
    if not kept:
        present = sorted({str(s.question_type) for s in samples})
        raise ConfigError(f"dataset_question_types: none of {wanted} in {cfg.dataset} (split "
                          f"{cfg.dataset_split!r} has {', '.join(present)})")
    print(f"dataset_question_types: training on {len(kept)} of {len(samples)} rows ({', '.join(wanted)})")
    return kept


def _claim_output_dir(cfg, overwrite: bool) -> str | None:
    """Check `output_dir` before anything loads -> the checkpoint to resume from, if any. A new run
    refuses a folder that holds an earlier run (with `overwrite`: deletes it, if this tool wrote it);
    a resume must continue the checkpoint's run (`checkpoints.check_resume_config`)."""
    from omnimem_train.train.checkpoints import check_resume_config, claim_run_dir, is_main_process
    from omnimem_train.utils.paths import check_writable_dir

    main = is_main_process()

    def note(text: str) -> None:
        if main:
            print(f"note: {text}", file=sys.stderr, flush=True)

    if main:  # the other ranks wait for it in the process group's rendezvous
        check_writable_dir(cfg.output_dir)
    resume = _resume_path(cfg, say=note)
    if resume is None:
        if main:
            claim_run_dir(cfg.output_dir, overwrite)
        return None
    changes = check_resume_config(resume, cfg)
    note(f"resuming from {resume}")
    if changes:
        note(f"resuming with changed {', '.join(changes)}")
    return resume


def _show_progress(trainer) -> None:
    """Training steps through `utils.progress` (plain lines outside a terminal): transformers' own bar
    only redraws one line with `\\r`, unreadable in a log file, so it is replaced, log records included."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from omnimem_train.utils.progress import training_progress

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(training_progress())


def run_training(cfg, overwrite: bool = False):
    """Train per `cfg`; returns the Trainer (its state has the log history). `overwrite`: delete an
    earlier run in `output_dir` (only a folder this tool marked as a run) instead of refusing it."""
    from omnimem_train.data.manifest import read_manifest, to_dataset
    from omnimem_train.data.probe import probe_samples
    from omnimem_train.media.decode import check_sources
    from omnimem_train.train.checkpoints import METRICS_FILE, checkpoint_step, mark_run_dir, truncate_metrics
    from omnimem_train.train.lora import trainable_summary
    from omnimem_train.train.trainer import JsonlMetrics, StreamingTrainer, collate

    resume = _claim_output_dir(cfg, overwrite)
    if not cfg.dataset:
        raise ConfigError("dataset: required for training (a manifest JSONL, e.g. from data_prep)")
    samples = read_manifest(cfg.dataset, split=cfg.dataset_split, check_media=True)
    if not samples:
        raise ConfigError(f"dataset: {cfg.dataset}: no samples in split {cfg.dataset_split!r}")
    samples = _of_types(samples, cfg)
    samples = probe_samples(samples, cfg.dataset, partial(check_sources, audio_mode=cfg.media.audio),
                            cfg.data.on_bad_sample, cfg.output_dir)
    if cfg.finetuning_type == "lora":  # fail on bad values before any model is loaded
        from omnimem_train.train.lora import lora_target_regex

        lora_target_regex(cfg.lora_target)
    if cfg.deepspeed:
        from omnimem_train.train.deepspeed import resolve_deepspeed

        resolve_deepspeed(cfg.deepspeed)
    if cfg.compression == "streaming":  # the method and its budget file, before the model loads
        from omnimem_train.memory.registry import check_memory

        check_memory(cfg.memory)
    _setup_environment(cfg)
    torch.manual_seed(cfg.seed)
    objective, adapter = build_objective(cfg)
    with accelerate_cpu_backend(enabled=bool(cfg.deepspeed)):  # DeepSpeed on CPU: gloo (no-op with a GPU)
        args = _training_args(cfg, adapter.model.config.get_text_config().hidden_size)
        trainer = StreamingTrainer(model=objective, args=args, train_dataset=to_dataset(samples),
                                   data_collator=partial(collate, answer_format=cfg.generation.answer_format),
                                   callbacks=[JsonlMetrics()], run_cfg=cfg)
        _show_progress(trainer)
        if trainer.is_world_process_zero():
            print(trainable_summary(objective.inner), flush=True)
            mark_run_dir(cfg.output_dir)
            save_config(cfg, cfg.output_dir)
            if resume is not None:  # the resumed steps are logged again
                truncate_metrics(Path(cfg.output_dir) / METRICS_FILE, checkpoint_step(resume))
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(cfg.output_dir)
        trainer.save_metrics("train", result.metrics)  # train_results.json, written last: the run finished
    return trainer
