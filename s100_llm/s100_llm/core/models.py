"""The robot's models: list, delete, pull from the registry, import from a local source.

ROS-free. Every operation goes through the Ollama server's HTTP API (OllamaEngine); the
models directory (OLLAMA_MODELS of that server) is read directly only to measure it (sizes,
free space, which blobs an operation added) and to remove what a failed or canceled operation
left behind: Ollama keeps `-partial` files of a canceled pull for a later resume, and the
blobs of a failed import until its next start (when it prunes unreferenced blobs).

Sources an import takes (a GGUF file, a safetensors directory, a Modelfile) and the record of
which source each model was made from are in core/model_sources.py.

Threads: every function here blocks on HTTP or the disk; callers run them outside the serving
lock's hot paths (the node: in the transition or an action's thread). No module state.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set

from .engine import canonical_name
from .engine import describe
from .engine import EngineError
from .engine import OllamaEngine
from .engine import OperationCanceled
from .model_sources import ImportRecords
from .model_sources import resolve_source
from .model_sources import Source
from .model_sources import SourceError

# progress(status, completed bytes, total bytes); total 0 when unknown.
Progress = Callable[[str, int, int], None]

# Codes a ModelProblem carries (the ROS layer maps them to its result codes).
INVALID = 'invalid'       # the request or the source is at fault (name, file, architecture)
REFUSED = 'refused'       # not allowed now (e.g. the served model)
SERVER = 'server'         # the Ollama server failed or is unreachable
NO_SPACE = 'no_space'     # the models directory's disk cannot hold it
CANCELED = 'canceled'     # the caller canceled

# Bits per weight of the quantization types Ollama offers (fs/ggml/type.go ParseFileType;
# llama.cpp's figures, rounded up), for the storage guard: the quantized model's size is
# estimated from an F16 source (16 bits per weight; an F32 source is twice as big, so the
# estimate errs on the safe side). A type not listed counts as 16 bits: Ollama decides whether
# it takes it, and its refusal is the error the caller gets.
QUANT_BITS = {'q4_k_s': 4.6, 'q4_k_m': 4.9, 'q4_k': 4.9, 'q8_0': 8.5, 'f16': 16.0,
              'f32': 32.0}
# How a canceled transfer's leftovers are removed (see _remove_left_behind).
SETTLE_INTERVAL = 0.1
SETTLE_LIMIT = 5.0


class ModelProblem(Exception):
    """An operation on the models failed; code is one of the codes above, message names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One installed model as ModelInfo.msg describes it (minus served/embedding)."""

    name: str
    digest: str
    size: int
    family: str
    parameter_size: str
    quantization: str
    capabilities: List[str]
    loaded: bool


# ---- listing -------------------------------------------------------------------------------
def list_models(engine: OllamaEngine) -> List[ModelEntry]:
    """Every installed model. Cost: one /api/tags, one /api/ps, and one /api/show per model
    (capabilities are only in show): 2 + N requests."""
    tags = _call('list models', engine.client.list).models
    loaded = _loaded_names(engine)
    return [_entry(engine, tag, loaded) for tag in tags]


def model_entry(engine: OllamaEngine, name: str) -> ModelEntry:
    """One installed model (3 requests); ModelProblem 'invalid' when it is not installed."""
    wanted = canonical_name(name)
    tags = _call('list models', engine.client.list).models
    tag = next((t for t in tags if canonical_name(t.model or '') == wanted), None)
    if tag is None:
        raise ModelProblem(INVALID, f"model '{name}' not found")
    loaded = _loaded_names(engine)
    return _entry(engine, tag, loaded)


def _loaded_names(engine: OllamaEngine) -> Set[str]:
    return {canonical_name(m.model or '')
            for m in _call('list loaded models', engine.client.ps).models}


def _entry(engine: OllamaEngine, tag: Any, loaded: Set[str]) -> ModelEntry:
    name = tag.model or ''
    details = tag.details
    try:
        capabilities = list(engine.client.show(name).capabilities or [])
    except Exception as error:  # a model removed between list and show, a dead server
        raise ModelProblem(SERVER, _describe(error, f'show {name}')) from None
    return ModelEntry(
        name=name, digest=tag.digest or '', size=int(tag.size or 0),
        family=(details.family if details else '') or '',
        parameter_size=(details.parameter_size if details else '') or '',
        quantization=(details.quantization_level if details else '') or '',
        capabilities=capabilities, loaded=canonical_name(name) in loaded)


# ---- storage -------------------------------------------------------------------------------
def models_size(models_dir: str) -> int:
    """Bytes of every blob in models_dir (what the models take on disk; partial downloads
    included, since they take space too); 0 for a missing directory."""
    return sum(size for size in _blob_files(models_dir).values())


def free_space(models_dir: str) -> int:
    """Free bytes on the file system of models_dir (of its nearest existing parent when it
    does not exist yet)."""
    path = pathlib.Path(models_dir).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _blob_files(models_dir: str) -> Dict[str, int]:
    """File name -> size of every file in models_dir/blobs."""
    blobs = pathlib.Path(models_dir) / 'blobs'
    try:
        entries = list(os.scandir(blobs))
    except FileNotFoundError:
        return {}
    sizes = {}
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:   # removed meanwhile (a pull finishing a partial file)
            continue
    return sizes


def referenced_blobs(models_dir: str) -> Set[str]:
    """Blob file names ('sha256-<hex>') that some manifest in models_dir references."""
    names: Set[str] = set()
    manifests = pathlib.Path(models_dir) / 'manifests'
    for path in manifests.rglob('*'):
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_bytes())
            layers = list(manifest.get('layers') or []) + [manifest.get('config') or {}]
        except (OSError, ValueError, AttributeError):
            continue    # not a manifest (Ollama skips those too)
        names.update(str(layer.get('digest', '')).replace(':', '-') for layer in layers
                     if isinstance(layer, dict))
    return names


def _remove_new_blobs(models_dir: str, before: Iterable[str]) -> int:
    """Remove the blob files (partial or whole) that were not in `before` and that no manifest
    references: what an operation left behind. Returns the bytes removed."""
    kept = set(before) | referenced_blobs(models_dir)
    removed = 0
    for name, size in _blob_files(models_dir).items():
        if name not in kept:
            try:
                os.unlink(pathlib.Path(models_dir) / 'blobs' / name)
                removed += size
            except FileNotFoundError:
                pass
    return removed


def _remove_unreferenced(models_dir: str, names: Set[str]) -> None:
    """Remove the blob files `names` that no manifest references."""
    for name in names - referenced_blobs(models_dir):
        (pathlib.Path(models_dir) / 'blobs' / name).unlink(missing_ok=True)


def _remove_left_behind(models_dir: str, before: Iterable[str]) -> int:
    """_remove_new_blobs after a stream was closed: the server notices the closed connection
    at its next write and may open the next layer's file meanwhile, so remove until two scans
    a moment apart find nothing new (bounded: SETTLE_LIMIT seconds)."""
    removed = 0
    deadline = time.monotonic() + SETTLE_LIMIT
    previous: Optional[Dict[str, int]] = None
    while True:
        removed += _remove_new_blobs(models_dir, before)
        current = _blob_files(models_dir)
        if current == previous or time.monotonic() > deadline:
            return removed
        previous = current
        time.sleep(SETTLE_INTERVAL)


def _guard(models_dir: str, needed: int, what: str) -> None:
    free = free_space(models_dir)
    if needed > free:
        raise ModelProblem(NO_SPACE, f'{what} needs {_size(needed)} and models_dir '
                                     f"'{models_dir}' has only {_size(free)} free")


def _size(count: int) -> str:
    return f'{count / 1024 ** 3:.2f} GiB' if count >= 1024 ** 3 else f'{count / 1024 ** 2:.1f} MiB'


# ---- delete --------------------------------------------------------------------------------
def delete_model(engine: OllamaEngine, name: str) -> int:
    """Delete an installed model; returns the bytes freed, measured as the blob files of the
    engine's models_dir that went away (blobs another model shares stay, so they are not
    counted; 0 when the engine was given no models_dir)."""
    models_dir = engine.models_dir
    before = _blob_files(models_dir) if models_dir else {}
    try:
        engine.client.delete(name)
    except Exception as error:
        status = getattr(error, 'status_code', 0)
        if status == 404:
            raise ModelProblem(INVALID, f"model '{name}' not found") from None
        if status == 400:
            raise ModelProblem(INVALID, _describe(error, f'delete {name}')) from None
        raise ModelProblem(SERVER, _describe(error, f'delete {name}')) from None
    after = _blob_files(models_dir) if models_dir else {}
    if models_dir:
        _forget(models_dir, name)
    return sum(size for blob, size in before.items() if blob not in after)


def _forget(models_dir: str, name: str) -> None:
    """The model is gone or no longer made from a recorded source: drop its record, so that
    an activate with model_source imports it again."""
    records = ImportRecords(models_dir)
    if records.imported_from(name):
        records.forget(name)
        records.save()


# ---- pull ----------------------------------------------------------------------------------
def pull_model(engine: OllamaEngine, name: str, models_dir: str, progress: Progress,
               canceled: threading.Event) -> ModelEntry:
    """Pull from the registry with progress. Ollama tells each layer's size only in its
    progress lines (the manifest is fetched inside the server), so the storage guard runs at
    each new layer's first line: the bytes still to come of every layer seen so far against
    the free space; when they do not fit the pull is stopped before that layer is written
    further. A cancel (or a refusal) closes the stream, which makes Ollama stop the transfer,
    and removes the blobs this pull added that no model references (Ollama keeps `-partial`
    files for a resume, which this node does not do)."""
    before = set(_blob_files(models_dir))
    totals: Dict[str, int] = {}
    done: Dict[str, int] = {}
    stream = None
    try:
        stream = engine.client.pull(name, stream=True)
        for line in stream:
            if canceled.is_set():
                raise ModelProblem(CANCELED, f"pull of '{name}' canceled")
            if line.digest and line.total:
                fresh = line.digest not in totals
                totals[line.digest] = int(line.total)
                done[line.digest] = int(line.completed or 0)
                if fresh:
                    remaining = sum(totals[d] - done[d] for d in totals)
                    _guard(models_dir, remaining, f"pulling '{name}'")
            progress(line.status or '', sum(done.values()), sum(totals.values()))
        if canceled.is_set():
            raise ModelProblem(CANCELED, f"pull of '{name}' canceled")
    except ModelProblem:
        _close(stream)
        _remove_left_behind(models_dir, before)
        raise
    except Exception as error:
        _close(stream)
        _remove_left_behind(models_dir, before)
        raise _server_problem(error, f'pull {name}') from None
    _forget(models_dir, name)
    return model_entry(engine, name)


def _close(stream: Any) -> None:
    """Close a streaming response (the HTTP connection closes: Ollama stops the work)."""
    close = getattr(stream, 'close', None)
    if close is not None:
        close()


# ---- import --------------------------------------------------------------------------------
def import_model(engine: OllamaEngine, name: str, source: str, quantize: str, models_dir: str,
                 progress: Progress, canceled: threading.Event,
                 records: Optional['ImportRecords'] = None) -> ModelEntry:
    """Create model `name` from a local source (see the module docstring): upload each file
    as a blob by its sha256 (skipping blobs the server has), then /api/create with the files,
    the Modelfile's template/system/parameters/license and quantize; the source digest is
    recorded for the model (ImportRecords; a pull or delete of the name drops it). Storage
    guard first: the bytes to upload, plus the converted model for a safetensors source (about
    its size), plus the quantized model (estimated from the type's bits per weight). On
    failure or cancel the blobs this import added that no model references are removed. Only
    the local server is contacted. After success, uploaded blobs the new model does not
    reference (the source of a quantization) are removed too. records: the digest cache (a
    fresh one from models_dir when None)."""
    records = records if records is not None else ImportRecords(models_dir)
    try:
        resolved = resolve_source(source)
    except SourceError as error:
        raise ModelProblem(INVALID, str(error)) from None
    quantize = quantize.strip()
    try:
        digests = {file: 'sha256:' + records.file_digest(path, canceled)
                   for file, path in resolved.files.items()}
    except OperationCanceled:
        raise ModelProblem(CANCELED, f"import of '{name}' canceled") from None
    except OSError as error:    # a file the node may not read, or gone since resolve_source
        raise ModelProblem(INVALID, f"model_source '{source}': {error.filename} cannot be "
                                    f'read: {error.strerror}') from None
    missing = {file: path for file, path in resolved.files.items()
               if not engine.has_blob(digests[file])}
    upload = sum(os.path.getsize(path) for path in missing.values())
    needed = upload + (resolved.size if resolved.kind == 'safetensors' else 0)
    if quantize:
        needed += int(resolved.size * QUANT_BITS.get(quantize.lower(), 16.0) / 16)
    _guard(models_dir, needed, f"importing '{name}' from '{source}'")
    before = set(_blob_files(models_dir))
    total, sent = upload, [0]
    try:
        for file, path in missing.items():
            def step(count: int, file: str = file) -> None:
                sent[0] += count
                progress(f'uploading {file}', sent[0], total)
            engine.upload_blob(path, digests[file], step, canceled)
        _create(engine, name, resolved, digests, quantize, progress, canceled)
    except ModelProblem:
        _remove_left_behind(models_dir, before)
        raise
    except OperationCanceled:
        _remove_left_behind(models_dir, before)
        raise ModelProblem(CANCELED, f"import of '{name}' canceled") from None
    except Exception as error:
        _remove_left_behind(models_dir, before)
        raise _server_problem(error, f'import {name}') from None
    # A quantized or converted model does not reference the uploaded source blobs: Ollama
    # would prune them at its next start only (and never with OLLAMA_NOPRUNE). Only those:
    # other new blobs may be a concurrent pull's (activate's, an operator's), written before
    # its manifest references them.
    _remove_unreferenced(models_dir, {digests[file].replace(':', '-') for file in missing})
    try:
        records.record(name, records.source_digest(source, quantize))
    except (SourceError, OSError):
        pass    # the source changed meanwhile: the next activate compares and imports again
    records.save()
    return model_entry(engine, name)


def _create(engine: OllamaEngine, name: str, source: Source, digests: Dict[str, str],
            quantize: str, progress: Progress, canceled: threading.Event) -> None:
    modelfile = source.modelfile
    request: Dict[str, Any] = {'files': digests}
    for field in ('template', 'system'):
        if getattr(modelfile, field) is not None:
            request[field] = getattr(modelfile, field)
    if modelfile.parameters:
        request['parameters'] = modelfile.parameters
    if modelfile.license:
        request['license'] = modelfile.license
    if quantize:
        request['quantize'] = quantize
    stream = engine.client.create(name, stream=True, **request)
    try:
        for line in stream:
            if canceled.is_set():
                raise ModelProblem(CANCELED, f"import of '{name}' canceled")
            progress(line.status or '', int(line.completed or 0), int(line.total or 0))
    finally:
        _close(stream)


def _server_problem(error: BaseException, what: str) -> ModelProblem:
    """A ModelProblem for an Ollama failure, its code from what Ollama said: a full disk
    (ENOSPC: 'no space left on device') is no_space, a 400 or a refusal of the input is
    invalid, anything else the server's."""
    text = _describe(error, what)
    if 'no space left on device' in text:
        return ModelProblem(NO_SPACE, text)
    status = getattr(error, 'status_code', 0)
    if status in (400, 404) or (status == -1 and _input_fault(text)):
        return ModelProblem(INVALID, text)
    return ModelProblem(SERVER, text)


def _input_fault(text: str) -> bool:
    """Errors Ollama reports mid-stream that are the source's fault, not the server's."""
    return any(word in text for word in (
        'unsupported architecture', 'quantization is only supported', 'invalid file magic',
        'unsupported content type', 'unsupported quantization type', 'exceeds file size',
        'not in GGUF format', 'not found', 'unknown type', 'invalid', 'unexpected EOF',
        'file does not exist'))


def _describe(error: BaseException, what: str) -> str:
    if isinstance(error, EngineError):
        return str(error)
    return describe(error, what)


def _call(what: str, function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as error:
        raise ModelProblem(SERVER, _describe(error, what)) from None
