"""The models directory in Ollama's layout: content-addressed blobs plus one manifest per model.

$OLLAMA_MODELS/blobs/sha256-<hex>            (sha256-<hex>-partial while pulling)
$OLLAMA_MODELS/manifests/registry.ollama.ai/library/<model>/<tag>
"""

import asyncio
import dataclasses
import datetime
import errno
import hashlib
import json
import os
import pathlib
import re
from typing import AsyncIterator, Dict, List, Optional, Tuple

from . import catalog

REGISTRY = 'registry.ollama.ai'
NAMESPACE = 'library'
MEDIA_MODEL = 'application/vnd.ollama.image.model'
MEDIA_TEMPLATE = 'application/vnd.ollama.image.template'
MEDIA_LICENSE = 'application/vnd.ollama.image.license'
MEDIA_PARAMS = 'application/vnd.ollama.image.params'
MEDIA_SYSTEM = 'application/vnd.ollama.image.system'
MEDIA_CONFIG = 'application/vnd.docker.container.image.v1+json'
MEDIA_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
_NAME_PART = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$')
PULL_CHUNK = 4 * 1024 * 1024


class DigestMismatch(ValueError):
    """An uploaded blob whose bytes do not have the digest it was sent under."""


class InvalidName(ValueError):
    """Ollama answers a malformed model name with 400 'invalid model name'."""


class ModelNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")


@dataclasses.dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> 'ModelName':
        """Complete a name like Ollama: 'echo' -> registry.ollama.ai/library/echo:latest."""
        rest, _, tag = text.partition(':') if text.count(':') == 1 else (text, '', '')
        if text.count(':') > 1:
            raise InvalidName('invalid model name')
        parts = rest.split('/')
        if len(parts) > 3 or not all(parts):
            raise InvalidName('invalid model name')
        host, namespace = REGISTRY, NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            model = parts[0]
        tag = tag or 'latest'
        for part in (namespace, model, tag):
            if not _NAME_PART.match(part):
                raise InvalidName('invalid model name')
        # Ollama's isValidPart: every part starts with a letter, digit or underscore (so a host
        # '..' cannot lead a manifest path out of manifests/).
        if not re.match(r'^[A-Za-z0-9_][A-Za-z0-9_.-]*(:\d+)?$', host):
            raise InvalidName('invalid model name')
        return cls(host, namespace, model.lower(), tag)

    @property
    def short(self) -> str:
        """The name Ollama shows: 'model:tag' for the default registry and namespace."""
        if (self.host, self.namespace) == (REGISTRY, NAMESPACE):
            return f'{self.model}:{self.tag}'
        return f'{self.host}/{self.namespace}/{self.model}:{self.tag}'


@dataclasses.dataclass(frozen=True)
class InstalledModel:
    name: ModelName
    manifest: Dict
    manifest_digest: str
    modified_at: datetime.datetime

    @property
    def size(self) -> int:
        return sum(layer['size'] for layer in self.manifest['layers'])

    def layer(self, media_type: str) -> Optional[Dict]:
        return next((layer for layer in self.manifest['layers']
                     if layer['mediaType'] == media_type), None)


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec='microseconds').replace(
        '+00:00', 'Z')


def digest_of(data: bytes) -> str:
    return 'sha256:' + hashlib.sha256(data).hexdigest()


class ModelStore:
    def __init__(self, root: pathlib.Path, disk_free: Optional[int] = None,
                 pull_rate: float = 0.0) -> None:
        self.root = root
        self.blobs = root / 'blobs'
        self.manifests = root / 'manifests'
        # The emulated disk (OLLAMA_EMULATOR_DISK_FREE): bytes the blobs may grow by from what
        # they take now before a write fails with ENOSPC; None: the real disk's limits.
        self.disk_free = disk_free
        self.pull_rate = pull_rate  # bytes/s of a pull (OLLAMA_EMULATOR_PULL_RATE; 0: no limit)
        self._blobs_at_start = self._blobs_size()

    def _blobs_size(self) -> int:
        try:
            return sum(entry.stat().st_size for entry in os.scandir(self.blobs)
                       if entry.is_file())
        except FileNotFoundError:
            return 0

    def room_for(self, path: pathlib.Path, count: int) -> None:
        """Raise Go's ENOSPC error for `path` when writing `count` more bytes would exceed the
        emulated disk."""
        if self.disk_free is None:
            return
        if self._blobs_size() - self._blobs_at_start + count > self.disk_free:
            raise OSError(errno.ENOSPC, f'write {path}: no space left on device')

    def create_directories(self) -> None:
        """Like `ollama serve` at start: a models dir it cannot create is fatal."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> pathlib.Path:
        return self.blobs / digest.replace(':', '-')

    def manifest_path(self, name: ModelName) -> pathlib.Path:
        return self.manifests / name.host / name.namespace / name.model / name.tag

    def get(self, name: ModelName) -> InstalledModel:
        path = self.manifest_path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ModelNotFound(name.short) from None
        modified = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
        return InstalledModel(name, json.loads(raw), digest_of(raw), modified)

    def installed(self) -> List[InstalledModel]:
        models = []
        for path in sorted(self.manifests.glob('*/*/*/*')):
            host, namespace, model, tag = path.relative_to(self.manifests).parts
            models.append(self.get(ModelName(host, namespace, model, tag)))
        return models

    def read_json_blob(self, digest: str) -> Dict:
        return json.loads(self.blob_path(digest).read_bytes())

    def delete(self, name: ModelName) -> None:
        """Remove the manifest, then every blob no manifest references any more."""
        model = self.get(name)
        self.manifest_path(name).unlink()
        still_used = {layer['digest'] for other in self.installed()
                      for layer in other.manifest['layers'] + [other.manifest['config']]}
        for layer in model.manifest['layers'] + [model.manifest['config']]:
            if layer['digest'] not in still_used:
                self.blob_path(layer['digest']).unlink(missing_ok=True)

    async def pull(self, name: ModelName) -> AsyncIterator[Dict]:
        """Copy a catalog model into the store, yielding Ollama's progress lines."""
        yield {'status': 'pulling manifest'}
        entry = catalog.MODELS.get(name.short) if name.host == REGISTRY else None
        if entry is None:
            # Reported as 'pull model manifest: file does not exist'.
            raise ModelNotFound(name.short)
        layers = [
            (MEDIA_MODEL, catalog.weights_of(entry.name)),
            (MEDIA_TEMPLATE, entry.template.encode()),
            (MEDIA_LICENSE, entry.license.encode()),
        ]
        for _, data in layers:
            async for progress in self._write_blob(data):
                yield progress
        yield {'status': 'verifying sha256 digest'}
        for _, data in layers:
            if digest_of(self.blob_path(digest_of(data)).read_bytes()) != digest_of(data):
                raise OSError('digest mismatch, file must be downloaded again')
        yield {'status': 'writing manifest'}
        self.write_manifest(name, [(media, digest_of(data), len(data)) for media, data in layers],
                            entry.config())
        yield {'status': 'success'}

    def write_manifest(self, name: ModelName, layers: List[Tuple[str, str, int]],
                       config: Dict) -> None:
        """Write the config blob and the manifest of layers (media type, digest, size) whose
        blobs are in the store."""
        config_bytes = json.dumps(config, sort_keys=True).encode()
        self.blob_path(digest_of(config_bytes)).write_bytes(config_bytes)
        manifest = {
            'schemaVersion': 2,
            'mediaType': MEDIA_MANIFEST,
            'config': {'mediaType': MEDIA_CONFIG, 'digest': digest_of(config_bytes),
                       'size': len(config_bytes)},
            'layers': [{'mediaType': media, 'digest': digest, 'size': size}
                       for media, digest, size in layers],
        }
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + '.tmp')
        temporary.write_text(json.dumps(manifest))
        os.replace(temporary, path)

    def add_blob(self, data: bytes) -> str:
        """Store bytes as a blob (if not there yet); returns its digest."""
        digest = digest_of(data)
        final = self.blob_path(digest)
        if not final.exists():
            partial = final.with_name(final.name + '-partial')
            self.room_for(partial, len(data))
            partial.write_bytes(data)
            os.replace(partial, final)
        return digest

    async def receive_blob(self, digest: str, pieces: AsyncIterator[bytes]) -> None:
        """POST /api/blobs/<digest>: the bytes, streamed to disk, must have that digest. As
        Ollama (a temporary file it removes on any failure), nothing is left of a failed or
        interrupted upload."""
        final = self.blob_path(digest)
        partial = final.with_name(final.name + '-partial')
        hashed = hashlib.sha256()
        try:
            with open(partial, 'wb') as sink:
                async for piece in pieces:
                    self.room_for(partial, len(piece))
                    hashed.update(piece)
                    sink.write(piece)
            if 'sha256:' + hashed.hexdigest() != digest:
                raise DigestMismatch(f'digest mismatch, expected "{digest}", got '
                                     f'"sha256:{hashed.hexdigest()}"')
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, final)

    async def _write_blob(self, data: bytes) -> AsyncIterator[Dict]:
        digest = digest_of(data)
        status = {'status': f'pulling {digest[7:19]}', 'digest': digest, 'total': len(data)}
        final = self.blob_path(digest)
        if final.exists():
            yield dict(status, completed=len(data))
            return
        # Like Ollama, a pull that stops (a client gone, a full disk) keeps its -partial file
        # for a later resume.
        partial = final.with_name(final.name + '-partial')
        with open(partial, 'wb') as sink:
            for offset in range(0, len(data), PULL_CHUNK):
                self.room_for(partial, min(PULL_CHUNK, len(data) - offset))
                sink.write(data[offset:offset + PULL_CHUNK])
                yield dict(status, completed=min(offset + PULL_CHUNK, len(data)))
                await asyncio.sleep(min(PULL_CHUNK, len(data) - offset) / self.pull_rate
                                    if self.pull_rate else 0)
        os.replace(partial, final)
