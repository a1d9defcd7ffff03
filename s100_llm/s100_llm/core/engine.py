"""OllamaEngine: models and chats on an Ollama server, through the official `ollama` client.

Control calls (list, pull, load, unload, ps) are synchronous. A chat streams on an asyncio loop
the engine owns, so that cancel() from any thread closes the HTTP connection at once: that is
how Ollama is told to stop generating (a blocking socket read in another thread could not be
interrupted that way).
"""

import asyncio
import dataclasses
import math
import queue
import ssl
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import httpx
import ollama

FOREVER = -1


def _no_tls() -> ssl.SSLContext:
    """The TLS context of the engine's HTTP clients: one without CA certificates.

    The engine speaks plain HTTP to the Ollama server (base_url is always http://), so TLS is
    never used; httpx would still load the CA bundle for every client (about 45 ms each on a
    2-core machine, three clients per configure). This context costs nothing, and a TLS peer
    would be refused by it, never trusted.
    """
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


# Every client is made with trust_env=False: the engine talks only to the configured Ollama
# host, never through a proxy named by http_proxy, ALL_PROXY, ... in the node's environment
# (the proxy would see the prompts, and answer instead of Ollama).


class EngineError(RuntimeError):
    """An Ollama request failed; the message says why in words."""


class RequestRefused(EngineError):
    """Ollama refused the request itself (HTTP 400): the caller's input is at fault, not the
    server (e.g. a text longer than the model's context with truncate false)."""


class StreamTimeout(EngineError):
    """Ollama sent nothing on a chat stream for stream_timeout seconds."""


class ChatCanceled(Exception):
    """The stream was closed by cancel()."""


def describe(error: BaseException, what: str) -> str:
    """Turn the ollama client's many exception types into one sentence naming the cause."""
    if isinstance(error, ollama.ResponseError):
        if error.status_code == -1:
            return f'{what}: Ollama reported an error mid-stream: {error.error}'
        return f'{what}: Ollama answered {error.status_code}: {error.error}'
    if isinstance(error, (ConnectionError, httpx.ConnectError)):
        return f'{what}: the Ollama server is not reachable (connection refused)'
    if isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError)):
        return f'{what}: the Ollama server closed the connection (did it or its runner die?)'
    if isinstance(error, httpx.TimeoutException):
        return f'{what}: the Ollama server did not answer in time'
    return f'{what}: {type(error).__name__}: {error}'


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    name: str
    size: int
    context_length: int
    expires_at: str


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """What /api/embed answered: one unit-length vector per text, and the tokens counted."""

    vectors: List[List[float]]
    prompt_tokens: int


@dataclasses.dataclass(frozen=True)
class ChatChunk:
    content: str
    thinking: str
    done: bool
    done_reason: str = ''
    prompt_eval_count: int = 0
    eval_count: int = 0
    total_duration: int = 0        # ns
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    # The tools the model called in this chunk: (name, arguments). Ollama sends each call
    # whole, in any chunk (usually one before the final chunk).
    tool_calls: Tuple[Tuple[str, Dict[str, Any]], ...] = ()


_END = object()


class ChatStream:
    """The chunks of one chat, read in the caller's thread; cancel() works from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: ollama.AsyncClient,
                 request: Dict[str, Any], idle_timeout: float) -> None:
        self._chunks: 'queue.SimpleQueue[Any]' = queue.SimpleQueue()
        self._idle_timeout = idle_timeout
        self._future = asyncio.run_coroutine_threadsafe(self._pump(client, request), loop)

    async def _pump(self, client: ollama.AsyncClient, request: Dict[str, Any]) -> None:
        try:
            async for part in await client.chat(stream=True, **request):
                message = part.message
                self._chunks.put(ChatChunk(
                    content=message.content or '', thinking=message.thinking or '',
                    done=bool(part.done), done_reason=part.done_reason or '',
                    prompt_eval_count=part.prompt_eval_count or 0,
                    eval_count=part.eval_count or 0, total_duration=part.total_duration or 0,
                    load_duration=part.load_duration or 0,
                    prompt_eval_duration=part.prompt_eval_duration or 0,
                    eval_duration=part.eval_duration or 0,
                    tool_calls=tuple((call.function.name, dict(call.function.arguments or {}))
                                     for call in message.tool_calls or ())))
            self._chunks.put(_END)
        except asyncio.CancelledError:
            self._chunks.put(ChatCanceled())
            raise
        except Exception as error:  # every failure reaches the reader, named
            self._chunks.put(EngineError(describe(error, 'chat')))

    def read(self, wait: Optional[float] = None) -> Optional[ChatChunk]:
        """The next chunk, or None when none came within `wait` seconds (the stream goes on).

        Without `wait`, blocks up to the idle timeout (stream_timeout), then cancels the stream
        and raises StreamTimeout. Raises ChatCanceled after cancel(), EngineError when the
        request failed or the stream ended without its final (done) chunk.
        """
        try:
            item = self._chunks.get(timeout=self._idle_timeout if wait is None else wait)
        except queue.Empty:
            if wait is not None:
                return None
            self.cancel()
            raise StreamTimeout(f'chat: no output from Ollama for {self._idle_timeout:g} s '
                                '(stream_timeout)') from None
        if item is _END:
            raise EngineError('chat: the stream ended without a final chunk')
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[ChatChunk]:
        """Every chunk up to and including the final (done) one."""
        while True:
            chunk = self.read()
            assert chunk is not None
            yield chunk
            if chunk.done:
                return

    def cancel(self) -> float:
        """Close the HTTP stream now; returns time.monotonic() of the request."""
        requested = time.monotonic()
        self._future.cancel()
        return requested


class OllamaEngine:
    def __init__(self, base_url: str, request_timeout: float, num_thread: int = 0,
                 unload_timeout: float = 5.0) -> None:
        self.base_url = base_url
        # Sent with the load and every chat alike: Ollama reloads a model whose request asks
        # for another num_thread than it was loaded with (omitted = its default).
        self.model_options: Dict[str, Any] = {'num_thread': num_thread} if num_thread else {}
        self.client = ollama.Client(host=base_url, timeout=request_timeout, verify=_no_tls(),
                                    trust_env=False)
        # For the diagnostics' once-a-second look at /api/ps: a dead server must not stall it.
        self.status_client = ollama.Client(host=base_url, timeout=1.0, verify=_no_tls(),
                                           trust_env=False)
        # For deactivate's requests (the node's stop_timeout): the unload and its confirmation,
        # or the keep-alive of a model that is loaded already; each is quick, and a server that
        # does not answer must not hold a deactivate for the load's timeout.
        self.unload_client = ollama.Client(host=base_url, timeout=unload_timeout,
                                           verify=_no_tls(), trust_env=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name='ollama-stream',
                                        daemon=True)
        self._thread.start()
        # One AsyncClient for every chat; created on the loop it belongs to. No overall timeout:
        # a chat may run for minutes; silence is bounded by stream_timeout instead.
        self._async_client = asyncio.run_coroutine_threadsafe(
            self._make_async_client(base_url), self._loop).result()

    @staticmethod
    async def _make_async_client(base_url: str) -> ollama.AsyncClient:
        return ollama.AsyncClient(host=base_url, timeout=httpx.Timeout(None, connect=5.0),
                                  verify=_no_tls(), trust_env=False)

    def close(self) -> None:
        """Close every connection and stop the streaming loop (chats in progress end)."""
        async def shutdown() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await self._async_client.close()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()
        self.client.close()
        self.status_client.close()
        self.unload_client.close()

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as error:
            raise EngineError(describe(error, what)) from None

    # ---- models --------------------------------------------------------------------------
    def installed_size(self, model: str) -> Optional[int]:
        """Bytes of the model's layers per its manifest, or None when it is not pulled."""
        wanted = canonical_name(model)
        for entry in self._call('list models', self.client.list).models:
            if canonical_name(entry.model or '') == wanted:
                return int(entry.size or 0)
        return None

    def show(self, model: str) -> Dict[str, Any]:
        info = self._call(f'show {model}', self.client.show, model)
        context = 0
        for key, value in (info.modelinfo or {}).items():
            if key.endswith('.context_length'):
                context = int(value)
        return {'capabilities': list(info.capabilities or []), 'context_length': context}

    def pull(self, model: str, on_progress: Callable[[float, str], None]) -> None:
        """Pull with progress (fraction 0..1 of the bytes of all layers, status text)."""
        totals: Dict[str, int] = {}
        done: Dict[str, int] = {}
        try:
            for progress in self.client.pull(model, stream=True):
                if progress.digest and progress.total:
                    totals[progress.digest] = progress.total
                    done[progress.digest] = progress.completed or 0
                fraction = (sum(done.values()) / sum(totals.values())) if totals else 0.0
                on_progress(fraction, progress.status or '')
        except Exception as error:
            raise EngineError(describe(error, f'pull {model}')) from None

    def load(self, model: str, keep_alive: float = FOREVER, loaded: bool = False) -> None:
        """Load the model (blocks until Ollama has it in memory) with the given keep_alive;
        loaded: it is in memory already (only its keep_alive changes), bounded like unload."""
        client = self.unload_client if loaded else self.client
        reply = self._call(f'load {model}', client.generate, model=model,
                           keep_alive=_keep_alive(keep_alive), options=self.model_options)
        if reply.done_reason != 'load':
            raise EngineError(f'load {model}: unexpected answer done_reason={reply.done_reason}')

    def load_embedder(self, model: str, keep_alive: float = FOREVER, loaded: bool = False
                      ) -> None:
        """Load an embedding model (blocks until Ollama has it in memory) with the given
        keep_alive. Such a model cannot generate, so Ollama's preload with an empty
        /api/generate is refused for it ("does not support generate"); an /api/embed with no
        input loads it instead (Ollama schedules the runner before it looks at the input).
        loaded: as for load()."""
        client = self.unload_client if loaded else self.client
        self._call(f'load {model}', client.embed, model=model, input=[],
                   keep_alive=_keep_alive(keep_alive), options=self.model_options)

    def unload(self, model: str) -> None:
        """Ask Ollama to unload the model now (it answers before the runner has exited); for
        an embedding model too (Ollama expires the runner before it checks capabilities).
        Bounded by unload_timeout."""
        self._call(f'unload {model}', self.unload_client.generate, model=model, keep_alive=0,
                   options=self.model_options)

    def loaded(self, quick: bool = False, unloading: bool = False) -> List[LoadedModel]:
        """/api/ps; quick uses a 1 s timeout (for status reports), unloading the unload's."""
        client = (self.status_client if quick else self.unload_client if unloading
                  else self.client)
        return [LoadedModel(name=m.model or '', size=int(m.size or 0),
                            context_length=int(getattr(m, 'context_length', 0) or 0),
                            expires_at=str(m.expires_at or ''))
                for m in self._call('list loaded models', client.ps).models]

    def loaded_model(self, model: str, quick: bool = False) -> Optional[LoadedModel]:
        return loaded_entry(self.loaded(quick), model)

    # ---- embeddings ----------------------------------------------------------------------
    def embed(self, model: str, texts: List[str], truncate: bool = True,
              dimensions: int = 0) -> Embeddings:
        """The embedding of each text (/api/embed), kept loaded (keep_alive forever, as every
        request of the node's). dimensions 0: the model's size. Raises RequestRefused when
        Ollama answers 400 (the input's fault: its reason is in the message), EngineError for
        anything else."""
        what = f'embed {len(texts)} text(s) with {model}'
        try:
            reply = self.client.embed(model=model, input=texts, truncate=truncate,
                                      dimensions=dimensions or None, keep_alive=-1,
                                      options=self.model_options)
        except ollama.ResponseError as error:
            if error.status_code == 400:
                raise RequestRefused(f'{what}: Ollama refused the input (400, a fault of the '
                                     f'request, not of the server): {error.error}') from None
            raise EngineError(describe(error, what)) from None
        except Exception as error:
            raise EngineError(describe(error, what)) from None
        vectors = [list(vector) for vector in reply.embeddings]
        if len(vectors) != len(texts):
            raise EngineError(f'{what}: Ollama answered {len(vectors)} vector(s)')
        return Embeddings(vectors, int(reply.prompt_eval_count or 0))

    # ---- chat ----------------------------------------------------------------------------
    def chat(self, model: str, messages: List[Dict[str, Any]], think: Optional[bool],
             options: Dict[str, Any], keep_alive: float, idle_timeout: float,
             output_format: Any = None,
             tools: Optional[List[Dict[str, Any]]] = None) -> ChatStream:
        """Start a chat. output_format is Ollama's `format` ("json" or a JSON Schema dict;
        None: free text); tools are Ollama's `tools` (function definitions)."""
        request: Dict[str, Any] = {'model': model, 'messages': messages,
                                   'options': {**options, **self.model_options},
                                   'keep_alive': _keep_alive(keep_alive)}
        if think is not None:
            request['think'] = think
        if output_format:
            request['format'] = output_format
        if tools:
            request['tools'] = tools
        return ChatStream(self._loop, self._async_client, request, idle_timeout)


def loaded_entry(loaded: List[LoadedModel], model: str) -> Optional[LoadedModel]:
    """The model's entry in what /api/ps listed (engine.loaded()), or None."""
    wanted = canonical_name(model)
    return next((m for m in loaded if canonical_name(m.name) == wanted), None)


def _keep_alive(seconds: float) -> Any:
    """Ollama reads a number as seconds; negative means forever."""
    if seconds < 0 or math.isinf(seconds):
        return -1
    return int(seconds) if float(seconds).is_integer() else f'{seconds}s'


def canonical_name(name: str) -> str:
    """A model name with its tag (Ollama completes a missing one with latest)."""
    return name if ':' in name.rsplit('/', 1)[-1] else name + ':latest'
