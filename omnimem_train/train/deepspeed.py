"""DeepSpeed for `omnimem-train train`: shipped configs, per-device precision and the CPU shim.

Shipped configs (`recipes/deepspeed/zero2.json`, `zero3.json`)
----------------------------------------------------------------
HF-Trainer style: every value the transformers integration can fill is ``"auto"``
(batch sizes, gradient accumulation, clipping, bucket sizes from the model's ``hidden_size``).
They define **no** ``optimizer``/``scheduler`` block on purpose: the Trainer then hands its own
``torch.optim.AdamW`` to DeepSpeed as the client optimizer, which works for ZeRO-2 and ZeRO-3 and
needs no JIT build of ``fused_adam``/``cpu_adam`` (about 40 s on a 2-core CPU). ZeRO-3 sets
``stage3_gather_16bit_weights_on_model_save: true`` so that ``Trainer.save_model`` writes real,
consolidated weights instead of an empty placeholder. Their top-level ``"_comment"`` key is
ignored by DeepSpeed 0.19.8 and by the transformers integration (unknown keys are only rejected
*inside* sections such as ``zero_optimization``, which are strict pydantic models).

Precision: ``bf16.enabled``/``fp16.enabled`` are ``"auto"`` in the files and fixed per device by
`deepspeed_config_for_device` (bf16 on GPU, fp32 on CPU). The transformers integration raises a
"mismatch" error when a non-auto value disagrees with ``TrainingArguments(bf16=..., fp16=...)``;
pass `precision_args(config)` to ``TrainingArguments`` to keep them consistent.

The accelerate CPU shim
-----------------------
accelerate 1.15 ``PartialState._prepare_backend`` only picks a process-group backend for a
DeepSpeed run (``LOCAL_RANK`` set, ``cpu=False``) when CUDA or another device library is present.
On a CPU-only machine it returns ``(None, DistributedType.NO)``, so accelerate believes it runs
one process: under ``torchrun``/``deepspeed`` with 2 ranks the HF Trainer then dies with
``train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size``, and
``accelerate launch`` silently makes every rank "rank 0 of 1". `patch_accelerate_cpu_backend`
makes it return ``("gloo", DistributedType.MULTI_CPU)`` in exactly that case (see
docs: ENVIRONMENT.md section 5); `accelerate_cpu_backend` applies it for one block and restores
accelerate on exit. This module is the only place that patches accelerate.

Single-process runs (pytest, ``python script.py``) without a launcher: DeepSpeed falls back to
MPI discovery and fails with ``ModuleNotFoundError: mpi4py``; `ensure_single_process_dist_env`
sets the torch.distributed env for a world of one.

The first DeepSpeed run on a machine JIT-compiles ``deepspeed_shm_comm`` (about 25 s on CPU);
`default_extensions_dir` points ``TORCH_EXTENSIONS_DIR`` at ``<repo>/.cache/torch_extensions``,
which CI caches (``.ci/run`` sets the same default).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import socket
from pathlib import Path
from typing import Any

from omnimem_train.config.schema import DEEPSPEED_CONFIGS
from omnimem_train.errors import ConfigError

# The repository root (omnimem_train/train/deepspeed.py -> parents[2]). Works for a source checkout
# and for the editable install (its finder maps the package to the source tree, so __file__ lies in
# the checkout). A wheel install would need recipes/deepspeed/*.json shipped as package data.
_REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = _REPO_ROOT / "recipes" / "deepspeed"
SHORT_NAMES: dict[str, str] = {name: f"{name}.json" for name in DEEPSPEED_CONFIGS}

_KNOWN = ", ".join(SHORT_NAMES)


# --------------------------------------------------------------------------------------------
# config files
# --------------------------------------------------------------------------------------------


def resolve_deepspeed(value: str | os.PathLike[str] | None, recipe_dir: Path | None = None) -> str | None:
    """The ``deepspeed`` config key -> absolute path of a DeepSpeed JSON file, or None.

    - None, "" or "none" -> None (no DeepSpeed);
    - "zero2" / "zero3" -> the shipped ``recipes/deepspeed/zero{2,3}.json``;
    - anything else is a path; a relative one is tried against the current directory, then
      against ``recipe_dir`` (the folder of the recipe that named it).

    The file must be a JSON object. Raises `ConfigError` (one line) naming the key ``deepspeed``.
    """
    if value is None:
        return None
    text = os.fspath(value).strip()
    if text == "" or text.lower() == "none":
        return None
    if text.lower() in SHORT_NAMES:
        path = RECIPE_DIR / SHORT_NAMES[text.lower()]
        if not path.is_file():
            raise ConfigError(f"deepspeed: shipped config for {text!r} is missing: {path}")
        _load_json(path)
        return str(path)

    candidate = Path(text).expanduser()
    tried = [candidate if candidate.is_absolute() else Path.cwd() / candidate]
    if not candidate.is_absolute() and recipe_dir is not None:
        tried.append(Path(recipe_dir) / candidate)
    for path in tried:
        if path.is_file():
            path = path.resolve()
            _load_json(path)
            return str(path)

    looks_like_path = os.sep in text or "/" in text or text.lower().endswith(".json")
    where = " or ".join(str(p) for p in tried)
    if looks_like_path:
        raise ConfigError(
            f"deepspeed: file not found: {text!r} (looked for {where}); known short names: {_KNOWN}"
        )
    raise ConfigError(
        f"deepspeed: unknown value {text!r}; known short names: {_KNOWN} (or a path to a DeepSpeed JSON file)"
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"deepspeed: {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"deepspeed: {path}: cannot read: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"deepspeed: {path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def deepspeed_config_for_device(
    path: str | os.PathLike[str], on_gpu: bool, hidden_size: int | None = None
) -> dict[str, Any]:
    """Load a DeepSpeed JSON and fix its precision for the device; for ``TrainingArguments(deepspeed=dict)``.

    - GPU: ``bf16.enabled`` "auto"/absent -> True, ``fp16.enabled`` "auto"/absent -> False;
      explicit true/false values in the file are kept (a user's file wins).
    - CPU: both forced to False (fp32; DeepSpeed's bf16/fp16 optimizers are GPU paths).

    ``hidden_size``: when given, the bucket sizes left "auto" (``zero_optimization.reduce_bucket_size``,
    ``stage3_prefetch_bucket_size``, ``stage3_param_persistence_threshold``) are filled here with the
    transformers formulas (h*h, 0.9*h*h, 10*h). Needed when the module handed to the Trainer has no
    ``config.hidden_size`` / ``config.text_config.hidden_size`` (transformers then raises "The model's
    config file has neither `hidden_size` nor `hidden_sizes` entry"); HF models and PEFT-wrapped HF
    models have one.

    Returns a fresh dict (the Trainer fills its remaining "auto" values in place). Pass
    `precision_args(result)` to ``TrainingArguments`` so the integration sees no mismatch.
    """
    config = copy.deepcopy(_load_json(Path(path)))
    bf16 = config.setdefault("bf16", {})
    fp16 = config.setdefault("fp16", {})
    if not isinstance(bf16, dict) or not isinstance(fp16, dict):
        raise ConfigError(f"deepspeed: {path}: 'bf16' and 'fp16' must be JSON objects")
    if on_gpu:
        if bf16.get("enabled", "auto") == "auto":
            bf16["enabled"] = True
        if fp16.get("enabled", "auto") == "auto":
            fp16["enabled"] = False
    else:
        bf16["enabled"] = False
        fp16["enabled"] = False
    zero = config.get("zero_optimization")
    if hidden_size is not None and isinstance(zero, dict):
        h = int(hidden_size)
        for key, value in (
            ("reduce_bucket_size", h * h),
            ("stage3_prefetch_bucket_size", int(0.9 * h * h)),
            ("stage3_param_persistence_threshold", 10 * h),
        ):
            if zero.get(key) == "auto":
                zero[key] = value
    return config


def precision_args(config: dict[str, Any]) -> dict[str, bool]:
    """``{"bf16": ..., "fp16": ...}`` for ``TrainingArguments`` matching a DeepSpeed config dict."""

    def enabled(section: str) -> bool:
        block = config.get(section)
        return isinstance(block, dict) and block.get("enabled") is True

    return {"bf16": enabled("bf16"), "fp16": enabled("fp16")}


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------


def default_extensions_dir() -> str | None:
    """``os.environ.setdefault("TORCH_EXTENSIONS_DIR", <repo>/.cache/torch_extensions)``; returns the value.

    Only in a source checkout (a ``pyproject.toml`` next to the package); otherwise the variable is
    left alone (torch then uses ``~/.cache/torch_extensions``) and the current value is returned.
    """
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_REPO_ROOT / ".cache" / "torch_extensions"))
    return os.environ.get("TORCH_EXTENSIONS_DIR")


_DIST_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_single_process_dist_env() -> dict[str, str]:
    """Make a launcher-less run a torch.distributed world of one; returns the variables it set.

    When none of RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT is set, sets RANK=0,
    LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR=127.0.0.1 and MASTER_PORT=<a free port>. Otherwise
    (a launcher, or the user, set some of them) changes nothing. Without these DeepSpeed tries MPI
    discovery and fails with ``ModuleNotFoundError: mpi4py``.
    """
    if any(key in os.environ for key in _DIST_KEYS):
        return {}
    values = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    os.environ.update(values)
    return values


# --------------------------------------------------------------------------------------------
# accelerate CPU shim
# --------------------------------------------------------------------------------------------

_SHIM_MARK = "_omnimem_cpu_deepspeed_shim"


def _make_shim(original):
    from accelerate.utils import DistributedType

    @functools.wraps(original)
    def _prepare_backend(self, cpu: bool = False, sagemaker_dp=False, backend: str | None = None):
        found, dist_type = original(self, cpu, sagemaker_dp, backend)
        if (
            dist_type == DistributedType.NO
            and found in (None, "gloo")  # "gloo" when the caller asked for it (ddp_backend="gloo")
            and not cpu
            and int(os.environ.get("LOCAL_RANK", -1)) != -1
            and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        ):
            return "gloo", DistributedType.MULTI_CPU
        return found, dist_type

    setattr(_prepare_backend, _SHIM_MARK, True)
    return _prepare_backend  # functools.wraps sets __wrapped__ = original


def patch_accelerate_cpu_backend() -> bool:
    """Let accelerate run DeepSpeed over gloo on a CPU-only machine; True when the shim is in place.

    A no-op (returns False) when CUDA is available. Idempotent: patching twice keeps one wrapper.
    Call it before the first ``PartialState``/``Accelerator``/``TrainingArguments`` device setup.
    """
    import torch
    from accelerate.state import PartialState

    current = PartialState.__dict__["_prepare_backend"]
    if getattr(current, _SHIM_MARK, False):
        return True
    if torch.cuda.is_available():
        return False
    PartialState._prepare_backend = _make_shim(current)
    return True


@contextlib.contextmanager
def accelerate_cpu_backend(enabled: bool = True):
    """`patch_accelerate_cpu_backend` for the duration of the block (when `enabled`); on exit accelerate's
    ``PartialState._prepare_backend`` is what it was before. Wrap the DeepSpeed Trainer's setup and run."""
    from accelerate.state import PartialState

    before = PartialState.__dict__["_prepare_backend"]
    if enabled:
        patch_accelerate_cpu_backend()
    try:
        yield
    finally:
        PartialState._prepare_backend = before


def shutdown_distributed() -> bool:
    """Tear the process group down before the interpreter exits: left to interpreter shutdown, a
    gloo/shm worker thread can be destroyed while joinable ("terminate called without an active
    exception", SIGABRT) and the launcher then reports a finished run as failed. -> whether a
    process group was torn down."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank has mapped its peers' buffers: they may be unlinked now
        remove_shm_buffer()
        dist.destroy_process_group()
        return True
    return False


SHM_DIR = Path("/dev/shm")


def shm_buffer_path(env: dict[str, str] | None = None) -> Path | None:
    """This rank's DeepSpeed CPU all-reduce buffer (`deepspeed/ops/csrc/cpu/comm/shm.cpp`:
    deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<RANK>), None without a world."""
    env = os.environ if env is None else env
    if not all(env.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK")):
        return None
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_{env['MASTER_PORT']}_{env['RANK']}"


def remove_shm_buffer(env: dict[str, str] | None = None) -> bool:
    """Unlink this rank's all-reduce buffer. DeepSpeed creates it (67 MB per rank, in RAM) and never
    unlinks it, so every finished run would leave it in /dev/shm for good; the mappings stay valid
    until the process ends. -> whether a file was removed."""
    path = shm_buffer_path(env)
    if path is None:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
