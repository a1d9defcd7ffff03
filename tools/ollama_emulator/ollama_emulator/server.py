"""The HTTP API of `ollama serve`, on aiohttp.

Field names, status codes, error texts, NDJSON streaming and the mid-stream error line follow
Ollama (see shared/reference/ollama.md). One addition that Ollama does not have:
GET /emulator/stats reports what the server saw (client disconnects with their CLOCK_MONOTONIC
time, generations in progress), so tests can check from outside that a cancel reached it;
OLLAMA_EMULATOR_REQUEST_LOG=<file> appends every /api/chat request body, as it arrived, to a
file (one JSON line each), so tests can check the bytes a client sent.
"""

import asyncio
import contextlib
import datetime
import functools
import json
import logging
import os
import re
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import aiohttp
from aiohttp import web

from . import catalog
from . import gguf_header
from . import perception
from . import runner as runner_module
from . import structured
from . import VERSION
from .durations import DurationError
from .durations import parse_keep_alive
from .scheduler import FOREVER
from .scheduler import LoadError
from .scheduler import QueueFull
from .scheduler import Runner
from .scheduler import Scheduler
from .settings import Settings
from .store import DigestMismatch
from .store import InstalledModel
from .store import InvalidName
from .store import MEDIA_LICENSE
from .store import MEDIA_MODEL
from .store import MEDIA_PARAMS
from .store import MEDIA_SYSTEM
from .store import MEDIA_TEMPLATE
from .store import ModelName
from .store import ModelNotFound
from .store import ModelStore
from .store import rfc3339

log = logging.getLogger('ollama')
NDJSON = 'application/x-ndjson'
# Go's encoding/json writes no spaces; neither do we.
dumps = functools.partial(json.dumps, separators=(',', ':'))
# The think strings Ollama accepts (api/types.go ThinkValue).
THINK_LEVELS = ('low', 'medium', 'high', 'max')
# The types ggml.ParseFileType accepts, in the order of its error message.
QUANTIZE_TYPES = ('F32', 'F16', 'Q4_K_S', 'Q4_K_M', 'Q8_0')
# Architectures Ollama's converter knows (convert/convert.go, abridged to the common ones).
CONVERTIBLE = frozenset((
    'LlamaForCausalLM', 'MistralForCausalLM', 'MixtralForCausalLM', 'GemmaForCausalLM',
    'Gemma2ForCausalLM', 'Gemma3ForCausalLM', 'Gemma3ForConditionalGeneration',
    'Phi3ForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM', 'Qwen3MoeForCausalLM',
    'BertModel', 'NomicBertModel', 'Qwen2_5_VLForConditionalGeneration',
    'Qwen3NextForCausalLM', 'DeepseekV3ForCausalLM'))
RUNNER_EOF = 'an error was encountered while running the model: unexpected EOF'


class ClientGone(Exception):
    """The HTTP client disconnected while we were streaming to it."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def now_text() -> str:
    return rfc3339(datetime.datetime.now(datetime.timezone.utc))


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


class ChunkSink:
    """Where generation chunks go: NDJSON lines as they come, or one object at the end."""

    def __init__(self, request: web.Request, stream: bool) -> None:
        self.request = request
        self.stream = stream
        self.response: Optional[web.StreamResponse] = None
        self.collected: List[Dict[str, Any]] = []

    @property
    def started(self) -> bool:
        return self.response is not None

    async def send(self, chunk: Dict[str, Any]) -> None:
        if not self.stream:
            self.collected.append(chunk)
            return
        if self.response is None:
            self.response = web.StreamResponse(headers={'Content-Type': NDJSON})
            await self.response.prepare(self.request)
        await self.response.write(dumps(chunk).encode() + b'\n')

    async def finish(self, final: Dict[str, Any], text_field: str) -> web.StreamResponse:
        if self.stream:
            await self.send(final)
            assert self.response is not None
            await self.response.write_eof()
            return self.response
        whole = dict(final)
        if text_field == 'message':
            message = dict(final['message'])
            message['content'] = ''.join(c['message'].get('content', '') for c in self.collected)
            thinking = ''.join(c['message'].get('thinking', '') for c in self.collected)
            if thinking:
                message['thinking'] = thinking
            calls = [call for c in self.collected for call in c['message'].get('tool_calls', [])]
            if calls:
                message['tool_calls'] = calls
            whole['message'] = message
        else:
            whole['response'] = ''.join(c.get('response', '') for c in self.collected)
            thinking = ''.join(c.get('thinking', '') for c in self.collected)
            if thinking:
                whole['thinking'] = thinking
        logprobs = [entry for c in self.collected for entry in c.get('logprobs', [])]
        if logprobs:    # Ollama joins them too (writeChatResponse)
            whole['logprobs'] = logprobs
        return web.json_response(whole, dumps=dumps)


class OllamaApi:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.models_dir, settings.faults.disk_free,
                                settings.faults.pull_rate)
        self.scheduler = Scheduler(settings)
        self.tokens_streamed = 0
        self.generating = 0
        self.disconnects: List[Dict[str, Any]] = []

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024 * 1024)
        app.router.add_route('HEAD', '/', self.root)
        app.router.add_get('/', self.root, allow_head=False)
        app.router.add_get('/api/version', self.version)
        app.router.add_get('/api/tags', self.tags)
        app.router.add_get('/api/ps', self.ps)
        app.router.add_post('/api/show', self.show)
        app.router.add_route('HEAD', '/api/blobs/{digest}', self.has_blob)
        app.router.add_post('/api/blobs/{digest}', self.upload_blob)
        app.router.add_post('/api/create', self.create)
        app.router.add_post('/api/pull', self.pull)
        app.router.add_delete('/api/delete', self.delete)
        app.router.add_post('/api/chat', self.chat)
        app.router.add_post('/api/generate', self.generate)
        app.router.add_post('/api/embed', self.embed)
        app.router.add_get('/emulator/stats', self.stats)
        app.on_startup.append(lambda _app: self.scheduler.start())
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return web.json_response({'error': error.message}, status=error.status, dumps=dumps)

    # ---- helpers -------------------------------------------------------------------------
    @staticmethod
    async def _body(request: web.Request) -> Dict[str, Any]:
        raw = await request.read()
        if not raw:
            raise ApiError(400, 'missing request body')
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise ApiError(400, f'invalid character in JSON: {error}') from None
        if not isinstance(body, dict):
            raise ApiError(400, 'json: cannot unmarshal into Go value of type api.Request')
        return body

    def _keep_alive(self, body: Dict[str, Any]) -> Tuple[Optional[float], bool]:
        """The request's keep_alive (OLLAMA_KEEP_ALIVE when it has none) and whether it gave
        one; ApiError 400 for a duration Ollama refuses."""
        if body.get('keep_alive') is None:
            return self.settings.keep_alive, False
        try:
            return parse_keep_alive(body['keep_alive']), True
        except DurationError as error:
            raise ApiError(400, str(error)) from None

    def _installed(self, text: Any) -> InstalledModel:
        if not text:
            raise ApiError(400, 'model is required')
        try:
            return self.store.get(ModelName.parse(str(text)))
        except InvalidName as error:
            raise ApiError(400, str(error)) from None
        except ModelNotFound as error:
            raise ApiError(404, str(error)) from None

    def _config(self, model: InstalledModel) -> Dict[str, Any]:
        return self.store.read_json_blob(model.manifest['config']['digest'])

    def _details(self, model: InstalledModel) -> Dict[str, Any]:
        config = self._config(model)
        return {'parent_model': '', 'format': config.get('model_format', 'gguf'),
                'family': config.get('model_family', ''),
                'families': config.get('model_families', []),
                'parameter_size': config.get('model_type', ''),
                'quantization_level': config.get('file_type', '')}

    def _entry(self, model: InstalledModel) -> Optional[catalog.CatalogModel]:
        layer = model.layer(MEDIA_MODEL)
        return catalog.entry_of(model.name.short, layer['digest'] if layer else '')

    def _is_gguf(self, model: InstalledModel) -> bool:
        layer = model.layer(MEDIA_MODEL)
        assert layer is not None
        with open(self.store.blob_path(layer['digest']), 'rb') as weights:
            return weights.read(4) == catalog.GGUF_MAGIC

    def _capabilities(self, model: InstalledModel) -> List[str]:
        if self._is_gguf(model):
            entry = self._entry(model)
            capabilities = list(entry.capabilities) if entry else ['completion']
            # Ollama offers tools when the model's template renders them.
            if '.Tools' in self._template(model) and 'tools' not in capabilities:
                capabilities.append('tools')
            return capabilities
        layer = model.layer(MEDIA_MODEL)
        assert layer is not None
        return list(self.store.read_json_blob(layer['digest'])['capabilities'])

    def _template(self, model: InstalledModel) -> str:
        template = model.layer(MEDIA_TEMPLATE)
        return self.store.blob_path(template['digest']).read_text() if template else ''

    def _trained_context(self, model: InstalledModel) -> int:
        entry = self._entry(model)
        return entry.context_length if entry else self.settings.context_length

    # ---- simple endpoints ----------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text='Ollama is running')

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({'version': VERSION}, dumps=dumps)

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({'models': [{
            'name': m.name.short, 'model': m.name.short, 'modified_at': rfc3339(m.modified_at),
            'size': m.size, 'digest': m.manifest_digest[7:], 'details': self._details(m),
        } for m in self.store.installed()]}, dumps=dumps)

    async def ps(self, request: web.Request) -> web.Response:
        models = []
        for runner in self.scheduler.loaded():
            m = runner.model
            if runner.keep_alive is None:
                expires_at = FOREVER
            else:
                expires_at = runner.expires_at or (datetime.datetime.now(datetime.timezone.utc)
                                                   + datetime.timedelta(seconds=runner.keep_alive))
            models.append({
                'name': m.name.short, 'model': m.name.short, 'size': m.size,
                'digest': m.manifest_digest[7:], 'details': self._details(m),
                'expires_at': rfc3339(expires_at),
                'size_vram': 0, 'context_length': runner.context_length,
            })
        return web.json_response({'models': models}, dumps=dumps)

    def _parameters(self, model: InstalledModel) -> Dict[str, Any]:
        layer = model.layer(MEDIA_PARAMS)
        return self.store.read_json_blob(layer['digest']) if layer else {'stop': ['<|im_end|>']}

    async def show(self, request: web.Request) -> web.Response:
        """The fields Ollama 0.24 answers with (no `license`; `parameters` as aligned text)."""
        body = await self._body(request)
        model = self._installed(body.get('model') or body.get('name'))
        system = model.layer(MEDIA_SYSTEM)
        weights = model.layer(MEDIA_MODEL)
        assert weights is not None
        blob = str(self.store.blob_path(weights['digest']))
        details = dict(self._details(model), parent_model=blob)
        family = details['family'] or 'emulated'
        entry = self._entry(model)
        width = entry.embedding_length if entry else perception.EMBEDDING_DIMENSIONS
        # Go's fmt "%-30s %#v", one line per value.
        parameters = '\n'.join(
            f'{key:<30} {json.dumps(value)}' for key, values in self._parameters(model).items()
            for value in (values if isinstance(values, list) else [values]))
        return web.json_response({
            'modelfile': f'# Modelfile generated by "ollama show"\nFROM {blob}\n',
            'parameters': parameters,
            'template': self._template(model),
            'system': self.store.blob_path(system['digest']).read_text() if system else '',
            'details': details,
            'model_info': {'general.architecture': family,
                           f'{family}.context_length': self._trained_context(model),
                           f'{family}.embedding_length': width},
            'tensors': [{'name': 'token_embd.weight', 'type': details['quantization_level'],
                         'shape': [width, 49152]}],
            'capabilities': self._capabilities(model),
            'modified_at': rfc3339(model.modified_at),
        }, dumps=dumps)

    @staticmethod
    def _digest(request: web.Request) -> str:
        digest = request.match_info['digest']
        if not re.fullmatch(r'sha256[:-][0-9a-f]{64}', digest):
            raise ApiError(400, 'invalid digest format')
        return digest.replace('-', ':')

    async def has_blob(self, request: web.Request) -> web.Response:
        path = self.store.blob_path(self._digest(request))
        return web.Response(status=200 if path.is_file() else 404)

    async def upload_blob(self, request: web.Request) -> web.Response:
        digest = self._digest(request)
        if self.store.blob_path(digest).is_file():
            return web.Response(status=200)
        try:
            await self.store.receive_blob(digest, request.content.iter_chunked(1 << 20))
        except DigestMismatch as error:
            raise ApiError(400, str(error)) from None
        except OSError as error:
            raise ApiError(500, error.strerror or str(error)) from None
        return web.Response(status=201)

    async def create(self, request: web.Request) -> web.StreamResponse:
        """/api/create as Ollama: from uploaded files (GGUF files, or a safetensors model's
        files) or from an installed model (`from`), with a template, system prompt,
        parameters, license and quantize. Errors before the first status line have their
        HTTP status; later ones are the stream's last line (server/create.go)."""
        body = await self._body(request)
        name = _requested_name(body)
        sink = ChunkSink(request, body.get('stream', True) is not False)
        try:
            await self._create(body, name, sink)
        except ConnectionResetError:
            raise
        except OSError as error:     # the emulated disk is full
            error = ApiError(500, error.strerror or str(error))
            if not sink.started:
                raise error from None
            return await self._end_with(sink, error.message)
        except ApiError as error:
            if not sink.started:
                raise
            return await self._end_with(sink, error.message)
        if not sink.stream:
            return web.json_response({'status': 'success'}, dumps=dumps)
        return await self._end_with(sink, '', {'status': 'success'})

    @staticmethod
    async def _end_with(sink: ChunkSink, error: str,
                        last: Optional[Dict[str, Any]] = None) -> web.StreamResponse:
        """End a streamed answer with its last line (an error line when `error`)."""
        if not sink.stream:
            raise ApiError(500, error)
        await sink.send(last or {'error': error})
        assert sink.response is not None
        await sink.response.write_eof()
        return sink.response

    async def _create(self, body: Dict[str, Any], name: ModelName, sink: ChunkSink) -> None:
        layers: Dict[str, Tuple[str, int]] = {}
        config: Dict[str, Any] = {}
        header: Optional[gguf_header.Header] = None
        if body.get('from'):
            base = self._installed(body['from'])
            layers = {layer['mediaType']: (layer['digest'], layer['size'])
                      for layer in base.manifest['layers']}
            config = self._config(base)
            await sink.send({'status': 'using existing layers'})
        files = body.get('files') or {}
        if files:
            for file, digest in files.items():
                if file.startswith('/') or '..' in file.split('/'):
                    raise ApiError(400, 'file path must be relative')
                if not self.store.blob_path(str(digest)).is_file():
                    raise ApiError(400, f'blob {digest} not found: upload it first')
            kind = self._files_kind(files)
            if kind == 'safetensors':
                await sink.send({'status': 'converting model'})
                self._refuse_conversion(files)
            if kind != 'gguf':
                raise ApiError(400, 'unknown type')
            if len(files) != 1:
                raise ApiError(500, 'the emulator creates a model from one GGUF file only')
            (digest,) = files.values()
            await sink.send({'status': 'parsing GGUF'})
            path = self.store.blob_path(str(digest))
            try:
                header = gguf_header.read(str(path))
            except gguf_header.GGUFError as error:
                raise ApiError(500, str(error)) from None
            layers[MEDIA_MODEL] = (str(digest), path.stat().st_size)
            entry = catalog.entry_of('', str(digest))
            config = entry.config() if entry else {
                'model_format': 'gguf', 'model_family': header.architecture,
                'model_families': [header.architecture], 'model_type': '',
                'file_type': header.file_type, 'architecture': 'amd64', 'os': 'linux',
                'rootfs': {'type': 'layers', 'diff_ids': []}}
        if MEDIA_MODEL not in layers:
            raise ApiError(400, "neither 'from' or 'files' was specified")
        quantize = str(body.get('quantize') or body.get('quantization') or '').upper()
        if quantize:
            config = await self._quantize(config, quantize, sink)
            if header is not None and header.file_type != config['file_type']:
                # The quantized weights are a new blob; the emulator's keep the source's
                # tensors (same size), with the new type in the header.
                data = gguf_header.with_file_type(str(path), header, config['file_type'])
                layers[MEDIA_MODEL] = (self.store.add_blob(data), len(data))
        for field, media in (('template', MEDIA_TEMPLATE), ('system', MEDIA_SYSTEM)):
            if body.get(field):
                data = str(body[field]).encode()
                layers[media] = (self.store.add_blob(data), len(data))
        if body.get('license'):
            license_text = body['license']
            texts = license_text if isinstance(license_text, list) else [license_text]
            data = '\n'.join(str(text) for text in texts).encode()
            layers[MEDIA_LICENSE] = (self.store.add_blob(data), len(data))
        if body.get('parameters'):
            data = json.dumps(body['parameters'], sort_keys=True).encode()
            layers[MEDIA_PARAMS] = (self.store.add_blob(data), len(data))
        await sink.send({'status': 'writing manifest'})
        self.store.write_manifest(name, [(media, digest, size) for media, (digest, size)
                                         in layers.items()], config)

    def _files_kind(self, files: Dict[str, str]) -> str:
        """Ollama's detectModelTypeFromFiles: by the names' suffixes, else a GGUF's magic."""
        for file, digest in files.items():
            if file.endswith('.safetensors'):
                return 'safetensors'
            if file.endswith('.gguf'):
                return 'gguf'
            with open(self.store.blob_path(str(digest)), 'rb') as blob:
                if blob.read(4) == catalog.GGUF_MAGIC:
                    return 'gguf'
        return ''

    def _refuse_conversion(self, files: Dict[str, str]) -> None:
        """A safetensors model: Ollama converts the architectures it knows (convert/
        convert.go) and refuses the others with its message; the emulator converts none (it
        has no converter), and says so for those Ollama would convert."""
        if 'config.json' not in files:
            raise ApiError(500, 'open config.json: file does not exist')
        try:
            config = self.store.read_json_blob(files['config.json'])
            architecture = str((config.get('architectures') or [''])[0])
        except (ValueError, AttributeError, IndexError):
            raise ApiError(500, 'invalid character in config.json') from None
        if architecture not in CONVERTIBLE:
            raise ApiError(500, f'unsupported architecture "{architecture}"')
        raise ApiError(500, f'the emulator cannot convert safetensors ({architecture}); '
                            'Ollama would: create this model from a GGUF file instead')

    async def _quantize(self, config: Dict[str, Any], quantize: str,
                        sink: ChunkSink) -> Dict[str, Any]:
        """Ollama's checks (ggml.ParseFileType, then the source's type); the config with
        the new type."""
        if quantize == 'Q4_K':
            quantize = 'Q4_K_M'
        if quantize not in QUANTIZE_TYPES:
            raise ApiError(500, f'unsupported quantization type {quantize} - supported types '
                                f"are {', '.join(QUANTIZE_TYPES)}")
        source = str(config.get('file_type', ''))
        if source not in ('F16', 'BF16', 'F32'):
            raise ApiError(500, 'quantization is only supported for F16, BF16 and F32 models')
        if source != quantize:
            await sink.send({'status': f'quantizing {source} model to {quantize}'})
        return dict(config, file_type=quantize)

    async def delete(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = self._installed(body.get('model') or body.get('name'))
        self.store.delete(model.name)
        return web.Response(status=200)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({'generating': self.generating,
                                  'disconnects': self.disconnects,
                                  'pending': self.scheduler.pending}, dumps=dumps)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = _requested_name(body)
        sink = ChunkSink(request, body.get('stream', True) is not False)
        last: Dict[str, Any] = {}
        try:
            async for progress in self._pull_lines(name):
                last = progress
                if sink.stream:
                    await sink.send(progress)
        except ConnectionResetError:
            raise       # the client went away: the partial file stays, as in Ollama
        except (ModelNotFound, OSError) as error:
            failure = {'error': 'pull model manifest: file does not exist'
                       if isinstance(error, ModelNotFound) else error.strerror or str(error)}
            if isinstance(error, OSError) and error.errno is None:
                failure['error'] = str(error)
            if not sink.stream:
                raise ApiError(500, failure['error']) from None
            await sink.send(failure)
            assert sink.response is not None
            await sink.response.write_eof()
            return sink.response
        if not sink.stream:
            return web.json_response(last, dumps=dumps)
        assert sink.response is not None
        await sink.response.write_eof()
        return sink.response

    async def _pull_lines(self, name: ModelName) -> AsyncIterator[Dict[str, Any]]:
        """The store's pull, or (offline) what Ollama answers without network: the DNS
        lookup of the registry fails after 'pulling manifest'."""
        if not self.settings.faults.offline:
            async for progress in self.store.pull(name):
                yield progress
            return
        yield {'status': 'pulling manifest'}
        raise OSError(f'pull model manifest: Get "https://{name.host}/v2/{name.namespace}/'
                      f'{name.model}/manifests/{name.tag}": dial tcp: lookup {name.host}: '
                      'no such host')

    # ---- generation ----------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self.settings.request_log:
            raw = await request.read()
            with open(self.settings.request_log, 'a') as log_file:
                log_file.write(json.dumps({'path': request.path,
                                           'body': raw.decode(errors='replace')}) + '\n')
        body = await self._body(request)
        messages = body.get('messages') or []
        if not isinstance(messages, list):
            raise ApiError(400, 'messages must be a list')
        return await self._generate(request, body, messages, 'message')

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        messages = []
        if body.get('prompt'):
            if body.get('system'):
                messages.append({'role': 'system', 'content': body['system']})
            messages.append({'role': 'user', 'content': body['prompt'],
                             'images': body.get('images') or []})
        return await self._generate(request, body, messages, 'response')

    def _chunk(self, model_text: str, field: str, content: str, thinking: str,
               tool_calls: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        chunk: Dict[str, Any] = {'model': model_text, 'created_at': now_text()}
        if field == 'message':
            message: Dict[str, Any] = {'role': 'assistant', 'content': content}
            if thinking:
                message['thinking'] = thinking
            if tool_calls:
                message['tool_calls'] = tool_calls
            chunk['message'] = message
        else:
            chunk['response'] = content
            if thinking:
                chunk['thinking'] = thinking
        chunk['done'] = False
        return chunk

    async def _generate(self, request: web.Request, body: Dict[str, Any],
                        messages: List[Dict[str, Any]], field: str) -> web.StreamResponse:
        started = time.monotonic()
        model_text = str(body.get('model') or '')
        model = self._installed(model_text)
        keep_alive, keep_alive_given = self._keep_alive(body)
        capabilities = self._capabilities(model)
        requested_think = body.get('think')
        if not (requested_think is None or isinstance(requested_think, bool)
                or requested_think in THINK_LEVELS):
            raise ApiError(400, f'invalid think value: {json.dumps(requested_think)} (must be '
                                '"high", "medium", "low", "max", true, or false)')
        if requested_think not in (None, False) and 'thinking' not in capabilities:
            raise ApiError(400, f'"{model_text}" does not support thinking')
        top_logprobs = body.get('top_logprobs') or 0
        if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise ApiError(400, 'top_logprobs must be between 0 and 20')
        think = 'thinking' in capabilities and requested_think is not False
        if body.get('tools') and 'tools' not in capabilities:
            full = model.name
            raise ApiError(400, f'{full.host}/{full.namespace}/{full.model}:{full.tag} does not '
                                'support tools')
        try:
            structured.response_format(body.get('format'))
        except structured.FormatError as error:
            raise ApiError(500, str(error)) from None
        options = body.get('options') or {}
        name = model.name.short
        if not messages and keep_alive == 0 and keep_alive_given:
            if name in self.scheduler.runners:
                self.scheduler.request_unload(name)
            return web.json_response(self._final(model_text, field, 'unload', started, 0, {}),
                                     dumps=dumps)
        if 'completion' not in capabilities:
            raise ApiError(400, f'"{model_text}" does not support '
                                f"{'chat' if field == 'message' else 'generate'}")
        if 'vision' not in capabilities:
            # Older Ollama runners ignore images sent to a model that cannot see.
            messages = [{k: v for k, v in m.items() if k != 'images'} for m in messages]
        async with self._runner(model, keep_alive, keep_alive_given, options,
                                slot=bool(messages)) as (runner, load_seconds):
            if not messages:
                return web.json_response(
                    self._final(model_text, field, 'load', started, load_seconds, {}),
                    dumps=dumps)
            return await self._stream(request, body, runner, self._fit(messages, runner),
                                      think, options, field, started, load_seconds)

    @staticmethod
    def _template_kwargs(think: bool, requested: Any) -> Dict[str, Any]:
        """The runner's chat_template_kwargs, as Ollama 0.30+ sends them to llama-server:
        enable_thinking, and a level as reasoning_effort."""
        kwargs: Dict[str, Any] = {'enable_thinking': think}
        if think and isinstance(requested, str):
            kwargs['reasoning_effort'] = requested
        return kwargs

    @contextlib.asynccontextmanager
    async def _runner(self, model: InstalledModel, keep_alive: Optional[float],
                      keep_alive_given: bool, options: Dict[str, Any],
                      slot: bool) -> AsyncIterator[Tuple[Runner, float]]:
        """The model's runner, loaded if needed, and the seconds its load took; with `slot`,
        one of its OLLAMA_NUM_PARALLEL slots too. The request counts against OLLAMA_MAX_QUEUE
        until it has what it waits for."""
        try:
            self.scheduler.enter_queue()
        except QueueFull as error:
            raise ApiError(503, str(error)) from None
        queued = True
        try:
            was_loaded = model.name.short in self.scheduler.runners
            load_started = time.monotonic()
            try:
                runner = await self.scheduler.acquire(model, keep_alive, keep_alive_given,
                                                      options.get('num_ctx'),
                                                      options.get('num_thread'))
            except LoadError as error:
                log.error('error loading model: %s', error)
                raise ApiError(500, str(error)) from None
            load_seconds = 0.0 if was_loaded else time.monotonic() - load_started
            try:
                if not slot:
                    yield runner, load_seconds
                    return
                async with runner.slots:
                    self.scheduler.leave_queue()
                    queued = False
                    yield runner, load_seconds
            finally:
                self.scheduler.release(runner)
        finally:
            if queued:
                self.scheduler.leave_queue()

    async def embed(self, request: web.Request) -> web.Response:
        """/api/embed: L2-normalized vectors of one text or a list of texts."""
        started = time.monotonic()
        body = await self._body(request)
        given = body.get('input')
        if isinstance(given, str):
            inputs = [given] if given else []
        elif isinstance(given, list) and all(isinstance(text, str) for text in given):
            inputs = given
        elif given is None:
            inputs = []
        else:
            raise ApiError(400, 'invalid input type')
        model_text = str(body.get('model') or '')
        model = self._installed(model_text)
        keep_alive, keep_alive_given = self._keep_alive(body)
        async with self._runner(model, keep_alive, keep_alive_given, body.get('options') or {},
                                slot=bool(inputs)) as (runner, load_seconds):
            if not inputs:
                return web.json_response({'model': model_text, 'embeddings': []}, dumps=dumps)
            if self._is_gguf(model):
                # Ollama embeds with any model, completion-only ones too (their hidden state);
                # llama.cpp serves a model for chat or for embeddings, not both, so the
                # emulator's stand-in vectors have the model's width instead.
                entry = self._entry(model)
                width = entry.embedding_length if entry else perception.EMBEDDING_DIMENSIONS
                answer = {'data': [{'embedding': perception.embed(text, width)}
                                   for text in inputs],
                          'usage': {'prompt_tokens': sum(len(runner_module.tokenize(text))
                                                         for text in inputs)}}
                return self._embeddings(body, model_text, answer, started, load_seconds)
            session = self.scheduler.session
            assert session is not None
            truncate = body.get('truncate', True) is not False
            async with session.post(runner.url + '/v1/embeddings',
                                    json={'input': inputs, 'truncate': truncate}) as reply:
                answer = await reply.json()
            if reply.status != 200:
                raise ApiError(reply.status, answer['error']['message'])
        return self._embeddings(body, model_text, answer, started, load_seconds)

    @staticmethod
    def _embeddings(body: Dict[str, Any], model_text: str, answer: Dict[str, Any],
                    started: float, load_seconds: float) -> web.Response:
        vectors = [item['embedding'] for item in answer['data']]
        dimensions = int(body.get('dimensions') or 0)
        if 0 < dimensions < len(vectors[0]):
            vectors = [perception.normalized(vector[:dimensions]) for vector in vectors]
        return web.json_response({
            'model': model_text, 'embeddings': vectors,
            'total_duration': ns(time.monotonic() - started), 'load_duration': ns(load_seconds),
            'prompt_eval_count': answer['usage']['prompt_tokens']}, dumps=dumps)

    @staticmethod
    def _fit(messages: List[Dict[str, Any]], runner: Runner) -> List[Dict[str, Any]]:
        """Drop the oldest non-system turns until the prompt fits the context, like Ollama."""
        kept = list(messages)
        while (len(kept) > 1 and runner_module.count_prompt_tokens(kept) > runner.context_length):
            index = next((i for i, m in enumerate(kept[:-1]) if m.get('role') != 'system'), None)
            if index is None:
                break
            del kept[index]
        return kept

    def _final(self, model_text: str, field: str, reason: str, started: float,
               load_seconds: float, timings: Dict[str, Any]) -> Dict[str, Any]:
        final = self._chunk(model_text, field, '', '')
        final.update({'done': True, 'done_reason': reason})
        if reason in ('load', 'unload'):
            return final
        prompt_count = int(timings.get('prompt_n', 0))
        if self.scheduler.loads_on_request:
            # Ollama 0.2x counts the whole prompt, the tokens it reused from its cache too.
            prompt_count += int(timings.get('cache_n', 0))
        final.update({
            'total_duration': ns(time.monotonic() - started),
            'load_duration': ns(load_seconds),
            'prompt_eval_count': prompt_count,
            'prompt_eval_duration': ns(float(timings.get('prompt_ms', 0)) / 1000),
            'eval_count': int(timings.get('predicted_n', 0)),
            'eval_duration': ns(float(timings.get('predicted_ms', 0)) / 1000),
        })
        return final

    async def _stream(self, request: web.Request, body: Dict[str, Any], runner: Runner,
                      messages: List[Dict[str, Any]], think: bool, options: Dict[str, Any],
                      field: str, started: float, load_seconds: float) -> web.StreamResponse:
        model_text = str(body.get('model'))
        payload: Dict[str, Any] = {
            'messages': [_runner_message(m) for m in messages],
            'stream': True,
            'chat_template_kwargs': self._template_kwargs(think, body.get('think')),
        }
        top_logprobs = int(body.get('top_logprobs') or 0)
        if body.get('logprobs'):
            # Ollama asks llama-server for at least one alternative, and drops them unless
            # the request wanted some (llm/llama_server.go).
            payload['logprobs'] = True
            payload['top_logprobs'] = max(top_logprobs, 1)
        runner_format = structured.response_format(body.get('format'))
        if runner_format is not None:
            payload['response_format'] = runner_format
        if body.get('tools'):
            payload['tools'] = body['tools']
        for option, openai_name in (('temperature', 'temperature'), ('top_p', 'top_p'),
                                    ('top_k', 'top_k'), ('seed', 'seed'), ('stop', 'stop'),
                                    ('num_predict', 'max_tokens')):
            if options.get(option) is not None:
                payload[openai_name] = options[option]
        if isinstance(payload.get('max_tokens'), int) and payload['max_tokens'] < 0:
            del payload['max_tokens']
        sink = ChunkSink(request, body.get('stream', True) is not False)
        session = self.scheduler.session
        assert session is not None
        finish: Optional[str] = None
        timings: Dict[str, Any] = {}
        calls = ToolCallCollector()
        self.generating += 1
        upstream: Optional[aiohttp.ClientResponse] = None
        try:
            upstream = await session.post(runner.url + '/v1/chat/completions', json=payload)
            if upstream.status != 200:
                raise ApiError(500, _runner_error(await upstream.text()))
            async for raw in upstream.content:
                line = raw.strip()
                if not line.startswith(b'data: ') or line == b'data: [DONE]':
                    continue
                chunk = json.loads(line[6:])
                choice = chunk['choices'][0]
                delta = choice.get('delta') or {}
                content = delta.get('content') or ''
                thinking = delta.get('reasoning_content') or ''
                for part in delta.get('tool_calls') or []:
                    calls.add(part)
                logprobs = _ollama_logprobs(choice.get('logprobs'), top_logprobs > 0)
                if content or thinking or logprobs:
                    out = self._chunk(model_text, field, content, thinking)
                    if logprobs:
                        out['logprobs'] = logprobs
                    try:
                        await sink.send(out)
                    except ConnectionResetError:
                        raise ClientGone() from None
                    self._count_token()
                if choice.get('finish_reason'):
                    finish = 'length' if choice['finish_reason'] == 'length' else 'stop'
                    timings = chunk.get('timings') or {}
            if calls.complete():
                # Ollama emits tool calls whole, in a chunk of their own before the final one.
                await sink.send(self._chunk(model_text, field, '', '', calls.complete()))
        except (ClientGone, asyncio.CancelledError):
            # The client closed the connection: closing ours to the runner stops generation.
            self.disconnects.append({'model': model_text, 'at': time.monotonic()})
            log.info('client disconnected; generation stopped')
            raise asyncio.CancelledError() from None
        except aiohttp.ClientError:
            finish = None     # the runner died or cut the stream
        finally:
            self.generating -= 1
            if upstream is not None:
                upstream.close()
        if finish is None:
            log.error('runner for %s failed mid-request: %s', runner.model.name.short, RUNNER_EOF)
            if not sink.started:
                raise ApiError(500, RUNNER_EOF)
            await sink.send({'error': RUNNER_EOF})
            assert sink.response is not None
            await sink.response.write_eof()
            return sink.response
        final = self._final(model_text, field, finish, started, load_seconds, timings)
        return await sink.finish(final, field)

    def _count_token(self) -> None:
        self.tokens_streamed += 1
        limit = self.settings.faults.server_crash_after
        if limit and self.tokens_streamed >= limit:
            log.error('injected server crash after %d tokens', self.tokens_streamed)
            os._exit(2)


def _ollama_logprobs(given: Optional[Dict[str, Any]], top: bool) -> List[Dict[str, Any]]:
    """A llama-server chunk's logprobs in Ollama's shape: [{token, logprob, top_logprobs?}]
    (the alternatives only when the request asked for some)."""
    entries = []
    for item in (given or {}).get('content') or []:
        entry: Dict[str, Any] = {'token': item.get('token', ''),
                                 'logprob': float(item.get('logprob', 0.0))}
        if top:
            entry['top_logprobs'] = [{'token': alt.get('token', ''),
                                      'logprob': float(alt.get('logprob', 0.0))}
                                     for alt in item.get('top_logprobs') or []]
        entries.append(entry)
    return entries


class ToolCallCollector:
    """Joins llama-server's streamed tool-call deltas into Ollama's whole calls."""

    def __init__(self) -> None:
        self._calls: Dict[int, Dict[str, str]] = {}

    def add(self, part: Dict[str, Any]) -> None:
        call = self._calls.setdefault(int(part.get('index', 0)),
                                      {'id': '', 'name': '', 'arguments': ''})
        function = part.get('function') or {}
        call['id'] = part.get('id') or call['id']
        call['name'] += function.get('name') or ''
        call['arguments'] += function.get('arguments') or ''

    def complete(self) -> List[Dict[str, Any]]:
        """Ollama's tool_calls: arguments as a JSON object, index always, id when known."""
        return [{'id': call['id'], 'function': {
                    'index': index, 'name': call['name'],
                    'arguments': json.loads(call['arguments'] or '{}')}}
                for index, call in sorted(self._calls.items())]


def _runner_message(message: Dict[str, Any]) -> Dict[str, Any]:
    """An Ollama chat message in the OpenAI shape llama-server reads."""
    converted: Dict[str, Any] = {'role': message.get('role'),
                                 'content': message.get('content', '')}
    if message.get('images'):
        converted['content'] = [{'type': 'text', 'text': converted['content']}] + [
            {'type': 'image_url', 'image_url': {'url': f'data:image/jpeg;base64,{image}'}}
            for image in message['images']]
    if message.get('tool_calls'):
        converted['tool_calls'] = [{
            'id': call.get('id') or f'call_{index:08d}', 'type': 'function',
            'function': {'name': call['function']['name'],
                         'arguments': json.dumps(call['function'].get('arguments') or {})}}
            for index, call in enumerate(message['tool_calls'])]
    if message.get('role') == 'tool':
        converted['name'] = message.get('tool_name', '')
        if message.get('tool_call_id'):
            converted['tool_call_id'] = message['tool_call_id']
    return converted


def _runner_error(text: str) -> str:
    """The message of a runner's error answer ({"error": {"message": ...}} from llama-server)."""
    try:
        error = json.loads(text).get('error')
    except (ValueError, AttributeError):
        return text or 'runner error'
    if isinstance(error, dict):
        return str(error.get('message') or text)
    return str(error or text)


def _requested_name(body: Dict[str, Any]) -> ModelName:
    """The model a create or pull request names (`model`, or the older `name`), as Ollama
    parses it; ApiError 400 as Ollama answers when it is missing or invalid."""
    text = body.get('model') or body.get('name')
    if not text:
        raise ApiError(400, 'model is required')
    try:
        return ModelName.parse(str(text))
    except InvalidName as error:
        raise ApiError(400, str(error)) from None
