"""`omnimem-train export SRC [--output DIR] [--overwrite] [--max-shard-size 5GB] [--thinker-only] [--base MODEL]`.

Turns a training run folder (or one of its checkpoint-N folders) into a standalone model folder that
`omnimem-train infer/eval --model DIR` and `from_pretrained` load: LoRA merged into the base (or the
full fine-tune's weights), consolidated from DeepSpeed ZeRO shards when the checkpoint's safetensors
file is missing or empty, saved as safetensors shards with tokenizer and processor files, the
training memory settings (`omnimem_memory.json`, plus `omnimem_budget.json` when a budget file was
used) and `omnimem_export.json`. The export is reloaded and its logits checked against base + adapter
before it is renamed into place. Default output: <run>/merged, or <run>/merged-checkpoint-N.

    omnimem-train export checkpoints/train/tiny_cpu
    omnimem-train export checkpoints/train/omni7b/checkpoint-500 --output exports/omni7b-500 --overwrite
"""

from __future__ import annotations

from omnimem_train.errors import ConfigError


def cmd_export(args) -> int:
    from omnimem_train.export import export_run

    if args.overrides:
        raise ConfigError(f"export takes no key=value overrides (got {' '.join(args.overrides)})")
    export_run(args.src, args.output, overwrite=args.overwrite, max_shard_size=args.max_shard_size,
               thinker_only=args.thinker_only, base=args.base, trust_remote_code=args.trust_remote_code,
               atol=args.atol)
    return 0


def add_parser(sub) -> None:
    """Register `export` on the `omnimem-train` subparsers."""
    p = sub.add_parser("export", help="merge a trained run's LoRA (or full weights) into a standalone, verified "
                                      "model folder with tokenizer, processor and memory settings")
    p.add_argument("src", help="training run folder (output_dir) or one of its checkpoint-N folders")
    p.add_argument("--output", help="output folder (default: <run>/merged, or <run>/merged-checkpoint-N)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export at --output (a folder holding omnimem_export.json; any "
                        "other folder is refused), only after the new export is verified")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    p.add_argument("--thinker-only", action="store_true",
                   help="full Qwen2.5-Omni base: write only the merged thinker (no talker/token2wav)")
    p.add_argument("--base", help="base model (default: model_name_or_path from the run's config.yaml)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the base folder")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest |logit difference| allowed between base + adapter and the export (default 1e-4)")
    p.set_defaults(func=cmd_export, recipe=None, overrides=[])
