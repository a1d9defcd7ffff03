"""The lifecycle node that owns the Ollama server and the model.

    unconfigured --configure--> inactive --activate--> active
         ^                          |  ^                 |
         +---------cleanup----------+  +---deactivate----+

configure   validates the parameters, starts `ollama serve` (or adopts a running server) and
            waits until it answers HTTP. SUCCESS -> inactive; FAILURE (bad parameter, missing
            binary, port taken, server died or timed out) -> unconfigured, nothing left running.
activate    takes the model and chat parameters as they are now, pulls the model if it is
            missing, checks that it fits in the available RAM, loads it (kept loaded for as
            long as the node is active) and confirms it in /api/ps.
            SUCCESS -> active, chats are accepted; FAILURE -> inactive, model not loaded.
deactivate  stops accepting chats, aborts the running ones, unloads the model and confirms the
            runner has exited (an unload not confirmed in time is a warning: the node has
            stopped serving either way). SUCCESS -> inactive.
cleanup     stops the server (SIGTERM, grace, SIGKILL of its process group, sweep of orphaned
            runners) and confirms its port is free; an adopted server is left running.
            SUCCESS -> unconfigured.
shutdown    from any state: everything above that applies. -> finalized.
on_error    (a transition raised, or the server died beyond the restart policy): stops
            everything. SUCCESS -> unconfigured.

A supervision thread notices within 0.5 s when the server dies, and within seconds when it
hangs (alive, not answering HTTP); it aborts the running chats with the cause and restarts
the server per the restart policy (backoff waited without holding the node's lock) or takes
the node to ErrorProcessing. A model runner that exits while active (the model was unloaded
by anyone, or crashed) is reloaded without spending the restart budget; while inactive its
exit is an unload, not a failure. Only the runners of the server this node started (its
process tree) are watched.
"""

import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, List, Optional

import psutil
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.executors import MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.lifecycle import LifecycleNode
from rclpy.lifecycle import LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn

from . import parameters
from .chat_action import ChatActionServer
from .core.config import ConfigError
from .core.config import SupervisionSettings
from .core.engine import EngineError
from .core.engine import FOREVER
from .core.engine import OllamaEngine
from .core.server import OllamaServer
from .core.server import ServerError
from .core.serving import ServingState
from .core.supervision import HEALTH_PERIOD
from .core.supervision import HealthCheck
from .core.supervision import RestartBudget
from .diagnostics import DiagnosticsPublisher
from .tts_bridge import TtsBridge

# The server's and runner's liveness is checked this often (a poll and a /proc read each).
SUPERVISION_PERIOD = 0.5
GiB = 1024 ** 3
RCLError = _rclpy.RCLError


class TransitionFailed(Exception):
    """A transition step failed for a reason the user can fix; the message says which."""


@dataclasses.dataclass
class Failure:
    """What supervision saw go wrong, and the transition epoch it saw it in."""

    problem: str
    epoch: int
    model_only: bool = False      # the model's runner went away; the server is fine


class LlmNode(LifecycleNode):
    def __init__(self, node_name: str = 'llm', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        parameters.declare(self)
        self.add_on_set_parameters_callback(
            lambda changed: parameters.validate_change(self, changed))
        # After Ctrl-C/SIGTERM the context is gone and the node's logger can no longer publish
        # to /rosout (rcl says so on stderr for every line): the last lines go to this one,
        # which only writes to the console.
        self._exit_logger = rclpy.logging.get_logger(f'{self.get_name()}.exit')
        self.settings: Optional[parameters.NodeSettings] = None
        self.server: Optional[OllamaServer] = None
        self.engine: Optional[OllamaEngine] = None
        self._engine_timeout = 0.0
        self.capabilities: List[str] = []
        self.context_length = 0
        self.model_loaded = False
        self.pull_progress: Optional[float] = None
        # What is wrong, for /diagnostics: with the server, with the model; '' when nothing is.
        self.server_error = ''
        self.model_error = ''
        # The cause of a supervised restart or reload in progress ('' when none is).
        self.recovering = ''
        self._failure = ''
        self._load_requested = False
        self.runner_processes: List[psutil.Process] = []
        self._budget = RestartBudget()
        self._health: Optional[HealthCheck] = None
        # Counts transitions: supervision acts on what it saw only if no transition ran since.
        self._epoch = 0
        self._exiting = threading.Event()   # set when the process is going down (ends supervision)
        # Set by every transition and by the exit: ends a restart backoff that it makes moot.
        self._wake = threading.Event()
        # Threads and locks. The executor runs lifecycle services (change_state in a group of its
        # own), parameter services, the chat action (its own reentrant group) and the TTS bridge;
        # supervision and diagnostics are plain threads. _transitions: one lifecycle transition at
        # a time, whether a client or supervision asks for it. _lock: transitions and supervision
        # never change the server, engine or model at the same time; nobody sleeps or waits for a
        # restart backoff while holding it. The chat action and diagnostics never take either.
        self._transitions = threading.Lock()
        self._lock = threading.RLock()
        self._decouple_lifecycle_services()
        self.chat = ChatActionServer(self)
        self.diagnostics = DiagnosticsPublisher(self)
        # Supervision is a plain thread, not an rclpy timer: a timer costs the executor a wake-up
        # and a dispatch (about 2 ms of CPU each on a 2-core machine), which made up a third of
        # the idle node's CPU; the check itself is a waitpid and a /proc read.
        threading.Thread(target=self._supervision_loop, name='supervision', daemon=True).start()
        self.tts_bridge = TtsBridge(self) if self.get_parameter('tts_bridge').value else None
        self.log.info('ready (unconfigured): configure starts the Ollama server')

    @property
    def log(self) -> RcutilsLogger:
        return self.get_logger() if self.context.ok() else self._exit_logger

    # ---- lifecycle services --------------------------------------------------------------
    def _decouple_lifecycle_services(self) -> None:
        """Let status queries answer during a transition, and refuse invalid requests.

        rclpy creates all five lifecycle services in one mutually exclusive callback group (the
        node's default on Humble and Jazzy; Kilted takes a group argument, still one for all),
        so get_state waited for a whole pull or load. change_state gets a group of its own:
        get_state, the other lifecycle services and the parameter services answer at once.

        On Humble and Jazzy, a transition id not valid in the current state makes rclpy raise
        RCLError out of the service callback, which ends the executor and the node (rclpy#1209;
        Kilted catches it). The request is checked first and answered success=false.
        """
        service = self._service_change_state
        group = MutuallyExclusiveCallbackGroup()
        service.callback_group = group
        group.add_entity(service)
        handle_request = service.callback
        service.callback = lambda request, response: self._on_change_state(
            handle_request, request, response)

    def _on_change_state(self, handle_request: Callable[[Any, Any], Any], request: Any,
                         response: Any) -> Any:
        with self._transitions:
            wanted = request.transition.label or request.transition.id
            available = self._state_machine.available_transitions
            valid = [(t[0], t[1]) for t in available]
            if not any(label == request.transition.label if request.transition.label
                       else number == request.transition.id for number, label in valid):
                self.log.warning(
                    f"change_state refused: transition '{wanted}' is not valid in state "
                    f"'{self.state_label}' (valid: "
                    f"{', '.join(f'{label} ({number})' for number, label in valid)})")
                response.success = False
                return response
            try:
                return handle_request(request, response)
            except RCLError as error:   # e.g. the context went away (Ctrl-C) during it
                self.log.warning(f"change_state '{wanted}' could not complete: {error}")
                response.success = False
                return response

    # ---- state ---------------------------------------------------------------------------
    @property
    def state_label(self) -> str:
        # rclpy has no public getter for the current state; its own services read this.
        return self._state_machine.current_state[1]

    @property
    def active(self) -> bool:
        return self.state_label == 'active' and self.model_loaded

    def not_serving_reason(self) -> str:
        """Why a chat cannot be served now ('' when it can), as a client should read it."""
        state = self.state_label
        if state != 'active':
            return f'the node is not active (state: {state})'
        if self.recovering:
            return f'the node is recovering (state: active): {self.recovering}'
        if not self.model_loaded:
            cause = self._failure or self.server_error or self.model_error
            return 'the model is not loaded (state: active)' + (f': {cause}' if cause else '')
        return ''

    @property
    def model(self) -> str:
        return self.settings.model.model if self.settings else ''

    def serving_state(self) -> ServingState:
        """What the node serves now, as one snapshot: all the chat action and the diagnostics
        read of the node's serving state."""
        server = self.server
        reason = self.not_serving_reason()
        return ServingState(
            lifecycle=self.state_label, model=self.model, serving=not reason,
            not_serving_reason=reason, model_loaded=self.model_loaded,
            capabilities=tuple(self.capabilities), context_length=self.context_length,
            pull_progress=self.pull_progress, recovering=self.recovering,
            server_error=self.server_error, model_error=self.model_error,
            models_dir=self.settings.models_dir if self.settings else
            parameters.expand_models_dir(self.get_parameter('models_dir').value),
            server=server.status() if server is not None else None,
            runner_pids=tuple(p.pid for p in self.runner_processes), engine=self.engine)

    # ---- transitions ---------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters and start (or adopt) the Ollama server."""
        def configure() -> None:
            self.model_error = ''
            try:
                self.settings = parameters.read(self)
            except ConfigError as error:
                raise TransitionFailed(f'invalid parameter: {error}') from None
            self._prepare_models_dir()
            self.server = OllamaServer(self.settings.server, self.settings.models_dir,
                                       self._log_line)
            try:
                self.server.start()
            except ServerError as error:
                self.server = None
                raise TransitionFailed(str(error)) from None
            self._engine_timeout = self.settings.model.load_timeout
            self.engine = OllamaEngine(self.settings.server.base_url, self._engine_timeout)
            self.chat.configure(self.settings)
            self._budget.clear()
            self._health = HealthCheck(time.monotonic())
        return self._transition('configure', configure, on_failure=self._stop_server)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Take the model and chat settings, make sure the model is present and fits, load it,
        confirm it in /api/ps."""
        def activate() -> None:
            self._take_activate_settings()
            self._load_model()
        result = self._transition('activate', activate, on_failure=self._unload_after_failure,
                                  about_model=True)
        return super().on_activate(state) if result is TransitionCallbackReturn.SUCCESS \
            else result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop accepting chats, abort the running ones, unload the model."""
        def deactivate() -> None:
            self.chat.abort_all('the node is deactivating', failure=False)
            self._unload_model()
        result = self._transition('deactivate', deactivate, about_model=True)
        return super().on_deactivate(state) if result is TransitionCallbackReturn.SUCCESS \
            else result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the server (an adopted one is left running) and forget sessions."""
        def cleanup() -> None:
            self._stop_server()
            self.chat.sessions.clear()
        return self._transition('cleanup', cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: abort chats, unload, stop the server."""
        return self._transition('shutdown', self.release_everything)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Leave nothing behind; SUCCESS takes the node to unconfigured, ready to configure."""
        cause = self.server_error or self.model_error
        self.log.error(f'error processing (from {state.label}): stopping the server'
                       + (f'; cause: {cause}' if cause else ''))
        try:
            self.release_everything()
        except Exception as error:  # on_error must not raise: that would finalize the node
            self.log.error(f'error processing: cleanup failed: {error}')
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _transition(self, name: str, step: Callable[[], None],
                    on_failure: Optional[Callable[[], None]] = None,
                    about_model: bool = False) -> TransitionCallbackReturn:
        """Run one transition's step under the lock; its failure is the server's or (activate,
        deactivate) the model's, and is reported as such on /diagnostics."""
        started = time.monotonic()
        with self._lock:
            self._epoch += 1
            self._wake.set()
            self.recovering = ''
            if self._failure:
                self.server_error = self._failure
                self._failure = ''
                return TransitionCallbackReturn.ERROR
            if self._exiting.is_set():
                return TransitionCallbackReturn.FAILURE
            if about_model:
                self.model_error = ''
            else:
                self.server_error = ''
            try:
                step()
            except (TransitionFailed, EngineError, ServerError) as error:
                message = f'{name} failed: {error}'
                if self._exiting.is_set():
                    message += ' (the node is exiting)'
                elif on_failure is not None:
                    on_failure()
                if about_model:
                    self.model_error = message
                else:
                    self.server_error = message
                self.log.error(message)
                return TransitionCallbackReturn.FAILURE
            except Exception as error:
                # rclpy turns an exception into ERROR without a word: say what it was.
                self.server_error = f'{name} raised {type(error).__name__}: {error}'
                self.log.error(self.server_error)
                return TransitionCallbackReturn.ERROR
            finally:
                # No probes ran during the transition: the server's silence starts now.
                self._health = HealthCheck(time.monotonic()) if self.server else None
        self.log.info(f'{name}: done in {time.monotonic() - started:.3f} s')
        return TransitionCallbackReturn.SUCCESS

    # ---- steps ---------------------------------------------------------------------------
    def _prepare_models_dir(self) -> None:
        assert self.settings is not None
        path = self.settings.models_dir
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise TransitionFailed(f"models_dir '{path}' cannot be created: "
                                   f'{error.strerror}') from None
        if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
            raise TransitionFailed(f"models_dir '{path}' is not a writable directory")

    def _take_activate_settings(self) -> None:
        """Model and chat settings apply at every activate (server settings at configure)."""
        assert self.settings is not None and self.engine is not None
        try:
            current = parameters.read(self)
        except ConfigError as error:
            raise TransitionFailed(f'invalid parameter: {error}') from None
        self.settings = dataclasses.replace(self.settings, model=current.model,
                                            chat=current.chat)
        if current.model.load_timeout != self._engine_timeout:
            # The engine's HTTP clients carry the timeout: new ones for the new value.
            self.engine.close()
            self._engine_timeout = current.model.load_timeout
            self.engine = OllamaEngine(self.settings.server.base_url, self._engine_timeout)
        self.chat.configure(self.settings)

    def _load_model(self) -> None:
        assert self.settings is not None and self.engine is not None
        model = self.settings.model
        self._load_requested = False
        size = self.engine.installed_size(model.model)
        if size is None:
            if not model.pull_missing:
                raise TransitionFailed(f"model '{model.model}' is not in models_dir and "
                                       'pull_missing is false; pull it: ollama pull '
                                       f'{model.model}')
            self._pull(model.model)
            size = self.engine.installed_size(model.model)
            if size is None:
                raise TransitionFailed(f"model '{model.model}' is still missing after the pull")
        if self.engine.loaded_model(model.model) is None:
            available = psutil.virtual_memory().available
            needed = size + model.memory_margin_mb * 1024 ** 2
            if needed > available:
                raise TransitionFailed(
                    f"not enough memory for '{model.model}': it needs {size / GiB:.2f} GiB plus "
                    f'memory_margin_mb {model.memory_margin_mb}, and only '
                    f'{available / GiB:.2f} GiB is available; free memory, pick a smaller '
                    'quantization or lower memory_margin_mb')
        info = self.engine.show(model.model)
        self.capabilities = info['capabilities']
        started = time.monotonic()
        self._load_requested = True
        self.engine.load(model.model, FOREVER)
        loaded = self.engine.loaded_model(model.model)
        if loaded is None:
            raise TransitionFailed(f"'{model.model}' was loaded but /api/ps does not list it")
        self.context_length = loaded.context_length or info['context_length']
        self.runner_processes = self.server.runners() if self.server else []
        self.model_loaded = True
        self.log.info(
            f"model '{model.model}' loaded in {time.monotonic() - started:.3f} s "
            f'({loaded.size / GiB:.2f} GiB, context {self.context_length}, capabilities '
            f"{', '.join(self.capabilities)})")

    def _pull(self, model: str) -> None:
        assert self.engine is not None
        self.log.info(f"model '{model}' is not in models_dir: pulling it")
        logged = [-1]

        def progress(fraction: float, status: str) -> None:
            self.pull_progress = fraction
            decile = int(fraction * 10)
            if decile > logged[0]:
                logged[0] = decile
                self.log.info(f"pulling '{model}': {fraction * 100:.0f} % ({status})")
        try:
            self.engine.pull(model, progress)
        finally:
            self.pull_progress = None
        self.log.info(f"pulled '{model}'")

    def _unload_after_failure(self) -> None:
        """After a failed activate: unload what the load may have left (nothing to unload when
        it failed before the load request, e.g. a model that could not be pulled)."""
        if self._load_requested:
            self._unload_model()

    def _unload_model(self) -> None:
        """Unload (or keep for keep_alive_inactive) and confirm the runner is gone.

        The node stops serving whatever happens: a failure to unload is a warning (on the
        Model status), never a deactivate that leaves the node 'active' without a model.
        Runners still tracked afterwards (kept alive, or not yet gone) are only watched to
        report their exit: while inactive that is an unload, not a crash.
        """
        if self.engine is None or self.settings is None:
            return
        self.model_loaded = False
        model = self.settings.model
        try:
            if model.keep_alive_inactive > 0:
                self.engine.set_keep_alive(model.model, model.keep_alive_inactive)
                self.log.info(f"model '{model.model}' stays loaded for "
                              f'{model.keep_alive_inactive:g} s (keep_alive_inactive)')
                return
            started = time.monotonic()
            self.engine.unload(model.model)
        except EngineError as error:
            self.model_error = f'unload: {error}'
            self.log.warning(self.model_error)
            return
        stop_timeout = self.settings.server.stop_timeout
        deadline = time.monotonic() + stop_timeout
        # Returns as soon as the runners have exited (psutil polls /proc at a fine interval).
        psutil.wait_procs(self.runner_processes, timeout=stop_timeout)
        while self.engine.loaded_model(model.model) is not None or any(
                _alive(p) for p in self.runner_processes):
            if time.monotonic() > deadline:
                self.model_error = (f"'{model.model}' is still loaded {stop_timeout:g} s after "
                                    'unloading (the server ends it, or cleanup stops it)')
                self.log.warning(self.model_error)
                return
            time.sleep(0.02)
        self.runner_processes = []
        self.log.info(f"model '{model.model}' unloaded in "
                      f'{time.monotonic() - started:.3f} s; its runner has exited')

    def _stop_server(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.model_loaded = False
        self.runner_processes = []

    def exit_process(self) -> None:
        """The process is going down (Ctrl-C, SIGTERM): stop everything within seconds, whatever
        runs. A transition or recovery in progress (a pull or load can take minutes) holds the
        lock: the managed server is told to stop at once, which fails its request, and the
        transition gives way."""
        self._exiting.set()
        self._wake.set()
        # rclpy's own lifecycle code logs through the node's logger too (e.g. a transition it
        # can no longer complete): from now on that logger writes to the console only.
        self._logger = self._exit_logger
        self.diagnostics.stop()
        locked = self._lock.acquire(blocking=False)
        if not locked and self.server is not None:
            server = self.server
            stop_timeout = server.settings.stop_timeout
            self.log.info('exiting during a transition: stopping the Ollama server now')
            server.signal_group(signal.SIGTERM)
            locked = self._lock.acquire(timeout=stop_timeout)
            if not locked:
                server.signal_group(signal.SIGKILL)
                locked = self._lock.acquire(timeout=stop_timeout)
        try:
            self._release()
        finally:
            if locked:
                self._lock.release()

    def release_everything(self) -> None:
        """Abort chats, unload the model, stop the server: safe from any state, idempotent."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        self.chat.abort_all('the node is shutting down', failure=False)
        if self.server is not None and self.server.adopted and self.model_loaded:
            self._unload_model()
        self._stop_server()

    # ---- supervision ---------------------------------------------------------------------
    def _supervision_loop(self) -> None:
        while not self._exiting.wait(SUPERVISION_PERIOD):
            try:
                failure = self._check()
                if failure is not None and failure.model_only:
                    failure = self._reload_model(failure)
                if failure is not None:
                    self._restart_server(failure)
            except Exception as error:  # keep supervising; say what went wrong
                if not self.context.ok():
                    return      # Ctrl-C shut rclpy down before the node stopped this thread
                self.log.error(f'supervision raised {type(error).__name__}: {error}')

    def _check(self) -> Optional[Failure]:
        """What went wrong since the last check; None when all is well or a transition runs."""
        if not self._lock.acquire(blocking=False):
            return None     # a transition runs: it owns the server for now
        try:
            server, health, epoch = self.server, self._health, self._epoch
            if server is None:
                return None
            code = server.exit_code()
            if code is not None:
                return Failure(f'the Ollama server (pid {server.pid}) exited with code {code}',
                               epoch)
            for runner in self.runner_processes:
                if _alive(runner):
                    continue
                if self.state_label == 'active' and self.model_loaded:
                    return Failure(f"the runner of '{self.model}' (pid {runner.pid}) exited",
                                   epoch, model_only=True)
                # Inactive: the model was unloaded (keep_alive_inactive ran out, a slow
                # unload finished, or someone asked Ollama): not a failure.
                self.log.info(f"model '{self.model}' unloaded: its runner (pid {runner.pid}) "
                              'exited while the node was inactive')
                self.runner_processes = []
                self.model_error = ''
                return None
            if health is None or not health.due(time.monotonic()):
                return None
        finally:
            self._lock.release()
        # An HTTP probe: up to its timeout on a hung server, so not under the lock. A busy
        # machine may be slow to answer; only silence over HUNG_AFTER counts.
        if not health.observe(server.reachable(timeout=HEALTH_PERIOD), time.monotonic()):
            return None
        silent = time.monotonic() - health.last_answer
        where = f'(pid {server.pid}) ' if server.pid else ''
        return Failure(f'the Ollama server {where}at {server.base_url} has not answered for '
                       f'{silent:.0f} s (hung)', epoch)

    def _reload_model(self, failure: Failure) -> Optional[Failure]:
        """The model went away while active (unloaded by keep_alive or by any client of the
        server, or its runner crashed): load it again. Not a server failure, so the restart
        budget is not spent; a reload that fails is one (returned for _restart_server)."""
        with self._lock:
            if self._epoch != failure.epoch or not self.active or self._exiting.is_set():
                return None     # a transition ran meanwhile and decided what happens
            self.log.warning(f'{failure.problem} while active (the model was unloaded or its '
                             'runner crashed): reloading it (not a server failure, no restart '
                             'counted)')
            self.recovering = f'{failure.problem}; reloading the model'
            self.model_loaded = False
            self.runner_processes = []
            self.chat.abort_all(failure.problem)
            try:
                self._load_model()
            except (TransitionFailed, EngineError, ServerError) as error:
                return Failure(f'{failure.problem}; reloading it failed: {error}',
                               failure.epoch)
            self.recovering = ''
            self.model_error = ''
            self.log.info(f"recovered: model '{self.model}' reloaded")
            return None

    def _restart_server(self, failure: Failure) -> None:
        """Restart the server per the restart policy (and reload the model when active), or
        give up: ErrorProcessing. The backoff is waited without the lock, so transitions
        requested meanwhile run; one that did makes this restart moot."""
        problem = failure.problem
        while True:
            with self._lock:
                if self._epoch != failure.epoch or self.server is None or self._exiting.is_set():
                    return
                self.log.error(problem)
                self.server_error = problem
                self.model_loaded = False
                self.runner_processes = []
                self.chat.abort_all(problem)
                supervision = self._supervision_settings()
                decision = self._budget.decide(supervision, time.monotonic())
                if not decision.restart:
                    self.log.error(f'giving up ({decision.reason}): going to ErrorProcessing')
                    self._failure = problem
                    self.recovering = ''
                    break
                self.recovering = f'{problem}; restarting the server'
                self.log.warning(f'restarting in {decision.backoff:g} s (restart '
                                 f'{decision.attempt}/{supervision.max_restarts})')
                self._wake.clear()
            self._wake.wait(decision.backoff)
            with self._lock:
                if self._exiting.is_set():
                    return
                if self._epoch != failure.epoch:
                    self.log.info('restart abandoned: a lifecycle transition ran meanwhile')
                    return
                try:
                    self._restart(reload=self.state_label == 'active')
                except (TransitionFailed, EngineError, ServerError) as error:
                    self.log.error(f'restart failed: {error}')
                    problem = f'{failure.problem}; restart failed: {error}'
                    continue
                self.recovering = ''
                self.server_error = ''
                self.log.info('recovered: server running'
                              + (' and model loaded' if self.model_loaded else ''))
                return
        with self._transitions:     # not while a client's transition runs
            if self._epoch != failure.epoch:
                return
            if self.state_label == 'active':
                self.trigger_deactivate()
            elif self.state_label == 'inactive':
                self.trigger_cleanup()

    def _restart(self, reload: bool) -> None:
        assert self.server is not None and self.settings is not None
        server = self.server
        if server.adopted:
            if not server.reachable():
                raise ServerError(f'the Ollama server at {server.base_url} still does not answer')
        else:
            server.stop()       # what is left of it: a hung one gets SIGTERM, then SIGKILL
            server.start()
            server.restarts += 1
        self._health = HealthCheck(time.monotonic())
        if reload:
            self._load_model()

    def _supervision_settings(self) -> SupervisionSettings:
        """The restart policy applies at once: read from the parameters at each failure."""
        return SupervisionSettings(**{field.name: self.get_parameter(field.name).value
                                      for field in dataclasses.fields(SupervisionSettings)})

    def _log_line(self, level: str, line: str) -> None:
        # rclpy refuses one call site logging at several severities: one call per level.
        logger = self.log
        if level == 'error':
            logger.error(line)
        elif level == 'warn':
            logger.warning(line)
        elif level == 'info':
            logger.info(line)
        else:
            logger.debug(line)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exit_with_parent() -> None:
    """Have the kernel send SIGTERM to this process when the process that started it dies.

    `ros2 launch` dies at once on SIGTERM (launch installs no handler for it), `ros2 run` and a
    shell die on it too; the node would then live on without a parent, keeping the server and
    the model's RAM. SIGTERM takes the normal exit path (rclpy's handler: the node stops its
    server). A node whose parent never goes away (systemd, PID 1) is not affected. Linux sends
    it when the parent *thread* that started the node ends: a program starting llm_node from a
    short-lived thread stops it too. The notice covers only a parent death after prctl(): one
    between reading the parent here and prctl() is caught by checking the parent again; one
    while the interpreter starts (before main) is not seen, and leaves an unconfigured node
    (no server) that the user ends.
    """
    parent = os.getppid()
    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    if os.getppid() != parent:
        sys.exit('llm_node: the process that started it exited; not starting')


def main(args: Optional[List[str]] = None) -> int:
    exit_with_parent()
    rclpy.init(args=args)
    node = LlmNode()
    chat_threads = node.get_parameter('num_parallel').value + \
        node.get_parameter('max_queued_goals').value
    # One thread per chat that may run or wait, plus the lifecycle, parameter and goal/cancel/
    # result services and the TTS bridge (diagnostics and supervision have their own threads).
    executor = MultiThreadedExecutor(num_threads=chat_threads + 4)
    executor.add_node(node)
    try:
        # Not executor.spin(): a signal can shut the context down while the executor rebuilds
        # its wait set, and the wake-up is then lost (seen on Jazzy, about 1 exit in 15). With
        # no timer left to wake it, the process would never exit; waiting in 1 s steps bounds
        # that, for one executor pass per idle second.
        while rclpy.ok():
            executor.spin_once(timeout_sec=1.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A signal can shut the context down while the executor builds its wait set, which
        # then raises RCLError "context is not valid": that is a normal exit, anything else not.
        if rclpy.ok():
            raise
    finally:
        # rclpy runs no shutdown transition on Ctrl-C/SIGTERM: stop the server here.
        node.exit_process()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
