"""Training/eval data: the normalized JSONL sample manifest (`manifest`), the media check of its
samples before a model loads (`probe`)."""

from omnimem_train.data.manifest import SPLITS, Sample, read_manifest, to_dataset, write_manifest
from omnimem_train.data.probe import SKIPPED, probe_samples

__all__ = ["SKIPPED", "SPLITS", "Sample", "probe_samples", "read_manifest", "to_dataset", "write_manifest"]
