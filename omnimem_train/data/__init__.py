"""Training/eval data: the normalized JSONL sample manifest (`manifest`)."""

from omnimem_train.data.manifest import SPLITS, Sample, read_manifest, to_dataset, write_manifest

__all__ = ["SPLITS", "Sample", "read_manifest", "to_dataset", "write_manifest"]
