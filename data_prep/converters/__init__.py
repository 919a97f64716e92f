"""Converters from published benchmark / training annotation formats into the normalized manifest.

    from data_prep.converters import convert
    result = convert("videomme", "test-00000-of-00001.parquet", "out/videomme_long",
                     media_dir="videos", duration="long")
    print(result.summary())   # "videomme: 900 accepted, 0 rejected, 1800 skipped (...)"

Each writes `<out>/manifest.jsonl` (see omnimem_train.data.manifest) and `<out>/rejects.jsonl`
(one line per invalid row with its reason); see `common` for the rules shared by all formats and
each module for its input fields. The command line is `omnimem-train prep FORMAT INPUT --out DIR`.
"""

from __future__ import annotations

from data_prep.converters import lvbench, lvomnibench, sharegpt, videomme
from data_prep.converters.common import ConvertResult
from omnimem_train.errors import ConfigError

FORMATS = {m.NAME: m for m in (videomme, lvbench, lvomnibench, sharegpt)}


def convert(fmt: str, source, out_dir, media_dir=None, split: str | None = None, **options) -> ConvertResult:
    """Run the converter of `fmt` (a key of FORMATS); `split` defaults to the format's own
    ("test" for the benchmarks, "train" for sharegpt); `options` go to it (videomme: duration)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format: unknown {fmt!r} (one of {', '.join(FORMATS)})")
    module = FORMATS[fmt]
    return module.convert(source, out_dir, media_dir, split or module.DEFAULT_SPLIT, **options)


__all__ = ["FORMATS", "ConvertResult", "convert"]
