"""Load a model directory (or a built-in) into the right adapter, safely.

Before any weight is touched the directory's `config.json` is checked (a JSON object, a known
`model_type`, and the sub-configs and sizes the model needs: a missing one would silently become a
7B-sized default), and its weights must be safetensors: pickled `pytorch_model.bin` files are
refused (unpickling can run code), with the command that converts them. The built-in SmolLM2's GGUF
file is allowed (not a pickle): it is de-quantized once into a cached safetensors folder
(`models/gguf_cache.py`) that later loads read. Every safetensors header is read first, so a
truncated or corrupt file fails naming it. Tokenizer and processor settings come from the same
directory with `local_files_only=True` (no hub access). `trust_remote_code` stays off unless the
caller passes it.

Loading is strict: transformers' load report must show no weight of the model class left unfilled
(it would keep its random initialisation), no checkpoint tensor left unread and no tensor of the
wrong shape, apart from the documented allow-list below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from omnimem_train.errors import ModelError, first_line
from omnimem_train.models.base import ModelAdapter
from omnimem_train.models.builtin import resolve_builtin

OMNI_TYPES = ("qwen2_5_omni_thinker", "qwen2_5_omni")
TEXT_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo2")
# The video-SALMONN 2+ family (models/vsalmonn.py): the types its classes save, and the releases'
# backbone types, which are this family when config.json holds an `audio_config`.
VSALMONN_TYPES = ("vsalmonn2plus", "omnimem_qwen3vl")
VSALMONN_RELEASE_TYPES = ("qwen2_5_vl", "qwen3_vl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What config.json must hold per model type: sub-configs (dotted paths) and size keys in the text config.
_OMNI_SUBCONFIGS = {
    "qwen2_5_omni_thinker": ("text_config", "audio_config", "vision_config"),
    "qwen2_5_omni": ("thinker_config", "thinker_config.text_config", "thinker_config.audio_config",
                     "thinker_config.vision_config"),
}
_TEXT_CONFIG = {"qwen2_5_omni_thinker": "text_config", "qwen2_5_omni": "thinker_config.text_config"}
_SIZE_KEYS = ("hidden_size", "num_hidden_layers")  # in the LLM's config (the top level for text LMs)
_LOADER_CLASS = {"qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
                 "qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration"}
# The allow-list of strict loading: key patterns (re.search on the names in transformers' load
# report) that leave no weight silently wrong. Also allowed: a missing tied weight (lm_head.weight
# where the config ties it to the input embeddings), which the model's own tied-weight map
# (`all_tied_weights_keys`) names; it is the loaded tensor it is tied to.
ALLOWED_MISSING = (
    r"(^|\.)rotary_emb\.inv_freq$",  # a non-persistent buffer: computed from config.json, never saved
)
ALLOWED_UNEXPECTED = (
    r"(^|\.)rotary_emb\.inv_freq$",  # saved by older transformers versions; recomputed from config.json
)
# The parts of a full Qwen2.5-Omni checkpoint that are not built when only the thinker is kept
# (`enable_audio_output=False` creates no talker / token2wav): speech output, unused here. Allowed
# as unexpected only in a model without a talker.
UNUSED_OMNI_PARTS = r"^(talker|token2wav)\."


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={device}: CUDA is not available on this machine (use device=cpu or auto)")
    return torch.device(device)


def load_adapter(model_name_or_path: str, dtype: str = "float32", device: str = "auto",
                 attn_implementation: str = "sdpa", trust_remote_code: bool = False) -> ModelAdapter:
    """A ready (eval-mode) adapter for `model_name_or_path`: `builtin:<name>`, a local checkpoint
    directory, or a hub id already in the local HF cache."""
    gguf = None
    if model_name_or_path.startswith("builtin:"):
        path, gguf = resolve_builtin(model_name_or_path.split(":", 1)[1])
    else:
        path = _local_dir(model_name_or_path)
    source = str(path)
    model_type = "llama" if gguf else _read_model_type(path, trust_remote_code)
    kw = dict(dtype=DTYPES[dtype], attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if not gguf:
        _check_weights(path, model_type)
        kw["use_safetensors"] = True  # never fall back to a pickle, whatever else the folder holds
    dev = resolve_device(device)
    try:
        if model_type in OMNI_TYPES:
            adapter = _load_omni(source, model_type, kw)
        elif model_type in VSALMONN_TYPES + VSALMONN_RELEASE_TYPES:
            adapter = _load_vsalmonn(source, kw, name=model_name_or_path)
        elif gguf:
            adapter = _load_gguf(path, gguf, kw, name=model_name_or_path)
        else:  # a known text LM, or (trust_remote_code) whatever the folder's own code defines
            adapter = _load_text(source, kw, name=model_name_or_path)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{model_name_or_path}: cannot load model ({first_line(e)})") from e
    adapter.model.to(dev).eval()
    adapter.source = model_name_or_path
    return adapter


def load_configured_adapter(cfg) -> ModelAdapter:
    """Seed torch with `cfg.seed`, then `load_adapter` as a run config names the model (its
    model_name_or_path, dtype, device, attn_implementation and trust_remote_code)."""
    torch.manual_seed(cfg.seed)
    return load_adapter(cfg.model_name_or_path, cfg.dtype, cfg.device, cfg.attn_implementation, cfg.trust_remote_code)


def _local_dir(name: str) -> Path:
    """A checkpoint folder: the path itself, or a hub id resolved through the HF cache (downloading
    only where the hub is reachable and HF_HUB_OFFLINE is unset)."""
    path = Path(name).expanduser()
    if not path.exists() and _HUB_ID.match(name):
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(name))
        except Exception as e:  # offline, not cached, gated, ...: all mean "cannot load this id"
            raise ModelError(f"{name}: not a local directory and cannot load it from the hub cache "
                             f"({first_line(e)})") from e
    if not path.exists():
        raise ModelError(f"{name}: model directory not found")
    if not path.is_dir():
        raise ModelError(f"{name}: not a directory (expected a model checkpoint folder)")
    if not (path / "config.json").exists():
        raise ModelError(f"{name}: no config.json in this directory (not a model checkpoint)")
    return path


def _read_model_type(path: Path, trust_remote_code: bool = False) -> str:
    """The checked `model_type` of `path/config.json` (read before any weight file)."""
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{cfg_file}: unreadable config ({first_line(e)})") from e
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelError(f"{cfg_file}: no 'model_type' field")
    model_type = cfg["model_type"]
    if model_type in VSALMONN_TYPES or (model_type in VSALMONN_RELEASE_TYPES and "audio_config" in cfg):
        from omnimem_train.models.vsalmonn import check_config

        check_config(cfg, cfg_file)
        return model_type
    if model_type not in OMNI_TYPES + TEXT_TYPES:
        if trust_remote_code and isinstance(model_type, str):
            return model_type  # the folder's own code defines it
        raise ModelError(f"{cfg_file}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(OMNI_TYPES + TEXT_TYPES + VSALMONN_TYPES)} "
                         f"({' / '.join(VSALMONN_RELEASE_TYPES)} with an 'audio_config')")
    for sub in _OMNI_SUBCONFIGS.get(model_type, ()):
        if not isinstance(_at(cfg, sub), dict):
            raise ModelError(f"{cfg_file}: missing sub-config '{sub}' required by model_type {model_type!r}")
    text_at = _TEXT_CONFIG.get(model_type, "")
    missing = [k for k in _SIZE_KEYS if k not in _at(cfg, text_at)]
    if missing:
        where = f"'{text_at}'" if text_at else "the top level"
        raise ModelError(f"{cfg_file}: missing {', '.join(repr(k) for k in missing)} in {where}")
    return model_type


def _at(cfg: dict, dotted: str):
    """cfg at a dotted path ('' = cfg itself); None where a level is missing or not a mapping."""
    node = cfg
    for part in filter(None, dotted.split(".")):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _check_weights(path: Path, model_type: str) -> None:
    """Refuse folders whose weights are pickles only (told by names: no pickle is opened), and
    truncated or corrupt safetensors files (their headers are read, no tensor data)."""
    names = sorted(p.name for p in path.iterdir())
    safetensors = [n for n in names if n.startswith("model") and n.endswith(".safetensors")]
    for n in safetensors:
        tensor_shapes(path / n)
    if safetensors or "model.safetensors.index.json" in names:
        return
    pickled = [n for n in names if n.startswith("pytorch_model") and n.endswith((".bin", ".bin.index.json"))]
    if not pickled:
        raise ModelError(f"{path}: no model weights (model.safetensors or model-*-of-*.safetensors) in this folder")
    cls = _LOADER_CLASS.get(model_type, "AutoModelForCausalLM")
    raise ModelError(
        f"{path}: only pickled weights ({', '.join(pickled)}), which are refused because unpickling can run "
        f"code; convert them once where you trust the file: python -c \"from transformers import {cls}; "
        f"{cls}.from_pretrained('{path}', use_safetensors=False).save_pretrained('{path}')\" "
        "(writes model.safetensors)"
    )


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header (no data read); ModelError naming a corrupt file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # SafetensorError (truncated, garbage), OSError: all mean "not a usable file"
        raise ModelError(f"{path}: corrupted or unreadable safetensors file ({first_line(e)})") from e


def _strict_from_pretrained(from_pretrained, source: str, **kw):
    """`from_pretrained(source, **kw)` (offline) that raises ModelError naming `source` and the first
    keys when the load report shows a missing, unexpected or wrongly shaped tensor (the allow-list aside)."""
    try:
        model, info = from_pretrained(source, local_files_only=True, output_loading_info=True, **kw)
    except RuntimeError as e:  # a shape mismatch raises without naming the keys (they are in the report)
        model, info = _failed_load(e)
        if not info or not info["mismatched_keys"]:
            raise
    problems = _load_problems(model, info)
    if problems:
        raise ModelError(f"{source}: weights: {'; '.join(problems)}")
    return model


def _failed_load(e: RuntimeError) -> tuple:
    """(model, load report as a dict) held by the transformers frame that raised `e` (its load report
    function raises on a shape mismatch with `ignore_mismatched_sizes` off); (None, None) elsewhere."""
    from transformers.utils.loading_report import LoadStateDictInfo

    tb = e.__traceback__
    while tb is not None:
        info = tb.tb_frame.f_locals.get("loading_info")
        if isinstance(info, LoadStateDictInfo):
            return tb.tb_frame.f_locals.get("model"), info.to_dict()
        tb = tb.tb_next
    return None, None


def _load_problems(model, info: dict) -> list[str]:
    """What the load report `info` shows wrong beyond the allow-list, one phrase per kind."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or ())
    unexpected_ok = ALLOWED_UNEXPECTED + (() if getattr(model, "has_talker", False) else (UNUSED_OMNI_PARTS,))
    missing = sorted(k for k in info["missing_keys"]
                     if k not in tied and not any(re.search(p, k) for p in ALLOWED_MISSING))
    unexpected = sorted(k for k in info["unexpected_keys"] if not any(re.search(p, k) for p in unexpected_ok))
    mismatched = sorted(info["mismatched_keys"])
    problems = []
    if missing:
        problems.append(f"{_count(missing, 'missing tensor')} ({_first(missing)})")
    if unexpected:
        problems.append(f"{_count(unexpected, 'unexpected tensor')} ({_first(unexpected)})")
    if mismatched:
        key, saved, expected = mismatched[0]
        more = ", ..." if len(mismatched) > 1 else ""
        problems.append(f"{_count(mismatched, 'tensor')} of the wrong shape ({key}: {tuple(saved)} in the "
                        f"checkpoint, {tuple(expected)} in the model{more})")
    return problems


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_full_omni(model_dir: str | Path, trust_remote_code: bool = False, **kw):
    """(Qwen2_5OmniForConditionalGeneration in eval mode on CPU, Qwen2_5OmniAdapter on its thinker) from a
    full checkpoint folder (thinker + talker + token2wav); fp32 with sdpa unless `kw` says otherwise.
    With `enable_audio_output=False` only the thinker is built, and `spk_dict.pt` is not needed."""
    from transformers import Qwen2_5OmniForConditionalGeneration as Full

    kw = {"dtype": torch.float32, "attn_implementation": "sdpa", "use_safetensors": True, **kw}
    try:
        # The class's own from_pretrained (the generic one, then loading the talker's voices) fails when
        # asked for the load report, so the generic one is called and the voices are loaded here.
        full = _strict_from_pretrained(super(Full, Full).from_pretrained, str(model_dir),
                                       trust_remote_code=trust_remote_code, **kw)
        if full.has_talker:
            speakers = Path(model_dir) / "spk_dict.pt"
            if not speakers.is_file():
                raise ModelError(f"{speakers}: missing (the talker's voices, part of a full Qwen2.5-Omni checkpoint)")
            full.load_speakers(str(speakers))
        return full.eval(), _omni_adapter(full.thinker, str(model_dir), trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{model_dir}: cannot load the full Qwen2.5-Omni model ({first_line(e)})") from e


def _load_omni(source: str, model_type: str, kw: dict) -> ModelAdapter:
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    if model_type == "qwen2_5_omni":  # full model (thinker + talker + token2wav): keep only the thinker
        return load_full_omni(source, enable_audio_output=False, **kw)[1]
    thinker = _strict_from_pretrained(Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained, source, **kw)
    return _omni_adapter(thinker, source, kw["trust_remote_code"])


def _omni_adapter(thinker, source: str, trust_remote_code: bool) -> ModelAdapter:
    """A Qwen2_5OmniAdapter on `thinker` with the tokenizer and image normalization of folder `source`."""
    from transformers import AutoTokenizer

    from omnimem_train.models.qwen2_5_omni import CLIP_MEAN, CLIP_STD, Qwen2_5OmniAdapter

    tok = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
    pre = _preprocessor_config(source)
    adapter = Qwen2_5OmniAdapter(thinker, tok, pre.get("image_mean", CLIP_MEAN), pre.get("image_std", CLIP_STD),
                                 name=source)
    adapter.model_dir = source
    return adapter


def _load_vsalmonn(source: str, kw: dict, name: str) -> ModelAdapter:
    """A VSalmonnAdapter on the family's model (strictly loaded by `models/vsalmonn.py::load_vsalmonn`)
    with the folder's tokenizer and, where its preprocessor_config.json has them, image normalization."""
    from omnimem_train.models.vsalmonn import load_vsalmonn

    model, tok = load_vsalmonn(source, _strict_from_pretrained, **kw)
    from omnimem_train.models.vsalmonn_stream import VSalmonnAdapter

    pre = _preprocessor_config(source)
    adapter = VSalmonnAdapter(model, tok, pre.get("image_mean"), pre.get("image_std"), name=name)
    adapter.model_dir = source
    return adapter


def _load_text(source: str, kw: dict, name: str) -> ModelAdapter:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnimem_train.models.text_lm import TextLMAdapter

    gguf = kw.get("gguf_file")
    model = _strict_from_pretrained(AutoModelForCausalLM.from_pretrained, source, **kw)
    tok = AutoTokenizer.from_pretrained(source, local_files_only=True, gguf_file=gguf,
                                        trust_remote_code=kw["trust_remote_code"])
    adapter = TextLMAdapter(model, tok, name=name)
    adapter.model_dir = source
    return adapter


def _dequantize_gguf(source: str, gguf: str, kw: dict) -> tuple:
    """(model, tokenizer) read from the GGUF file `source/gguf`, every tensor de-quantized to float32
    (SmolLM2-135M: ~15 s on a CPU, most of it parsing the file; `_load_gguf` caches the result)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = _strict_from_pretrained(AutoModelForCausalLM.from_pretrained, source,
                                    **dict(kw, dtype=torch.float32, gguf_file=gguf))
    tok = AutoTokenizer.from_pretrained(source, local_files_only=True, gguf_file=gguf,
                                        trust_remote_code=kw["trust_remote_code"])
    return model, tok


def _load_gguf(path: Path, gguf: str, kw: dict, name: str) -> ModelAdapter:
    """A text LM from the GGUF file `path/gguf`, through its cached de-quantized folder: built on the
    first load (and when the file, the libraries or the cached files changed), read on later ones.
    Where the cache cannot be written, the de-quantized model is used as it is."""
    import sys

    from omnimem_train.models import gguf_cache
    from omnimem_train.models.text_lm import TextLMAdapter

    entry = gguf_cache.entry_dir(path / gguf)
    source = gguf_cache.fingerprint(path / gguf)
    why = gguf_cache.problem(entry, source)
    if why is not None:
        print(f"note: {gguf}: de-quantizing into the cache {entry}" + ("" if why == gguf_cache.ABSENT else
              f" again ({why})") + "; later loads read it", file=sys.stderr)
        model, tok = _dequantize_gguf(str(path), gguf, kw)
        try:
            gguf_cache.write(entry, source, model, tok)
        except OSError as e:
            print(f"note: {entry}: cannot cache the de-quantized weights ({first_line(e)}); set "
                  f"{gguf_cache.CACHE_ENV} to a writable folder to load faster next time", file=sys.stderr)
            adapter = TextLMAdapter(model.to(kw["dtype"]), tok, name=name)
            adapter.model_dir = str(path)
            return adapter
    return _load_text(str(entry), dict(kw, use_safetensors=True), name=name)


def _preprocessor_config(source: str) -> dict:
    f = Path(source) / "preprocessor_config.json"
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{f}: invalid JSON ({first_line(e)})") from e
