"""Serving: the Ollama server, its HTTP client and the model's runners, owned by one object.

`Serving` does every step that changes what is served: start the server (models dir checks
included), pull with progress, check that the model fits in RAM, load and verify, unload and
confirm, stop, restart, reload. All of them run under its one lock (`Serving.lock`, reentrant);
after every change it publishes a new `ServingState`, so readers (the chat action, the
diagnostics, the node's status) read `Serving.state` without a lock and get a snapshot that
stays consistent while they use it. A failed step raises ServingError whose message names the
cause and what to do about it; the state keeps it as server_error or model_error.

The node runs each lifecycle transition inside `Serving.transition()`; supervision
(core/supervision.py) calls `check()`, `reload()`, `restart()` and `fail()`.
"""

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Iterator, List, Optional, Tuple

import psutil

from .config import ModelSettings
from .config import ServerSettings
from .engine import EngineError
from .engine import FOREVER
from .engine import OllamaEngine
from .server import LogSink
from .server import OllamaServer
from .server import ServerError
from .server import ServerStatus

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class ServingState:
    """Everything a reader needs to know about the server and the model at one instant."""

    lifecycle: str = 'unconfigured'   # the node's lifecycle state label
    model: str = ''                   # the model the node serves ('' before the first configure)
    serving: bool = False             # chats are accepted now (active, model loaded, no recovery)
    not_serving_reason: str = ''      # why not, as a client should read it ('' when serving)
    model_loaded: bool = False
    capabilities: Tuple[str, ...] = ()
    context_length: int = 0
    pull_progress: Optional[float] = None   # 0..1 while a pull runs
    recovering: str = ''              # cause of a supervised restart or reload in progress
    server_error: str = ''            # what is wrong with the server ('' when nothing is)
    model_error: str = ''             # what is wrong with the model ('' when nothing is)
    models_dir: str = ''              # OLLAMA_MODELS as the server uses it (expanded)
    server: Optional[ServerStatus] = None    # None while no server is running or adopted
    runner_pids: Tuple[int, ...] = ()
    num_thread: int = 0               # the model's threads as sent to Ollama (0: its default)
    engine: Optional[OllamaEngine] = None    # the HTTP client of the server (chats, /api/ps)

    def in_lifecycle(self, label: str) -> 'ServingState':
        """This state as seen in lifecycle state `label`: whether chats are served, and if
        not, why (as a client should read it)."""
        if label != 'active':
            reason = f'the node is not active (state: {label})'
        elif self.recovering:
            reason = f'the node is recovering (state: active): {self.recovering}'
        elif not self.model_loaded:
            cause = self.server_error or self.model_error
            reason = 'the model is not loaded (state: active)' + (f': {cause}' if cause else '')
        else:
            reason = ''
        return dataclasses.replace(self, lifecycle=label, serving=not reason,
                                   not_serving_reason=reason)


class ServingError(RuntimeError):
    """A serving step failed for a reason the user can fix; the message says which."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """What went wrong with the server or the model, seen in transition epoch `epoch`."""

    problem: str
    epoch: int
    model_only: bool = False      # the model's runner went away; the server is fine


@dataclasses.dataclass(frozen=True)
class Observation:
    """One look at the server by supervision: its process and the model's runners."""

    epoch: int
    failure: Optional[Failure]    # the server exited or the model's runner went away


class Serving:
    """Owns the OllamaServer, the OllamaEngine and the runner processes under one lock."""

    def __init__(self, log: LogSink) -> None:
        self.log = log
        self.lock = threading.RLock()
        # Counts transitions: supervision acts on what it saw only if no transition ran since.
        self.epoch = 0
        # Set when a transition begins and when the process exits: a supervision backoff
        # waiting on it wakes up and finds its restart moot.
        self.interrupt = threading.Event()
        self.exiting = threading.Event()      # the process is going down
        self._server: Optional[OllamaServer] = None
        self._engine: Optional[OllamaEngine] = None
        self._server_settings: Optional[ServerSettings] = None
        self._model = ModelSettings()
        self._models_dir = ''
        self._configured = False
        # The node is active: the model is to stay loaded (a runner that exits is reloaded, a
        # restarted server loads it again).
        self._keep_loaded = False
        self._load_requested = False
        self._runners: List[psutil.Process] = []
        self.state = ServingState()

    # ---- snapshot ------------------------------------------------------------------------
    def _publish(self, **changes: object) -> None:
        """Apply `changes` to the published state and refresh what the objects own."""
        server = self._server
        self.state = dataclasses.replace(
            self.state, **changes, model=self._model.model if self._configured else '',
            models_dir=self._models_dir, server=server.status() if server else None,
            runner_pids=tuple(p.pid for p in self._runners), engine=self._engine)

    # ---- transitions ---------------------------------------------------------------------
    @contextlib.contextmanager
    def transition(self, name: str, about_model: bool = False) -> Iterator[None]:
        """Run one lifecycle transition's steps under the lock. A failure is the server's or
        (about_model: activate, deactivate) the model's, kept in the state and raised as
        ServingError('<name> failed: <cause>')."""
        with self.lock:
            self.epoch += 1
            self.interrupt.set()
            if self.exiting.is_set():
                raise ServingError(f'{name} refused: the node is exiting')
            self._publish(recovering='', **{'model_error' if about_model else 'server_error': ''})
            try:
                yield
            except (ServingError, EngineError, ServerError) as error:
                message = f'{name} failed: {error}'
                if self.exiting.is_set():
                    message += ' (the node is exiting)'
                self._publish(**{'model_error' if about_model else 'server_error': message})
                raise ServingError(message) from None
            except Exception as error:
                self._publish(server_error=f'{name} raised {type(error).__name__}: {error}')
                raise

    def start(self, server: ServerSettings, models_dir: str, model: ModelSettings) -> None:
        """Check the models directory, start (or adopt) the server and wait until it answers,
        and make its HTTP client; on failure nothing is left running."""
        with self.lock:
            self._server_settings, self._models_dir = server, models_dir
            self._model, self._configured = model, True
            self._publish(model_error='')
            _prepare_models_dir(models_dir)
            self._server = OllamaServer(server, models_dir, self.log)
            try:
                self._server.start()
                self._engine = OllamaEngine(server.base_url, model.load_timeout,
                                            model.num_thread)
            except BaseException:
                if not self.exiting.is_set():   # else the exit path stops what is left
                    self._stop()
                raise
            self._publish()

    def use_model(self, model: ModelSettings) -> None:
        """Take the model settings for the next load (they apply at every activate)."""
        with self.lock:
            if self._engine is not None and (model.load_timeout, model.num_thread) != (
                    self._model.load_timeout, self._model.num_thread):
                # The engine's HTTP clients carry the timeout, its requests num_thread: a new
                # engine for new values.
                assert self._server_settings is not None
                self._engine.close()
                self._engine = OllamaEngine(self._server_settings.base_url, model.load_timeout,
                                            model.num_thread)
            self._model = model
            self._publish(num_thread=model.num_thread)

    def activate(self) -> None:
        """Load the model and keep it loaded; after a failure, unload what the load may have
        left (nothing when it failed before the load request, e.g. a model not pulled)."""
        with self.lock:
            try:
                self._load()
            except (ServingError, EngineError, ServerError):
                if self._load_requested and not self.exiting.is_set():
                    self.unload()
                raise
            self._keep_loaded = True

    def _load(self) -> None:
        """Pull the model when missing, check it fits in RAM, load it, confirm it in /api/ps."""
        if self._engine is None:
            raise ServingError('no Ollama server is running (configure first)')
        engine, model = self._engine, self._model
        self._load_requested = False
        size = engine.installed_size(model.model)
        if size is None:
            if not model.pull_missing:
                raise ServingError(f"model '{model.model}' is not in models_dir and "
                                   f'pull_missing is false; pull it: ollama pull {model.model}')
            self._pull(engine, model.model)
            size = engine.installed_size(model.model)
            if size is None:
                raise ServingError(f"model '{model.model}' is still missing after the pull")
        if engine.loaded_model(model.model) is None:
            _check_memory_fit(model, size)
        info = engine.show(model.model)
        capabilities = tuple(info['capabilities'])
        self._warn_threads_beyond_cores(model.num_thread)
        started = time.monotonic()
        self._load_requested = True
        engine.load(model.model, FOREVER)
        loaded = engine.loaded_model(model.model)
        if loaded is None:
            raise ServingError(f"'{model.model}' was loaded but /api/ps does not list it")
        context_length = loaded.context_length or info['context_length']
        self._runners = self._server.runners() if self._server else []
        self._publish(model_loaded=True, capabilities=capabilities,
                      context_length=context_length)
        self.log('info', f"model '{model.model}' loaded in {time.monotonic() - started:.3f} s "
                         f'({loaded.size / GiB:.2f} GiB, context {context_length}, capabilities '
                         f"{', '.join(capabilities)})")

    def _warn_threads_beyond_cores(self, num_thread: int) -> None:
        """More threads than cores slow the model down and take every core: say so."""
        if self._server_settings is None:
            return
        cores = len(self._server_settings.cores()) or os.cpu_count() or 1
        if num_thread > cores:
            self.log('warn', f'num_thread {num_thread} exceeds the {cores} core(s) the model may '
                             f"use (cpu_cores '{self._server_settings.cpu_cores}'): its threads "
                             'wait for each other and take every core; set num_thread to at most '
                             f'{cores}')

    def _pull(self, engine: OllamaEngine, model: str) -> None:
        self.log('info', f"model '{model}' is not in models_dir: pulling it")
        logged = [-1]

        def progress(fraction: float, status: str) -> None:
            self._publish(pull_progress=fraction)
            decile = int(fraction * 10)
            if decile > logged[0]:
                logged[0] = decile
                self.log('info', f"pulling '{model}': {fraction * 100:.0f} % ({status})")
        try:
            engine.pull(model, progress)
        finally:
            self._publish(pull_progress=None)
        self.log('info', f"pulled '{model}'")

    def unload(self) -> None:
        """Unload (or keep for keep_alive_inactive) and confirm the runner is gone.

        Serving stops whatever happens: a failure to unload is a warning (model_error), never
        an error that would leave the node 'active' without a model. Runners still tracked
        afterwards (kept alive, or not yet gone) are only watched to report their exit: while
        inactive that is an unload, not a crash.
        """
        with self.lock:
            self._keep_loaded = False
            if self._engine is None or self._server_settings is None:
                return
            self._publish(model_loaded=False)
            engine, model = self._engine, self._model
            try:
                if model.keep_alive_inactive > 0:
                    engine.set_keep_alive(model.model, model.keep_alive_inactive)
                    self.log('info', f"model '{model.model}' stays loaded for "
                                     f'{model.keep_alive_inactive:g} s (keep_alive_inactive)')
                    return
                started = time.monotonic()
                engine.unload(model.model)
            except EngineError as error:
                self._warn_model(f'unload: {error}')
                return
            stop_timeout = self._server_settings.stop_timeout
            deadline = time.monotonic() + stop_timeout
            # Returns as soon as the runners have exited (psutil polls /proc at a fine interval).
            psutil.wait_procs(self._runners, timeout=stop_timeout)
            while True:
                try:
                    still_loaded = engine.loaded_model(model.model) is not None
                except EngineError as error:   # the node stops serving whatever happens
                    self._warn_model(f'unload not confirmed: {error}')
                    return
                if not still_loaded and not any(_alive(p) for p in self._runners):
                    break
                if time.monotonic() > deadline:
                    self._warn_model(f"'{model.model}' is still loaded {stop_timeout:g} s after "
                                     'unloading (the server ends it, or cleanup stops it)')
                    return
                time.sleep(0.02)
            self._runners = []
            self._publish()
            self.log('info', f"model '{model.model}' unloaded in "
                             f'{time.monotonic() - started:.3f} s; its runner has exited')

    def _warn_model(self, message: str) -> None:
        self._publish(model_error=message)
        self.log('warn', message)

    def stop(self) -> None:
        """Close the HTTP client and stop the server (an adopted one is left running)."""
        with self.lock:
            self._stop()

    def _stop(self) -> None:
        self._keep_loaded = False
        engine, server = self._engine, self._server
        self._engine, self._server = None, None
        try:
            if engine is not None:
                engine.close()
            if server is not None:
                server.stop()
        finally:
            self._runners = []
            self._publish(model_loaded=False)

    def release(self) -> None:
        """Unload the model (only from an adopted server: a managed one takes its runners
        along), stop the server: safe in any state, idempotent."""
        with self.lock:
            self._release()

    def _release(self) -> None:
        if self._server is not None and self._server.adopted and self.state.model_loaded:
            self.unload()
        self._stop()

    def exit_now(self) -> None:
        """The process is going down: stop everything within seconds, whatever runs. A step in
        progress (a pull or load can take minutes) holds the lock: the managed server is told
        to stop at once, which fails its request, and the step gives way."""
        self.exiting.set()
        self.interrupt.set()
        locked = self.lock.acquire(blocking=False)
        server = self._server
        if not locked and server is not None:
            stop_timeout = server.settings.stop_timeout
            self.log('info', 'exiting during a transition: stopping the Ollama server now')
            server.signal_group(signal.SIGTERM)
            locked = self.lock.acquire(timeout=stop_timeout)
            if not locked:
                server.signal_group(signal.SIGKILL)
                locked = self.lock.acquire(timeout=stop_timeout)
        try:
            self._release()
        finally:
            if locked:
                self.lock.release()

    # ---- supervision ---------------------------------------------------------------------
    def check(self) -> Optional[Observation]:
        """What the server's process and the model's runners show now; None while a step
        holds the lock (it owns the server for now) or no server runs."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            server = self._server
            if server is None:
                return None
            code = server.exit_code()
            if code is not None:
                return Observation(self.epoch, Failure(
                    f'the Ollama server (pid {server.pid}) exited with code {code}', self.epoch))
            for runner in self._runners:
                if _alive(runner):
                    continue
                if self._keep_loaded and self.state.model_loaded:
                    return Observation(self.epoch, Failure(
                        f"the runner of '{self._model.model}' (pid {runner.pid}) exited",
                        self.epoch, model_only=True))
                # Inactive: the model was unloaded (keep_alive_inactive ran out, a slow unload
                # finished, or someone asked Ollama): not a failure.
                self.log('info', f"model '{self._model.model}' unloaded: its runner (pid "
                                 f'{runner.pid}) exited while the node was inactive')
                self._runners = []
                self._publish(model_error='')
                break
            return Observation(self.epoch, None)
        finally:
            self.lock.release()

    def probe(self, timeout: float) -> Tuple[bool, str]:
        """Whether the server answers HTTP within timeout (no lock: a hung server takes the
        whole timeout), and how to name it in a message."""
        server = self._server
        if server is None:
            return True, ''
        where = f'(pid {server.pid}) ' if server.pid else ''
        return server.reachable(timeout=timeout), f'the Ollama server {where}at {server.base_url}'

    def still_current(self, failure: Failure) -> bool:
        """Whether `failure` is still to be acted on: no transition ran since it was seen, a
        server is configured and the process is not exiting. Call under the lock."""
        return (self.epoch == failure.epoch and self._server is not None
                and not self.exiting.is_set())

    def fail(self, problem: str, recovering: str) -> None:
        """The server failed: it serves nothing until restarted (recovering says how it is
        being recovered, '' when it is not)."""
        with self.lock:
            self._runners = []
            self._publish(server_error=problem, model_loaded=False, recovering=recovering)

    def mark_reloading(self, failure: Failure) -> None:
        """The model's runner went away while active: serve nothing until it is reloaded (goals
        arriving meanwhile are told the node is recovering)."""
        with self.lock:
            self._runners = []
            self._publish(model_loaded=False, recovering=f'{failure.problem}; reloading the model')

    def reload(self, failure: Failure) -> None:
        """Load the model again after its runner went away while active; raises ServingError.
        """
        with self.lock:
            self.mark_reloading(failure)
            self._load()
            self._publish(recovering='', model_error='')

    def restart(self) -> None:
        """Restart a managed server (check that an adopted one answers again) and load the
        model again when the node is active; raises ServingError."""
        with self.lock:
            server = self._server
            assert server is not None
            if server.adopted:
                if not server.reachable():
                    raise ServingError(f'the Ollama server at {server.base_url} still does not '
                                       'answer')
            else:
                server.stop()       # what is left of it: a hung one gets SIGTERM, then SIGKILL
                server.start()
                server.restarts += 1
            self._publish()
            if self._keep_loaded:
                self._load()
            self._publish(recovering='', server_error='')

    def wants_model(self) -> bool:
        """The node is active: the model is to be loaded."""
        return self._keep_loaded


def _prepare_models_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ServingError(f"models_dir '{path}' cannot be created: {error.strerror}") from None
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ServingError(f"models_dir '{path}' is not a writable directory")


def _check_memory_fit(model: ModelSettings, size: int) -> None:
    available = psutil.virtual_memory().available
    needed = size + model.memory_margin_mb * 1024 ** 2
    if needed > available:
        raise ServingError(
            f"not enough memory for '{model.model}': it needs {size / GiB:.2f} GiB plus "
            f'memory_margin_mb {model.memory_margin_mb}, and only {available / GiB:.2f} GiB is '
            'available; free memory, pick a smaller quantization or lower memory_margin_mb')


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
