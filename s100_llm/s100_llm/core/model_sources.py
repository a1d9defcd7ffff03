"""Import sources: what a local model source is made of, and the record of imports.

ROS-free. A source (`resolve_source`) is a GGUF file, a safetensors model directory
(config.json + *.safetensors + tokenizer files) or a Modelfile (`parse_modelfile`: FROM a GGUF
file or a safetensors directory, relative to the Modelfile, TEMPLATE, SYSTEM, PARAMETER,
LICENSE, as Ollama's docs/modelfile.md describes them; no maintained Modelfile parser exists on
PyPI, only a linter). ImportRecords keeps, under models_dir, which source digest each model
was created from and the sha256 of source files by (path, size, mtime_ns).
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import stat
import tempfile
import threading
from typing import Any, Dict, List, Optional, Tuple

from .engine import canonical_name
from .engine import OperationCanceled

# The files of a safetensors model directory that Ollama's CLI uploads for `ollama create`
# (parser/parser.go filesForModel): the weights (model*.safetensors, else
# consolidated*.safetensors), the JSON configs and tokenizer, a chat template, tokenizer.model.
SAFETENSORS_WEIGHTS = (('model*.safetensors', '*/model*.safetensors'),
                       ('consolidated*.safetensors',))
SAFETENSORS_EXTRAS = ('*.json', '*/*.json', 'chat_template.jinja', 'tokenizer.model',
                      '*/tokenizer.model')
GGUF_MAGIC = b'GGUF'
RECORD_DIR = 's100_llm'        # the node's own directory under models_dir (Ollama ignores it)
RECORD_FILE = 'imports.json'


class SourceError(ValueError):
    """A source cannot be used; the message says why (unreadable, not a model, ...)."""


@dataclasses.dataclass
class Modelfile:
    """The lines of a Modelfile this node uses (Ollama's docs/modelfile.md grammar)."""

    source: str = ''            # FROM: a path (made absolute) or an installed model's name
    template: Optional[str] = None
    system: Optional[str] = None
    license: List[str] = dataclasses.field(default_factory=list)  # noqa: A003 (LICENSE)
    parameters: Dict[str, Any] = dataclasses.field(default_factory=dict)


def parse_modelfile(text: str, directory: str) -> Modelfile:
    """Parse a Modelfile: `INSTRUCTION arguments` lines, case-insensitive instructions,
    `#` comments, arguments in double quotes or in three double quotes (which may span
    lines). A FROM path relative to the Modelfile is made absolute (Ollama resolves it
    relative to the Modelfile too). PARAMETER stop may repeat (a list). Raises ValueError
    naming the line of a malformed instruction."""
    result = Modelfile()
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index].strip()
        index += 1
        if not line or line.startswith('#'):
            continue
        command, _, argument = line.partition(' ')
        command, argument = command.upper(), argument.strip()
        if argument.startswith('"""'):
            body = argument[3:]
            while '"""' not in body:
                if index >= len(lines):
                    raise ValueError(f'line {number}: unterminated """')
                body += '\n' + lines[index]
                index += 1
            argument = body[:body.index('"""')]
        elif len(argument) >= 2 and argument[0] == argument[-1] == '"':
            argument = argument[1:-1]
        if command == 'FROM':
            result.source = _from_path(argument, directory)
        elif command == 'TEMPLATE':
            result.template = argument
        elif command == 'SYSTEM':
            result.system = argument
        elif command == 'LICENSE':
            result.license.append(argument)
        elif command == 'PARAMETER':
            key, _, value = argument.partition(' ')
            if not key or not value.strip():
                raise ValueError(f'line {number}: PARAMETER needs a name and a value')
            _add_parameter(result.parameters, key.lower(), value.strip())
        elif command in ('ADAPTER', 'MESSAGE', 'REQUIRES'):
            raise ValueError(f'line {number}: {command} is not supported by this node')
        else:
            raise ValueError(f'line {number}: unknown instruction {command!r}')
    if not result.source:
        raise ValueError('no FROM line')
    return result


def _from_path(argument: str, directory: str) -> str:
    """FROM's argument: a path (relative to the Modelfile's directory) when it names an
    existing file or directory or looks like a path, else an installed model's name."""
    candidate = os.path.expanduser(argument)
    if not os.path.isabs(candidate):
        candidate = os.path.join(directory, candidate)
    if os.path.exists(candidate) or argument.startswith(('.', '/', '~')):
        return os.path.normpath(candidate)
    return argument


def _add_parameter(parameters: Dict[str, Any], key: str, value: str) -> None:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    parsed: Any = value
    for kind in (int, float):
        try:
            parsed = kind(value)
            break
        except ValueError:
            continue
    if value.lower() in ('true', 'false'):
        parsed = value.lower() == 'true'
    if key == 'stop':
        parameters.setdefault('stop', []).append(value)
    else:
        parameters[key] = parsed


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved import source: the files to upload (name in the request -> path)."""

    kind: str                   # 'gguf' | 'safetensors'
    files: Dict[str, str]
    modelfile: Modelfile

    @property
    def size(self) -> int:
        return sum(os.path.getsize(path) for path in self.files.values())


def resolve_source(source: str, modelfile_allowed: bool = True) -> Source:
    """What to upload for `source`; SourceError naming why it cannot be used. A Modelfile's
    FROM is resolved with modelfile_allowed False: it names weights (Ollama's FROM takes no
    Modelfile), so a FROM naming another Modelfile, or itself, is refused, not followed."""
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        return Source('safetensors', _safetensors_files(path), Modelfile(source=path))
    try:
        raw = _read_regular(path, source, 1024 * 1024 + 1)  # a Modelfile is small
    except OSError as error:
        raise SourceError(f"model_source '{source}' cannot be read: "
                          f'{error.strerror}') from None
    if raw[:4] == GGUF_MAGIC:
        return Source('gguf', {os.path.basename(path): path}, Modelfile(source=path))
    if not modelfile_allowed:
        raise SourceError(f"model_source '{source}' is not a GGUF file (no GGUF magic): a "
                          "Modelfile's FROM names weights, not another Modelfile")
    modelfile = _parse_modelfile_bytes(raw, path, source)
    if not os.path.isabs(modelfile.source):
        raise SourceError(f"Modelfile '{source}': FROM {modelfile.source} names an "
                          'installed model, not a local file: importing needs '
                          'weights to upload')
    inner = resolve_source(modelfile.source, modelfile_allowed=False)
    return Source(inner.kind, inner.files, modelfile)


def _read_regular(path: str, source: str, limit: int) -> bytes:
    """The first `limit` bytes of a regular file. Opened without blocking and checked before
    reading: a FIFO would block the open (or the read) until some writer came, a device
    (/dev/zero) is no model file."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise SourceError(f"model_source '{source}' is not a model: neither a regular "
                              'file nor a directory (a FIFO, a device or a socket)')
        return handle.read(limit)


def _parse_modelfile_bytes(raw: bytes, path: str, source: str) -> Modelfile:
    try:
        if len(raw) > 1024 * 1024:
            raise ValueError('too large')
        text = raw.decode('utf-8')
        return parse_modelfile(text, os.path.dirname(path))
    except (UnicodeDecodeError, ValueError) as error:
        raise SourceError(f"model_source '{source}' is not a model: neither a GGUF "
                          f'file (no GGUF magic) nor a Modelfile ({error})') from None


def _safetensors_files(directory: str) -> Dict[str, str]:
    root = pathlib.Path(directory)

    def matching(patterns: Tuple[str, ...]) -> Dict[str, str]:
        return {str(p.relative_to(root)): str(p) for pattern in patterns
                for p in sorted(root.glob(pattern)) if p.is_file()}
    weights = next((found for found in map(matching, SAFETENSORS_WEIGHTS) if found), {})
    files = {**weights, **matching(SAFETENSORS_EXTRAS)}
    if not weights or 'config.json' not in files:
        raise SourceError(f"model_source '{directory}' is not a model: a directory needs "
                          'config.json and model*.safetensors (or consolidated*.safetensors) '
                          'files')
    return files


# ---- source digests and the record of imports ----------------------------------------------
class ImportRecords:
    """The node's record file, models_dir/s100_llm/imports.json: which source digest each
    model was created from (so a changed source is imported again), and the sha256 of source
    files by (path, size, mtime_ns) (so an unchanged multi-GB GGUF is not read again at every
    activate: a file whose size and modification time are unchanged is taken as unchanged, as
    make and rsync do). It lives under models_dir because it describes what is in there and
    travels with it; Ollama leaves files outside blobs/ and manifests/ alone. Not thread-safe:
    one user at a time (the serving lock)."""

    def __init__(self, models_dir: str) -> None:
        self.path = pathlib.Path(models_dir) / RECORD_DIR / RECORD_FILE
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        # A damaged or foreign file loses the entries that are not of the shape written here
        # (it is a cache: a lost entry means one more import or hash, never a failure).
        data = data if isinstance(data, dict) else {}
        models, hashes = data.get('models'), data.get('hashes')
        self.models: Dict[str, str] = {
            name: digest for name, digest in (models if isinstance(models, dict) else {}).items()
            if isinstance(digest, str)}
        self.hashes: Dict[str, List[Any]] = {
            path: entry for path, entry in (hashes if isinstance(hashes, dict) else {}).items()
            if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str)}
        self._dirty = False

    def file_digest(self, path: str, canceled: Optional[threading.Event] = None) -> str:
        """sha256 hex of a file's bytes, from the cache when its size and mtime match. Reading
        a multi-GB file takes seconds to minutes: `canceled` is checked after each MiB
        (OperationCanceled)."""
        real = os.path.realpath(path)
        info = os.stat(real)
        cached = self.hashes.get(real)
        if cached and cached[0] == info.st_size and cached[1] == info.st_mtime_ns:
            return str(cached[2])
        digest = hashlib.sha256()
        with open(real, 'rb') as handle:
            for piece in iter(lambda: handle.read(1 << 20), b''):
                if canceled is not None and canceled.is_set():
                    raise OperationCanceled(f"reading '{path}' canceled")
                digest.update(piece)
        self.hashes[real] = [info.st_size, info.st_mtime_ns, digest.hexdigest()]
        self._dirty = True
        return digest.hexdigest()

    def source_digest(self, source: str, quantize: str = '',
                      canceled: Optional[threading.Event] = None) -> str:
        """The content of a source: the sha256 over its files' names and digests, the
        Modelfile's instructions and the quantization (canceled: as file_digest's)."""
        resolved = resolve_source(source)
        summary = {'kind': resolved.kind, 'quantize': quantize.strip().lower(),
                   'files': {file: self.file_digest(path, canceled)
                             for file, path in sorted(resolved.files.items())},
                   'template': resolved.modelfile.template,
                   'system': resolved.modelfile.system,
                   'license': resolved.modelfile.license,
                   'parameters': resolved.modelfile.parameters}
        return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()

    def imported_from(self, model: str) -> str:
        return self.models.get(canonical_name(model), '')

    def record(self, model: str, digest: str) -> None:
        self.models[canonical_name(model)] = digest
        self._dirty = True

    def forget(self, model: str) -> None:
        self.models.pop(canonical_name(model), None)
        self._dirty = True

    def save(self) -> None:
        """Write the file if anything changed (atomically: a crash leaves the old one). The
        temporary file is a new one of this call's (never a file found there, which may be a
        symlink or another writer's) and is removed when the write fails (a full disk), so
        nothing partial stays; the OSError is raised."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({'models': self.models, 'hashes': self.hashes}, indent=1,
                          sort_keys=True)
        with tempfile.NamedTemporaryFile('w', dir=self.path.parent, prefix=RECORD_FILE,
                                         suffix='.tmp', delete=False) as temporary:
            try:
                temporary.write(text)
                temporary.close()
                os.replace(temporary.name, self.path)
            except BaseException:
                os.unlink(temporary.name)
                raise
        self._dirty = False
