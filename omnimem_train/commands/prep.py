"""`omnimem-train prep FORMAT INPUT --out DIR`: convert annotations into the normalized manifest.

FORMAT is videomme, lvbench, lvomnibench or sharegpt (data_prep.converters). Writes
<out>/manifest.jsonl and <out>/rejects.jsonl and prints "N accepted, M rejected (by reason)".
"""

from __future__ import annotations

from omnimem_train.errors import ConfigError

FORMAT_NAMES = ("videomme", "lvbench", "lvomnibench", "sharegpt")


def cmd_prep(args) -> int:
    from data_prep.converters import FORMATS, convert

    if getattr(args, "overrides", None):
        raise ConfigError(f"prep takes no key=value overrides, got {' '.join(args.overrides)}")
    if args.format not in FORMATS:
        raise ConfigError(f"format: unknown {args.format!r} (one of {', '.join(FORMATS)})")
    options = {}
    if args.duration is not None:
        if args.format != "videomme":
            raise ConfigError(f"--duration: only for videomme, not {args.format}")
        options["duration"] = args.duration
    result = convert(args.format, args.input, args.out, args.media_dir, args.split, **options)
    print(result.summary())
    print(f"manifest: {result.manifest}")
    print(f"rejects:  {result.rejects}")
    return 0


def add_parser(sub) -> None:
    """Register `prep` on the `omnimem-train` subparsers."""
    p = sub.add_parser("prep", help="convert benchmark/training annotations (" + ", ".join(FORMAT_NAMES)
                       + ") into the normalized manifest, probing the media; invalid rows go to rejects.jsonl")
    p.add_argument("format", help=f"input format: {' | '.join(FORMAT_NAMES)}")
    p.add_argument("input", help="annotation file (.parquet, .json or .jsonl)")
    p.add_argument("--out", required=True, help="output folder (manifest.jsonl, rejects.jsonl)")
    p.add_argument("--media-dir", help="folder the media paths/ids resolve against (default: the input's folder)")
    p.add_argument("--duration", help="videomme: keep only this duration split (short | medium | long)")
    p.add_argument("--split", help="manifest split: train | val | test (default: test, sharegpt: train)")
    p.set_defaults(func=cmd_prep, recipe=None, overrides=[])
