"""Full Qwen2.5-Omni bases (`model_type: qwen2_5_omni`: thinker + talker + token2wav).

Training only ever sees the thinker. To export a complete Omni checkpoint, the whole base model is
loaded once (in fp32, which every stored dtype converts to exactly); its thinker is the model the
LoRA adapter is merged into (or the full fine-tune is copied into), and before saving every talker /
token2wav tensor is cast back to the dtype it is stored in, so those tensors are written
byte-identical to the base's. `check_parts_identical` proves it on the written files.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from omnimem_train.errors import ModelError

FULL_OMNI_TYPE = "qwen2_5_omni"
THINKER_PREFIX = "thinker."
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8}


def model_type(model_dir: Path) -> str | None:
    """`model_type` of `model_dir/config.json` (None when the folder has no readable one, e.g. GGUF)."""
    f = Path(model_dir) / "config.json"
    try:
        return json.loads(f.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def is_full_omni(model_dir: Path) -> bool:
    return model_type(model_dir) == FULL_OMNI_TYPE


def stored_dtypes(model_dir: Path) -> dict[str, torch.dtype]:
    """Tensor name -> dtype as stored in `model_dir`'s safetensors files (headers only)."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                out[k] = _DTYPES.get(h.get_slice(k).get_dtype())
    return out


def restore_part_dtypes(full, dtypes: dict[str, torch.dtype]) -> None:
    """Cast every non-thinker parameter/buffer of `full` back to its stored dtype (in place)."""
    tensors = dict(full.named_parameters())
    tensors.update(full.named_buffers())
    for name, t in tensors.items():
        want = dtypes.get(name)
        if not name.startswith(THINKER_PREFIX) and want is not None and t.dtype != want:
            t.data = t.data.to(want)


def check_parts_identical(base_dir: Path, out_dir: Path) -> int:
    """Raise ModelError unless every non-thinker tensor of `base_dir` is in `out_dir` with the same
    dtype, shape and bytes; returns how many tensors were compared."""
    from omnimem_train.utils.progress import progress

    with contextlib.ExitStack() as stack:
        base, out = _handles(base_dir, stack), _handles(out_dir, stack)
        names = [k for k in base if not k.startswith(THINKER_PREFIX)]
        # reads both copies of every talker/token2wav tensor: gigabytes for a full Omni model
        for k in progress(names, desc="verify talker/token2wav", unit="tensor", leave=False):
            if k not in out:
                raise ModelError(f"{out_dir}: the export lacks the base's tensor {k}")
            a, b = base[k].get_tensor(k), out[k].get_tensor(k)
            if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(_bytes(a), _bytes(b)):
                raise ModelError(f"{out_dir}: tensor {k} differs from the base's")
    return len(names)


def _handles(model_dir: Path, stack: contextlib.ExitStack) -> dict:
    """Tensor name -> open safetensors handle of the file holding it."""
    from safetensors import safe_open

    where = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        h = stack.enter_context(safe_open(str(f), framework="pt"))
        where.update(dict.fromkeys(h.keys(), h))
    return where


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)

