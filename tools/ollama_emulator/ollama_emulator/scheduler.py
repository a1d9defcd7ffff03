"""Loaded models: one runner process each, keep-alive expiry, slots and the request queue.

Mirrors Ollama's scheduler where a client can tell: a load starts a runner in the server's
process group and blocks until it answers; keep_alive sticks to the loaded model and starts
counting when its last request ends; an unload request returns at once while the runner is
killed in the background; at most OLLAMA_NUM_PARALLEL requests run per model and at most
OLLAMA_MAX_QUEUE wait. One runner per weights file: two names of one blob share it, and
loading the second replaces the first's runner. The runner's command line follows the chosen
generation (settings.runner_generation, see runner.py).
"""

import asyncio
import dataclasses
import datetime
import logging
import os
import socket
import sys
from typing import Awaitable, Callable, Dict, List, Optional

import aiohttp

from . import catalog
from .settings import Settings
from .store import InstalledModel
from .store import MEDIA_MODEL

log = logging.getLogger('ollama')
FOREVER = datetime.datetime(2318, 1, 1, tzinfo=datetime.timezone.utc)


class LoadError(RuntimeError):
    """Loading failed; Ollama answers 500 with this message."""


class QueueFull(RuntimeError):
    def __init__(self) -> None:
        super().__init__('server busy, please try again.  maximum pending requests exceeded')


def own_program() -> List[str]:
    """How to start this program again, as Ollama starts `ollama runner`: its own executable
    (the same argv[0] and comm as the server), or `python -m` when run as a module."""
    program = sys.argv[0]
    if not program.endswith('.py') and os.access(program, os.X_OK):
        return [os.path.abspath(program)]
    return [sys.executable, '-m', 'ollama_emulator.cli']


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@dataclasses.dataclass
class Runner:
    """A loaded model and the process that holds it."""

    model: InstalledModel
    process: asyncio.subprocess.Process
    url: str
    context_length: int
    slots: asyncio.Semaphore
    keep_alive: Optional[float]             # seconds; None = forever
    threads: int                            # llama.cpp threads (num_thread of the load)
    blob: str = ''                          # the weights file it holds
    references: int = 0
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    expires_at: Optional[datetime.datetime] = None
    expiry: Optional[asyncio.TimerHandle] = None
    unloading: bool = False


class Scheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runners: Dict[str, Runner] = {}
        self.loading: Dict[str, asyncio.Task] = {}
        self.pending = 0
        self.session: Optional[aiohttp.ClientSession] = None

    @property
    def loads_on_request(self) -> bool:
        """The ollama-runner generation: threads travel in a load request."""
        return self.settings.runner_generation == 'ollama-runner'

    async def start(self) -> None:
        # A new connection per runner request: llama-server closes a kept-alive connection
        # after a few requests, and a request sent on it just then fails at once.
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                             connector=aiohttp.TCPConnector(force_close=True))
        if self.loads_on_request:
            # Ollama 0.2x runs a short discovery runner (no --model) at every start, before it
            # serves HTTP (its port accepts connections meanwhile).
            discovery = await asyncio.create_subprocess_exec(
                *own_program(), 'runner', '--ollama-engine', '--port', str(_free_port()))
            log.info('discovering devices: runner pid=%s', discovery.pid)
            await discovery.wait()

    # ---- queue ---------------------------------------------------------------------------
    def enter_queue(self) -> None:
        if self.pending >= self.settings.max_queue:
            raise QueueFull()
        self.pending += 1

    def leave_queue(self) -> None:
        self.pending -= 1

    # ---- loading -------------------------------------------------------------------------
    async def acquire(self, model: InstalledModel, keep_alive: Optional[float],
                      keep_alive_given: bool, num_ctx: Optional[int],
                      num_thread: Optional[int] = None) -> Runner:
        """The model's runner, loaded if needed, with one reference held by the caller.

        Like Ollama, a request whose runner options differ from the loaded runner's (here
        num_thread; omitted means the default) reloads the model once its requests are done.
        """
        name = model.name.short
        given = num_thread if num_thread and num_thread > 0 else None
        threads = given or self.default_threads()
        while True:
            runner = self.runners.get(name)
            if runner is not None and not runner.unloading and runner.process.returncode is None:
                if runner.threads == threads:
                    break
                log.info('reloading %s: num_thread %d -> %d', name, runner.threads, threads)
                if runner.references:
                    await runner.idle.wait()
                await self.unload(runner)
                continue
            sharing = [other for other in self.loaded() if other.blob == self._model_blob(model)
                       and other.model.name.short != name]
            if sharing:
                # One runner per weights file: the other name's runner makes way, as in Ollama.
                other = sharing[0]
                log.info('%s shares its weights with %s: replacing its runner', name,
                         other.model.name.short)
                if other.references:
                    await other.idle.wait()
                await self.unload(other)
                continue
            task = self.loading.get(name)
            if task is None:
                task = asyncio.ensure_future(self._load(model, keep_alive, num_ctx, threads,
                                                        given))
                self.loading[name] = task
                task.add_done_callback(lambda _t, n=name: self.loading.pop(n, None))
            await asyncio.shield(task)
        if keep_alive_given:
            runner.keep_alive = keep_alive
        runner.references += 1
        runner.idle.clear()
        self._cancel_expiry(runner)
        return runner

    def release(self, runner: Runner) -> None:
        """The caller's request ended: start the keep-alive countdown when it was the last."""
        runner.references -= 1
        if runner.references == 0:
            runner.idle.set()
            if not runner.unloading:
                self._schedule_expiry(runner)

    @staticmethod
    def default_threads() -> int:
        """llama.cpp threads when a request does not say (Ollama: the performance cores)."""
        return max(1, int(os.environ.get('OLLAMA_EMULATOR_THREADS') or os.cpu_count() or 1))

    def _model_blob(self, model: InstalledModel) -> str:
        layer = model.layer(MEDIA_MODEL)
        return str(self._blob(layer['digest'])) if layer else ''

    def _runner_command(self, blob: str, port: int, context_length: int,
                        given_threads: Optional[int]) -> List[str]:
        """The runner's command line in the chosen generation (see runner.py)."""
        if self.loads_on_request:
            return [*own_program(), 'runner', '--model', blob, '--port', str(port)]
        command = [sys.executable, '-m', 'ollama_emulator.runner', '--model', blob,
                   '--port', str(port), '--ctx-size', str(context_length),
                   '--parallel', str(self.settings.num_parallel)]
        # Ollama 0.30+ passes -t to llama-server only when the request set num_thread.
        return command + (['-t', str(given_threads)] if given_threads else [])

    async def _load(self, model: InstalledModel, keep_alive: Optional[float],
                    num_ctx: Optional[int], threads: int, given_threads: Optional[int]) -> None:
        name = model.name.short
        layer = model.layer(MEDIA_MODEL)
        if layer is None:
            raise LoadError(f'{name}: manifest has no model layer')
        # By name, or by weights for a catalog GGUF created under a name of its own.
        entry = catalog.entry_of(name, layer['digest'])
        faults = self.settings.faults
        await self._make_room()
        if faults.load_delay:
            await asyncio.sleep(faults.load_delay)
        if faults.load_failure or (entry is not None and entry.load_failure):
            needed = model.size + 6 * 1024 ** 3
            raise LoadError(f'model requires more system memory ({needed / 1024 ** 3:.1f} GiB) '
                            f'than is available ({2.3:.1f} GiB)')
        blob = self._model_blob(model)
        trained = entry.context_length if entry else self.settings.context_length
        context_length = min(num_ctx or self.settings.context_length, trained)
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            *self._runner_command(blob, port, context_length, given_threads))
        log.info('starting runner pid=%s model=%s port=%s', process.pid, blob, port)
        if faults.server_crash_on_load:
            log.error('injected crash while loading')
            os._exit(2)
        url = f'http://127.0.0.1:{port}'
        if self.loads_on_request:
            await self._send_load(process, url, {
                'num_threads': threads, 'kv_size': context_length * self.settings.num_parallel,
                'parallel': self.settings.num_parallel})
        await self._wait_healthy(process, url)
        runner = Runner(model=model, process=process, url=url, context_length=context_length,
                        slots=asyncio.Semaphore(self.settings.num_parallel),
                        keep_alive=keep_alive, threads=threads, blob=blob)
        self.runners[name] = runner
        asyncio.ensure_future(self._watch(runner))
        log.info('llama runner started in %s', name)

    async def _send_load(self, process: asyncio.subprocess.Process, url: str,
                         request: Dict[str, int]) -> None:
        """The ollama-runner generation's load request, once the runner's port answers."""
        async def load() -> bool:
            assert self.session is not None
            async with self.session.post(url + '/load', json=request) as reply:
                if reply.status != 200:
                    raise LoadError(f'load request failed: {await reply.text()}')
                return True
        await _until_answered(process, load)

    async def _wait_healthy(self, process: asyncio.subprocess.Process, url: str) -> None:
        async def healthy() -> bool:
            assert self.session is not None
            async with self.session.get(url + '/health') as reply:
                return reply.status == 200
        await _until_answered(process, healthy)

    async def _make_room(self) -> None:
        """Unload the least recently used idle model beyond OLLAMA_MAX_LOADED_MODELS."""
        while len(self.runners) >= self.settings.max_loaded_models:
            idle = [r for r in self.runners.values() if r.references == 0]
            if not idle:
                return
            await self.unload(idle[0])

    async def _watch(self, runner: Runner) -> None:
        code = await runner.process.wait()
        if not runner.unloading:
            log.error('runner for %s exited unexpectedly with %s', runner.model.name.short, code)
        self._cancel_expiry(runner)
        if self.runners.get(runner.model.name.short) is runner:
            del self.runners[runner.model.name.short]

    def _blob(self, digest: str) -> 'os.PathLike[str]':
        return self.settings.models_dir / 'blobs' / digest.replace(':', '-')

    # ---- keep-alive and unloading --------------------------------------------------------
    def _schedule_expiry(self, runner: Runner) -> None:
        self._cancel_expiry(runner)
        if runner.keep_alive is None:
            runner.expires_at = FOREVER
            return
        runner.expires_at = (datetime.datetime.now(datetime.timezone.utc)
                             + datetime.timedelta(seconds=runner.keep_alive))
        loop = asyncio.get_running_loop()
        runner.expiry = loop.call_later(
            runner.keep_alive, lambda: asyncio.ensure_future(self.unload(runner)))

    @staticmethod
    def _cancel_expiry(runner: Runner) -> None:
        if runner.expiry is not None:
            runner.expiry.cancel()
            runner.expiry = None

    def request_unload(self, name: str) -> None:
        """keep_alive 0: returns at once; the runner is ended when its requests are done."""
        runner = self.runners.get(name)
        if runner is None:
            return
        runner.keep_alive = 0
        if runner.references == 0:
            asyncio.ensure_future(self.unload(runner))

    async def unload(self, runner: Runner) -> None:
        if runner.unloading:
            return
        runner.unloading = True
        self._cancel_expiry(runner)
        log.info('unloading %s (runner pid=%s)', runner.model.name.short, runner.process.pid)
        if runner.process.returncode is None:
            runner.process.kill()
        await runner.process.wait()

    def loaded(self) -> List[Runner]:
        return [r for r in self.runners.values() if not r.unloading]

    async def stop_all(self) -> None:
        """Shutdown: SIGKILL every runner and wait for them, as `ollama serve` does."""
        for runner in list(self.runners.values()):
            runner.unloading = True
            if runner.process.returncode is None:
                runner.process.kill()
        for runner in list(self.runners.values()):
            await runner.process.wait()
        if self.session is not None:
            await self.session.close()


async def _until_answered(process: asyncio.subprocess.Process,
                          ask: Callable[[], Awaitable[bool]]) -> None:
    """Ask the starting runner until ask() is true; LoadError when the runner exits first.
    A runner whose port is not open yet refuses the connection: asked again 20 ms later."""
    while True:
        if process.returncode is not None:
            raise LoadError(f'llama runner process has terminated: exit status '
                            f'{process.returncode}')
        try:
            if await ask():
                return
        except aiohttp.ClientError:
            pass
        try:
            await asyncio.wait_for(process.wait(), 0.02)
        except asyncio.TimeoutError:
            pass
