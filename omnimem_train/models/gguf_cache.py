"""De-quantized GGUF weights, cached as a safetensors model folder.

A GGUF checkpoint (the built-in SmolLM2-135M: 272 tensors) is de-quantized once; later loads read
the cached folder like any safetensors checkpoint, in about a second instead of tens of seconds.

The cache lives in `$OMNIMEM_CACHE`, else `~/.cache/omnimem-train`, one entry per GGUF file:
`gguf/<file stem>-<hash of its path>/` holds config.json, generation_config.json, the tokenizer
files, model.safetensors (the de-quantized float32 tensors, bit for bit; a tied copy is left out as
`save_pretrained` leaves it out) and `omnimem_cache.json`: the GGUF file's size, mtime and sha256,
the versions of the libraries that de-quantized it, and every cached file's size and sha256. An
entry is used only when all of them match the files now (hashing ~0.6 GB: a fraction of a second);
a changed GGUF file or library, or a corrupted or incomplete entry, is rebuilt. An entry is written
into a temp folder beside it and renamed into place, so no reader sees a half-written one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from omnimem_train.errors import first_line
from omnimem_train.utils.atomic import atomic_write_text, plain_modes

CACHE_ENV = "OMNIMEM_CACHE"
MANIFEST = "omnimem_cache.json"
WEIGHTS = "model.safetensors"
FORMAT = 1  # the entry layout; a new layout gets a new number, so an older entry is rebuilt
ABSENT = "not built yet"
STALE_S = 3600  # a temp folder this old beside an entry is a build that died: removed by the next build


def cache_root() -> Path:
    """`$OMNIMEM_CACHE`, else `~/.cache/omnimem-train`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "omnimem-train"


def entry_dir(gguf_file: str | Path) -> Path:
    """The cache folder of `gguf_file` (one per file path)."""
    path = Path(gguf_file).resolve()
    return cache_root() / "gguf" / f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def fingerprint(gguf_file: str | Path) -> dict:
    """What identifies the GGUF file's content: its path, size, mtime and sha256."""
    path = Path(gguf_file).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}


def _versions() -> dict:
    found = {"format": FORMAT}
    for package in ("transformers", "gguf"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def problem(entry: Path, source: dict) -> str | None:
    """Why the cache folder `entry` cannot serve the GGUF file with fingerprint `source` (ABSENT
    when it does not exist); None when it can."""
    if not entry.is_dir():
        return ABSENT
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{MANIFEST}: unreadable ({first_line(e)})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return f"{MANIFEST}: not a cache manifest"
    if manifest.get("versions") != _versions():
        return f"built with other library versions ({manifest.get('versions')}, now {_versions()})"
    if manifest.get("source") != source:
        return "the GGUF file changed (size, mtime or sha256)"
    files = manifest["files"]
    if not {WEIGHTS, "config.json"} <= files.keys():
        return f"{MANIFEST}: lists no {WEIGHTS} or config.json"
    for name, want in sorted(files.items()):
        f = entry / name
        if Path(name).name != name or not isinstance(want, dict):
            return f"{MANIFEST}: bad entry {name!r}"
        if not f.is_file():
            return f"{name}: missing"
        if f.stat().st_size != want.get("size") or file_sha256(f) != want.get("sha256"):
            return f"{name}: does not match its checksum (corrupted)"
    return None


def write(entry: Path, source: dict, model, tokenizer) -> Path:
    """Save the de-quantized `model` (float32) and its `tokenizer` as the cache folder `entry` of
    the GGUF file with fingerprint `source`: built in a temp folder beside it, then renamed into place."""
    from safetensors.torch import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(entry)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.mkdir()
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):  # the tensors are plain float32 now
            del config.quantization_config
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tied = set(getattr(model, "all_tied_weights_keys", None) or ())  # loaded back as ties, not tensors
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in tied}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        files = {}
        for f in sorted(tmp.iterdir()):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            files[f.name] = {"size": f.stat().st_size, "sha256": file_sha256(f)}
        manifest = {"source": source, "versions": _versions(), "files": files}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        plain_modes(tmp)
        _install(tmp, entry, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed into place
    return entry


def _remove_stale(entry: Path) -> None:
    for p in entry.parent.glob(f".{entry.name}.*"):
        try:
            if p.suffix in (".tmp", ".old") and time.time() - p.stat().st_mtime > STALE_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _install(tmp: Path, entry: Path, source: dict) -> None:
    """Rename `tmp` to `entry`. An existing `entry` is moved aside first, unless another process
    has just installed a usable one (then that one stays, and `tmp` is dropped by the caller)."""
    try:
        os.replace(tmp, entry)  # no entry (or an empty folder): one rename
        return
    except OSError:
        if not os.path.lexists(entry):
            raise
        if problem(entry, source) is None:
            return
    old = entry.with_name(f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.old")
    try:
        os.replace(entry, old)
    except FileNotFoundError:
        pass
    try:
        os.replace(tmp, entry)
    except OSError:  # another process put its own copy in place in between: keep that one
        if problem(entry, source) is not None:
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
