"""`StreamingTrainer`: HF `Trainer` whose loss is the streaming objective, plus its callbacks.

The model the Trainer holds is a `StreamingObjective` (the peft/full model inside, driven group by
group by the streaming engine). Saving writes the inner model's `save_pretrained` output (LoRA
adapter or full weights), the tokenizer, the resolved config and the memory settings used; a
checkpoint folder also records the data position, and is written complete or not at all
(`train.checkpoints`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from omnimem_train.config.load import memory_settings, save_config
from omnimem_train.config.served import write_memory_settings
from omnimem_train.models.prompt import LETTERS, option_text
from omnimem_train.train.checkpoints import METRICS_FILE, STAGING_PREFIX, publish
from omnimem_train.train.objective import Example
from omnimem_train.train.sampler import MediaGroupedSampler
from omnimem_train.utils.atomic import plain_modes


def collate(rows: list[dict], answer_format: str = "letter") -> list[Example]:
    """Manifest rows (from `data.manifest.to_dataset`) -> training examples whose multiple-choice
    answers are written in `answer_format` (`models.prompt.option_text`)."""
    return [
        Example(video=r["video"], audio=r["audio"], question=r["question"], options=list(r["options"]),
                answer=_answer(r, answer_format), context=json.loads(r["extra"] or "{}").get("context"))
        for r in rows
    ]


def _answer(row: dict, answer_format: str) -> str:
    if not row["options"]:
        return row["answer_text"]
    return option_text(list(row["options"]), LETTERS.index(row["answer"]), answer_format)


class StreamingTrainer(Trainer):
    def __init__(self, *args, run_cfg=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_cfg = run_cfg
        # Our loss is already a per-sample mean: let the Trainer divide by accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._memory: list[tuple[float, int]] = []
        self._staging: str | None = None  # set while a checkpoint is being written

    def _get_train_sampler(self, train_dataset=None):
        """Clip by clip (`train.sampler`) when `group_by_media` is on and some clip has several rows."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.run_cfg is not None and self.run_cfg.group_by_media and dataset is not None:
            keys = list(zip(dataset["video"], dataset["audio"],
                            (json.loads(e or "{}").get("context") for e in dataset["extra"])))
            if len(set(keys)) < len(keys):
                return MediaGroupedSampler(keys, self.args.data_seed if self.args.data_seed is not None
                                           else self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = model(inputs)
        objective = self.accelerator.unwrap_model(model)
        for rep in objective.last_reports:
            self._memory.append((rep.mean("visual") + rep.mean("audio"), rep.total_bytes))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, start_time=None) -> None:
        if self._memory and "loss" in logs:  # retained memory per step, averaged since the last log
            logs["memory_tokens_per_layer"] = round(sum(t for t, _ in self._memory) / len(self._memory), 2)
            logs["memory_mib"] = round(sum(b for _, b in self._memory) / len(self._memory) / 2**20, 4)
            self._memory = []
        super().log(logs, start_time)

    def _get_output_dir(self, trial) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint (weights, optimizer, scheduler, RNG, trainer state, DeepSpeed shards
        of every rank) is written under `<run>/.partial-checkpoint-N/`; once every rank is done, the
        main process adds the data position and the manifest and renames it to `<run>/checkpoint-N`."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            ckpt = Path(staging, name)
            (ckpt / "data_position.json").write_text(json.dumps(_data_position(self.args, self.state), indent=2))
            publish(ckpt, Path(run_dir, name))
            os.rmdir(staging)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Under DeepSpeed every rank calls `_save` (after joining the ZeRO-3 gather); only the main
        # process writes. Another rank would write its own partitioned state: with ZeRO-3 its large
        # tensors are 0-element placeholders, racing the gathered ones into the same files.
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        objective = self.accelerator.unwrap_model(self.model)
        if state_dict is not None:  # gathered by the Trainer (ZeRO-3): keys carry our "inner." prefix
            state_dict = {k[len("inner."):]: v for k, v in state_dict.items() if k.startswith("inner.")}
        objective.inner.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        objective.adapter.tokenizer.save_pretrained(output_dir)
        if self.run_cfg is not None:
            save_config(self.run_cfg, output_dir)
            settings = memory_settings(self.run_cfg)
            write_memory_settings(output_dir, settings, settings.get("budget_file"))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        plain_modes(output_dir)  # safetensors writes 0600; the run's files read like any other output

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Non-DeepSpeed resume: put the checkpoint's adapter (or full) weights into the inner model."""
        from peft import PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file

        inner = self.accelerator.unwrap_model(model or self.model).inner
        if isinstance(inner, PeftModel):
            set_peft_model_state_dict(inner, load_file(os.path.join(resume_from_checkpoint, "adapter_model.safetensors")))
        else:
            load_full_weights(inner, resume_from_checkpoint)


def load_full_weights(model, folder) -> None:
    """Put a full-weights checkpoint (`save_pretrained`'s files in `folder`) into `model`, strictly.

    The checkpoint is read by the loader every model goes through (`models.load`: transformers'
    key conversions and tied weights, then a strict check of the load report) into a second copy,
    whose weights are copied in place: the optimizer keeps referring to `model`'s parameters.
    """
    from omnimem_train.errors import ConfigError, ModelError
    from omnimem_train.models.load import _strict_from_pretrained

    try:
        loaded = _strict_from_pretrained(type(model).from_pretrained, str(folder), dtype=model.dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
    except (ModelError, RuntimeError) as e:
        raise ConfigError(f"resume_from_checkpoint: {folder}: the checkpoint does not fit the model: "
                          f"{str(e).splitlines()[0]}") from e


class JsonlMetrics(TrainerCallback):
    """Append every log record to `<output_dir>/metrics.jsonl` (rank 0), next to the run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(os.path.join(args.output_dir, METRICS_FILE), "a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def _data_position(args, state) -> dict:
    """Where in the data a checkpoint stands (the Trainer resumes from the same point)."""
    return {"global_step": state.global_step, "epoch": state.epoch,
            "samples_seen": state.global_step * args.per_device_train_batch_size
            * args.gradient_accumulation_steps * max(args.world_size, 1)}
