"""Export a trained run as a standalone model folder: `omnimem-train export SRC`.

    from omnimem_train.export import export_run
    export_run("checkpoints/train/tiny_cpu")          # -> checkpoints/train/tiny_cpu/merged

Modules: `source` (what a run/checkpoint folder holds), `zero` (DeepSpeed shard consolidation),
`merge` (LoRA attach + merge, full weights), `omni` (full Qwen2.5-Omni assembly), `verify` (the logit
probe), `publish` (temporary folder + rename), `run` (the steps in order).
"""

from omnimem_train.export.run import export_run

__all__ = ["export_run"]
