"""Serving: the Ollama server, its HTTP client and the model's runners, owned by one object.

`Serving` does every step that changes what is served: start the server (models dir checks
included), pull with progress, check that the model fits in RAM, load and verify, unload and
confirm, stop, restart, reload. With an embedding model configured it does each of them for
both models: both are pulled, counted in the memory check, loaded and kept loaded while active,
unloaded at deactivate; each model's runners are told apart by the weights file they hold, so a
runner that exits is reloaded as the model it held. All of them run under its one lock
(`Serving.lock`, reentrant); after every change it publishes a new `ServingState`, so readers
(the chat action, the embed service, the diagnostics, the node's status) read `Serving.state`
without a lock and get a snapshot that stays consistent while they use it. A failed step raises
ServingError whose message names the cause and what to do about it; the state keeps it as
server_error or model_error.

The node runs each lifecycle transition inside `Serving.transition()`; supervision
(core/supervision.py) calls `check()`, `reload()`, `restart()` and `fail()`.
"""

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import psutil

from .config import ModelSettings
from .config import ServerSettings
from .engine import canonical_name
from .engine import EngineError
from .engine import FOREVER
from .engine import loaded_entry
from .engine import OllamaEngine
from .engine import OperationCanceled
from .model_sources import ImportRecords
from .model_sources import SourceError
from .models import import_model
from .models import ModelProblem
from .server import LogSink
from .server import model_blob
from .server import OllamaServer
from .server import ServerError
from .server import ServerStatus
from .threads import resolve
from .threads import Threads
from .threads import usable_cores

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
    think_levels: bool = False        # the model's reasoning follows a level (thinks_in_levels)
    context_length: int = 0
    pull_progress: Optional[float] = None   # 0..1 while a pull or an import runs
    progress_verb: str = 'pulling'    # what pull_progress measures: 'pulling' or 'importing'
    recovering: str = ''              # cause of a supervised restart or reload in progress
    server_error: str = ''            # what is wrong with the server ('' when nothing is)
    model_error: str = ''             # what is wrong with the model ('' when nothing is)
    models_dir: str = ''              # OLLAMA_MODELS as the server uses it (expanded)
    server: Optional[ServerStatus] = None    # None while no server is running or adopted
    runner_pids: Tuple[int, ...] = ()
    num_thread: int = 0               # the model's threads as sent to Ollama (0: none yet)
    num_thread_why: str = ''          # how they were chosen (e.g. 'automatic: 2 usable cores...')
    engine: Optional[OllamaEngine] = None    # the HTTP client of the server (chats, /api/ps)
    embedding_model: str = ''         # the embedding model served on ~/embed ('' for none)
    embedding_loaded: bool = False
    embedding_capabilities: Tuple[str, ...] = ()
    embedding_runner_pids: Tuple[int, ...] = ()
    embedding_recovering: str = ''    # cause of a reload of the embedding model in progress

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

    @property
    def embedding_not_serving_reason(self) -> str:
        """Why embeddings are not served now, as a client should read it ('' when they are);
        for a state taken through in_lifecycle()."""
        if self.lifecycle == 'unconfigured':    # embedding_model is read at configure
            return self.not_serving_reason
        if not self.embedding_model:
            return ('the node serves no embeddings: no embedding_model was set at the last '
                    'configure (a change applies at the next configure)')
        if not self.serving:
            return self.not_serving_reason
        if self.embedding_recovering:
            return f'the node is recovering (state: active): {self.embedding_recovering}'
        if not self.embedding_loaded:
            return f"the embedding model '{self.embedding_model}' is not loaded (state: active)"
        return ''


class ServingError(RuntimeError):
    """A serving step failed for a reason the user can fix; the message says which."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """What went wrong with the server or the model, seen in transition epoch `epoch`."""

    problem: str
    epoch: int
    model_only: bool = False      # the model's runner went away; the server is fine
    model: str = ''               # which model's runner (model_only)
    embedding: bool = False       # that model is the embedding model: chats are unaffected


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
        self._threads: Optional[Threads] = None     # num_thread as resolved for the engine
        self._embedding_model = ''
        self._models_dir = ''
        self._configured = False
        # The node is active: the model is to stay loaded (a runner that exits is reloaded, a
        # restarted server loads it again).
        self._keep_loaded = False
        self._load_requested = False
        # Each loaded model's runners, by model name (the chat model, the embedding model).
        self._runners: Dict[str, List[psutil.Process]] = {}
        self.state = ServingState()

    # ---- snapshot ------------------------------------------------------------------------
    def _publish(self, **changes: object) -> None:
        """Apply `changes` to the published state and refresh what the objects own."""
        server = self._server
        embedding = self._embedding_model
        self.state = dataclasses.replace(
            self.state, **changes, model=self._model.model if self._configured else '',
            models_dir=self._models_dir, server=server.status() if server else None,
            runner_pids=tuple(p.pid for p in self._runners.get(self._model.model, [])),
            engine=self._engine, embedding_model=embedding if self._configured else '',
            embedding_runner_pids=tuple(p.pid for p in self._runners.get(embedding, []))
            if embedding else ())

    def _all_runners(self) -> List[psutil.Process]:
        return [runner for runners in self._runners.values() for runner in runners]

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

    def start(self, server: ServerSettings, models_dir: str, model: ModelSettings,
              embedding_model: str = '') -> None:
        """Check the models directory, start (or adopt) the server and wait until it answers,
        and make its HTTP client; on failure nothing is left running. embedding_model ('' for
        none) is loaded next to the model at every activate: the server is started with room
        for both."""
        with self.lock:
            server = self._room_for_both(server, model.model, embedding_model)
            self._server_settings, self._models_dir = server, models_dir
            self._model, self._configured = model, True
            self._embedding_model = embedding_model
            self._publish(model_error='')
            _prepare_models_dir(models_dir)
            self._server = OllamaServer(server, models_dir, self.log)
            try:
                self._server.start()
                threads = self._threads = self._resolve_threads(model)
                self._engine = OllamaEngine(server.base_url, model.load_timeout, threads.count,
                                            server.stop_timeout, models_dir)
            except BaseException:
                if not self.exiting.is_set():   # else the exit path stops what is left
                    self._stop()
                raise
            self._publish(num_thread=threads.count, num_thread_why=threads.why)

    def _resolve_threads(self, model: ModelSettings) -> Threads:
        """The num_thread to send with the model's requests (automatic for 0: see
        core/threads.py), for the cores the server's settings give the model."""
        assert self._server_settings is not None
        return resolve(model.num_thread, usable_cores(self._server_settings.cores()))

    def _room_for_both(self, server: ServerSettings, model: str,
                       embedding_model: str) -> ServerSettings:
        """The server settings with OLLAMA_MAX_LOADED_MODELS at least 2 when an embedding model
        is to be kept loaded: with 1, Ollama would unload the chat model to load the embedding
        model, and back at the next chat (each a full load)."""
        if not embedding_model or server.max_loaded_models >= 2:
            return server
        if server.manage_server:
            self.log('info', 'OLLAMA_MAX_LOADED_MODELS 2 (max_loaded_models '
                             f'{server.max_loaded_models} raised): embedding_model '
                             f"'{embedding_model}' stays loaded next to '{model}'")
        return dataclasses.replace(server, max_loaded_models=2)

    def use_model(self, model: ModelSettings) -> None:
        """Take the model settings for the next load (they apply at every activate)."""
        with self.lock:
            if self._engine is not None:
                threads = self._resolve_threads(model)
                assert self._threads is not None and self._server_settings is not None
                if (model.load_timeout, threads.count) != (self._model.load_timeout,
                                                           self._threads.count):
                    # The engine's HTTP clients carry the timeout, its requests num_thread: a
                    # new engine for new values.
                    self._engine.close()
                    self._engine = OllamaEngine(self._server_settings.base_url,
                                                model.load_timeout, threads.count,
                                                self._server_settings.stop_timeout,
                                                self._models_dir)
                self._threads = threads
                self._publish(num_thread=threads.count, num_thread_why=threads.why)
            self._model = model

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
        """Pull the model (and the embedding model) when missing, check they fit in RAM and
        that the embedding model embeds, load both, confirm both in /api/ps."""
        if self._engine is None:
            raise ServingError('no Ollama server is running (configure first)')
        engine, model, embedder = self._engine, self._model, self._embedding_model
        self._load_requested = False
        if model.model_source:
            self._import_if_changed(engine, model)
        sizes = {model.model: self._installed_size(engine, model.model, 'model')}
        if embedder:
            sizes[embedder] = self._installed_size(engine, embedder, 'embedding_model')
            _refuse_one_blob_under_two_names(self._models_dir, model.model, embedder)
        loaded_before = engine.loaded()
        refusal = memory_refusal(
            [(name, size) for name, size in sizes.items()
             if loaded_entry(loaded_before, name) is None],
            model.memory_margin_mb, psutil.virtual_memory().available, embedder)
        if refusal:
            raise ServingError(refusal)
        info = engine.show(model.model)
        capabilities = tuple(info['capabilities'])
        embedding_capabilities: Tuple[str, ...] = ()
        if embedder:
            embedding_capabilities = tuple(engine.show(embedder)['capabilities'])
            if 'embedding' not in embedding_capabilities:
                raise ServingError(
                    f"embedding_model '{embedder}' cannot embed: it lacks the embedding "
                    f"capability (capabilities: {', '.join(embedding_capabilities) or 'none'}); "
                    'pick an embedding model (e.g. nomic-embed-text, all-minilm)')
        self._log_threads()
        started = time.monotonic()
        self._load_requested = True
        engine.load(model.model, FOREVER)
        if embedder:
            engine.load_embedder(embedder, FOREVER)
        loaded_now = engine.loaded()
        loaded = loaded_entry(loaded_now, model.model)
        loaded_embedder = loaded_entry(loaded_now, embedder) if embedder else None
        if loaded is None and loaded_embedder is not None:
            raise ServingError(
                f"loading embedding_model '{embedder}' unloaded '{model.model}': the server "
                'keeps fewer than 2 models loaded (OLLAMA_MAX_LOADED_MODELS); a managed server '
                'gets at least 2 from max_loaded_models, start an adopted one with '
                'OLLAMA_MAX_LOADED_MODELS=2 or more')
        if loaded is None:
            raise ServingError(f"'{model.model}' was loaded but /api/ps does not list it")
        if embedder and loaded_embedder is None:
            raise ServingError(f"'{embedder}' was loaded but /api/ps does not list it")
        context_length = loaded.context_length or info['context_length']
        server = self._server
        self._runners = {name: server.runners(name) if server else [] for name in sizes}
        self._publish(model_loaded=True, capabilities=capabilities,
                      think_levels=bool(info.get('think_levels')),
                      context_length=context_length, embedding_loaded=bool(embedder),
                      embedding_capabilities=embedding_capabilities)
        self.log('info', f"model '{model.model}' loaded in {time.monotonic() - started:.3f} s "
                         f'({loaded.size / GiB:.2f} GiB, context {context_length}, capabilities '
                         f"{', '.join(capabilities)})" + (
                             f"; embedding_model '{embedder}' loaded next to it "
                             f'({loaded_embedder.size / GiB:.2f} GiB)'
                             if loaded_embedder is not None else ''))

    def _installed_size(self, engine: OllamaEngine, model: str, parameter: str) -> int:
        """The model's size in models_dir, pulled first when missing and pull_missing allows."""
        size = engine.installed_size(model)
        if size is not None:
            return size
        if not self._model.pull_missing:
            raise ServingError(f"{parameter} '{model}' is not in models_dir and pull_missing is "
                               f'false; pull it: ollama pull {model}')
        self._pull(engine, model)
        size = engine.installed_size(model)
        if size is None:
            raise ServingError(f"{parameter} '{model}' is still missing after the pull")
        return size

    def _import_if_changed(self, engine: OllamaEngine, model: ModelSettings) -> None:
        """Create the model from model_source when it is missing from models_dir, or was not
        created from this source's content (quantization and Modelfile instructions
        included): the digest it was created from is kept in the node's record file under
        models_dir (core/models.py ImportRecords; Ollama's manifest has no place for it, and a
        file next to the models stays true to them when the directory moves). Only the local
        server is contacted. A failure leaves the models dir as it was (an older model of that
        name stays)."""
        name, source = model.model, model.model_source
        records = ImportRecords(self._models_dir)
        try:
            # Reading a multi-GB source the first time takes minutes: the node's exit stops it.
            digest = records.source_digest(source, model.model_quantize, self.exiting)
        except OperationCanceled:
            raise ServingError(f"reading model_source '{source}' stopped") from None
        except SourceError as error:
            raise ServingError(str(error)) from None
        except OSError as error:    # the source changed while it was read
            raise ServingError(f"model_source '{source}' cannot be read: {error}") from None
        installed = engine.installed_size(name) is not None
        if installed and records.imported_from(name) == digest:
            records.save()      # the file hashes, when the cache learned new ones
            return
        self.log('info', f"model '{name}' " + (
            'was created from other content' if installed else 'is not in models_dir')
            + f": importing it from model_source '{source}'"
            + (f' (quantize {model.model_quantize})' if model.model_quantize else ''))
        logged = [-1]

        def progress(status: str, done: int, total: int) -> None:
            fraction = done / total if total else 0.0
            self._publish(pull_progress=fraction, progress_verb='importing')
            decile = int(fraction * 10)
            if decile > logged[0] or not total:
                logged[0] = max(decile, logged[0])
                self.log('info', f"importing '{name}': {fraction * 100:.0f} % ({status})")
        started = time.monotonic()
        try:
            import_model(engine, name, source, model.model_quantize, self._models_dir,
                         progress, self.exiting, records)
        except ModelProblem as problem:
            raise ServingError(f"importing '{name}' from model_source '{source}' failed "
                               f'({problem.code}): {problem.message}') from None
        finally:
            self._publish(pull_progress=None, progress_verb='pulling')
        self.log('info', f"imported '{name}' from '{source}' in "
                         f'{time.monotonic() - started:.1f} s')

    def _log_threads(self) -> None:
        """Say how many threads the model computes with and why; warn when a num_thread set
        explicitly exceeds the cores it may use (its threads wait for each other at every token
        and take every core)."""
        assert self._threads is not None
        threads, usable = self._threads, self._threads.usable
        self.log('info', f'num_thread {threads}')
        if threads.oversubscribed:
            self.log('warn', f'num_thread {threads.count} exceeds the {usable.count} core(s) the '
                             f'model may use ({usable.why}): its threads wait for each other and '
                             f'take every core; set num_thread to at most {usable.count}, or 0 '
                             '(automatic)')

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
        """Unload the model and the embedding model (or keep them for keep_alive_inactive) and
        confirm their runners are gone.

        Serving stops whatever happens: a failure to unload is a warning (model_error), never
        an error that would leave the node 'active' without a model. Runners still tracked
        afterwards (kept alive, or not yet gone) are only watched to report their exit: while
        inactive that is an unload, not a crash.
        """
        with self.lock:
            self._keep_loaded = False
            if self._engine is None or self._server_settings is None:
                return
            self._publish(model_loaded=False, embedding_loaded=False)
            engine, model = self._engine, self._model
            names = [model.model] + ([self._embedding_model] if self._embedding_model else [])
            both = ' and '.join(f"'{name}'" for name in names)
            try:
                if model.keep_alive_inactive > 0:
                    for name in names:
                        self._keep_for(name, model.keep_alive_inactive)
                    self.log('info', f'{both} stay loaded for {model.keep_alive_inactive:g} s '
                                     '(keep_alive_inactive)')
                    return
                started = time.monotonic()
                for name in names:
                    engine.unload(name)
            except EngineError as error:
                self._warn_model(f'unload: {error}')
                return
            stop_timeout = self._server_settings.stop_timeout
            deadline = time.monotonic() + stop_timeout
            runners = self._all_runners()
            # Returns as soon as the runners have exited (psutil polls /proc at a fine interval).
            psutil.wait_procs(runners, timeout=stop_timeout)
            while True:
                try:
                    listed = engine.loaded(unloading=True)
                except EngineError as error:   # the node stops serving whatever happens
                    self._warn_model(f'unload not confirmed: {error}')
                    return
                still_loaded = [name for name in names if loaded_entry(listed, name)]
                if not still_loaded and not any(_alive(p) for p in runners):
                    break
                if time.monotonic() > deadline:
                    self._warn_model(f"{', '.join(repr(n) for n in still_loaded) or both} still "
                                     f'loaded {stop_timeout:g} s after unloading (the server '
                                     'ends it, or cleanup stops it)')
                    return
                time.sleep(0.02)
            self._runners = {}
            self._publish()
            self.log('info', f'{both} unloaded in {time.monotonic() - started:.3f} s; '
                             f"{'its runner has' if len(names) == 1 else 'their runners have'} "
                             'exited')

    def _keep_for(self, name: str, keep_alive: float) -> None:
        """Keep a loaded model for keep_alive (the embedding model through /api/embed);
        bounded by stop_timeout, as the unload it replaces."""
        assert self._engine is not None
        if self._is_embedder(name):
            self._engine.load_embedder(name, keep_alive, loaded=True)
        else:
            self._engine.load(name, keep_alive, loaded=True)

    def _is_embedder(self, name: str) -> bool:
        """Whether `name` is the embedding model (and not also the chat model)."""
        return name == self._embedding_model and name != self._model.model

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
            self._runners = {}
            self._publish(model_loaded=False, embedding_loaded=False)

    def release(self) -> None:
        """Unload the model (only from an adopted server: a managed one takes its runners
        along), stop the server: safe in any state, idempotent."""
        with self.lock:
            self._release()

    def _release(self) -> None:
        if self._server is not None and self._server.adopted and (
                self.state.model_loaded or self.state.embedding_loaded):
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
            for name, runners in list(self._runners.items()):
                dead = next((runner for runner in runners if not _alive(runner)), None)
                if dead is None:
                    continue
                embedding = self._is_embedder(name)
                loaded = self.state.embedding_loaded if embedding else self.state.model_loaded
                if self._keep_loaded and loaded:
                    return Observation(self.epoch, Failure(
                        f"the runner of '{name}' (pid {dead.pid}) exited", self.epoch,
                        model_only=True, model=name, embedding=embedding))
                # Inactive: the model was unloaded (keep_alive_inactive ran out, a slow unload
                # finished, or someone asked Ollama): not a failure.
                self.log('info', f"model '{name}' unloaded: its runner (pid {dead.pid}) exited "
                                 'while the node was inactive')
                del self._runners[name]
                self._publish(model_error='')
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
            self._runners = {}
            self._publish(server_error=problem, model_loaded=False, embedding_loaded=False,
                          recovering=recovering)

    def mark_reloading(self, failure: Failure) -> None:
        """A model's runner went away while active: serve nothing of that model until it is
        reloaded (requests arriving meanwhile are told the node is recovering). The embedding
        model's runner: chats go on."""
        with self.lock:
            self._runners.pop(failure.model, None)
            if failure.embedding:
                self._publish(embedding_loaded=False, embedding_recovering=(
                    f'{failure.problem}; reloading the embedding model'))
            else:
                self._publish(model_loaded=False,
                              recovering=f'{failure.problem}; reloading the model')

    def reload(self, failure: Failure) -> None:
        """Load the model again after its runner went away while active; raises ServingError."""
        with self.lock:
            self.mark_reloading(failure)
            self._load()    # loads what is not loaded; the other model's runner stays
            self._publish(recovering='', embedding_recovering='', model_error='')

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
            self._publish(recovering='', embedding_recovering='', server_error='')

    def wants_model(self) -> bool:
        """The node is active: the model is to be loaded."""
        return self._keep_loaded


def _refuse_one_blob_under_two_names(models_dir: str, model: str, embedder: str) -> None:
    """Refuse an embedding_model that is another name of the chat model's weights.

    Ollama keeps one runner per weights file: loading the second name replaces the first's
    runner, so the two would swap runners at activate and at every chat after an embedding.
    Refused rather than served through one name: the node keeps, watches and reports each
    name's runner, and the fix is one word in the configuration.
    """
    blob = model_blob(models_dir, model)
    if (canonical_name(model) != canonical_name(embedder) and blob is not None
            and blob == model_blob(models_dir, embedder)):
        raise ServingError(
            f"model '{model}' and embedding_model '{embedder}' are two names of one weights "
            f'file ({blob}): Ollama runs one runner per weights file, so loading one name '
            'unloads the other; use one name for both')


def _prepare_models_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ServingError(f"models_dir '{path}' cannot be created: {error.strerror}") from None
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ServingError(f"models_dir '{path}' is not a writable directory")


def memory_refusal(sizes: Sequence[Tuple[str, int]], margin_mb: int, available: int,
                   embedding_model: str = '') -> str:
    """Why the models still to load (name, bytes) do not fit in `available` bytes with
    margin_mb to spare, naming each with its size; '' when they fit."""
    needed = sum(size for _, size in sizes) + margin_mb * 1024 ** 2
    if needed <= available:
        return ''
    named = ' and '.join(
        f"{'embedding_model ' if name == embedding_model else ''}'{name}' ({size / GiB:.2f} GiB)"
        for name, size in sizes)
    return (f"not enough memory for {named}: {'they need' if len(sizes) > 1 else 'it needs'} "
            f'{sum(size for _, size in sizes) / GiB:.2f} GiB plus memory_margin_mb {margin_mb}, '
            f'and only {available / GiB:.2f} GiB is available; free memory, pick a smaller '
            'quantization or lower memory_margin_mb')


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
