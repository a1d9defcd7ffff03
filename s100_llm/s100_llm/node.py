"""The lifecycle node that owns the Ollama server and the model.

    unconfigured --configure--> inactive --activate--> active
         ^                          |  ^                 |
         +---------cleanup----------+  +---deactivate----+

configure   validates the parameters, starts `ollama serve` (or adopts a running server) and
            waits until it answers HTTP. SUCCESS -> inactive; FAILURE (bad parameter, missing
            binary, port taken, server died or timed out) -> unconfigured, nothing left running.
activate    pulls the model if it is missing, checks that it fits in the available RAM, loads it
            (kept loaded for as long as the node is active) and confirms it in /api/ps.
            SUCCESS -> active, chats are accepted; FAILURE -> inactive, model not loaded.
deactivate  stops accepting chats, aborts the running ones, unloads the model and confirms the
            runner has exited. SUCCESS -> inactive.
cleanup     stops the server (SIGTERM, grace, SIGKILL of its process group, sweep of orphaned
            runners) and confirms its port is free; an adopted server is left running.
            SUCCESS -> unconfigured.
shutdown    from any state: everything above that applies. -> finalized.
on_error    (a transition raised, or the server died beyond the restart policy): stops
            everything. SUCCESS -> unconfigured.

A supervision thread notices within 0.5 s when the server or the model runner dies, aborts the
running chats with the cause, and restarts/reloads per the restart policy or takes the node to
ErrorProcessing.
"""

import collections
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable, Deque, List, Optional

import psutil
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.lifecycle import LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn

from . import parameters
from .chat_action import ChatActionServer
from .core.config import ConfigError
from .core.engine import EngineError
from .core.engine import FOREVER
from .core.engine import OllamaEngine
from .core.server import OllamaServer
from .core.server import ServerError
from .diagnostics import DiagnosticsPublisher
from .tts_bridge import TtsBridge

# The server's and runner's liveness is checked this often (a poll and a /proc read each).
SUPERVISION_PERIOD = 0.5
GiB = 1024 ** 3


class TransitionFailed(Exception):
    """A transition step failed for a reason the user can fix; the message says which."""


class LlmNode(LifecycleNode):
    def __init__(self, node_name: str = 'llm', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        parameters.declare(self)
        self.add_on_set_parameters_callback(
            lambda changed: parameters.validate_change(self, changed))
        self.settings: Optional[parameters.NodeSettings] = None
        self.server: Optional[OllamaServer] = None
        self.engine: Optional[OllamaEngine] = None
        self.capabilities: List[str] = []
        self.context_length = 0
        self.model_loaded = False
        self.pull_progress: Optional[float] = None
        self.last_error = ''
        self._failure = ''
        self.runner_processes: List[psutil.Process] = []
        self._restarts: Deque[float] = collections.deque()
        self._exiting = threading.Event()   # set when the process is going down (ends supervision)
        # Transitions and supervision never interleave. The chat action (its own callback group)
        # and diagnostics (its own thread) never take this lock: a long transition stalls neither.
        self._lock = threading.RLock()
        self.chat = ChatActionServer(self)
        self.diagnostics = DiagnosticsPublisher(self)
        # Supervision is a plain thread, not an rclpy timer: a timer costs the executor a wake-up
        # and a dispatch (about 2 ms of CPU each on a 2-core machine), which made up a third of
        # the idle node's CPU; the check itself is a waitpid and a /proc read.
        threading.Thread(target=self._supervision_loop, name='supervision', daemon=True).start()
        self.tts_bridge = TtsBridge(self) if self.get_parameter('tts_bridge').value else None
        self.get_logger().info('ready (unconfigured): configure starts the Ollama server')

    # ---- state ---------------------------------------------------------------------------
    @property
    def state_label(self) -> str:
        # rclpy has no public getter for the current state; its own services read this.
        return self._state_machine.current_state[1]

    @property
    def active(self) -> bool:
        return self.state_label == 'active' and self.model_loaded

    @property
    def model(self) -> str:
        return self.settings.model.model if self.settings else ''

    # ---- transitions ---------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters and start (or adopt) the Ollama server."""
        def configure() -> None:
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
            self.engine = OllamaEngine(self.settings.server.base_url,
                                       self.settings.model.load_timeout)
            self.chat.configure(self.settings)
            self._restarts.clear()
        return self._transition('configure', configure, on_failure=self._stop_server)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Make sure the model is present and fits, load it, confirm it in /api/ps."""
        def activate() -> None:
            self._load_model()
            self.chat.configure(self.settings)
        result = self._transition('activate', activate, on_failure=self._unload_model)
        return super().on_activate(state) if result is TransitionCallbackReturn.SUCCESS \
            else result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop accepting chats, abort the running ones, unload the model."""
        def deactivate() -> None:
            self.chat.abort_all('the node is deactivating')
            self._unload_model()
        result = self._transition('deactivate', deactivate)
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
        self.get_logger().error(f'error processing (from {state.label}): stopping the server'
                                + (f'; cause: {self.last_error}' if self.last_error else ''))
        try:
            self.release_everything()
        except Exception as error:  # on_error must not raise: that would finalize the node
            self.get_logger().error(f'error processing: cleanup failed: {error}')
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _transition(self, name: str, step: Callable[[], None],
                    on_failure: Optional[Callable[[], None]] = None) -> TransitionCallbackReturn:
        started = time.monotonic()
        with self._lock:
            if self._failure:
                self.last_error = self._failure
                self._failure = ''
                return TransitionCallbackReturn.ERROR
            try:
                step()
            except (TransitionFailed, EngineError, ServerError) as error:
                self.last_error = f'{name} failed: {error}'
                self.get_logger().error(self.last_error)
                if on_failure is not None:
                    on_failure()
                return TransitionCallbackReturn.FAILURE
            except Exception as error:
                # rclpy turns an exception into ERROR without a word: say what it was.
                self.last_error = f'{name} raised {type(error).__name__}: {error}'
                self.get_logger().error(self.last_error)
                return TransitionCallbackReturn.ERROR
        self.last_error = ''
        self.get_logger().info(f'{name}: done in {time.monotonic() - started:.3f} s')
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

    def _load_model(self) -> None:
        assert self.settings is not None and self.engine is not None
        model = self.settings.model
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
        self.engine.load(model.model, FOREVER)
        loaded = self.engine.loaded_model(model.model)
        if loaded is None:
            raise TransitionFailed(f"'{model.model}' was loaded but /api/ps does not list it")
        self.context_length = loaded.context_length or info['context_length']
        self.runner_processes = self.server.runners() if self.server and not self.server.adopted \
            else []
        self.model_loaded = True
        self.get_logger().info(
            f"model '{model.model}' loaded in {time.monotonic() - started:.3f} s "
            f'({loaded.size / GiB:.2f} GiB, context {self.context_length}, capabilities '
            f"{', '.join(self.capabilities)})")

    def _pull(self, model: str) -> None:
        assert self.engine is not None
        self.get_logger().info(f"model '{model}' is not in models_dir: pulling it")
        logged = [-1]

        def progress(fraction: float, status: str) -> None:
            self.pull_progress = fraction
            decile = int(fraction * 10)
            if decile > logged[0]:
                logged[0] = decile
                self.get_logger().info(f"pulling '{model}': {fraction * 100:.0f} % ({status})")
        try:
            self.engine.pull(model, progress)
        finally:
            self.pull_progress = None
        self.get_logger().info(f"pulled '{model}'")

    def _unload_model(self) -> None:
        """Unload (or keep for keep_alive_inactive) and confirm the runner is gone."""
        if self.engine is None or self.settings is None:
            return
        self.model_loaded = False
        model = self.settings.model
        if model.keep_alive_inactive > 0:
            self.engine.set_keep_alive(model.model, model.keep_alive_inactive)
            self.get_logger().info(f"model '{model.model}' stays loaded for "
                                   f'{model.keep_alive_inactive:g} s (keep_alive_inactive)')
            return
        started = time.monotonic()
        try:
            self.engine.unload(model.model)
        except EngineError as error:
            self.get_logger().warning(f'unload: {error}')
            return
        deadline = time.monotonic() + self.settings.server.stop_timeout
        # Returns as soon as the runners have exited (psutil polls /proc at a fine interval).
        psutil.wait_procs(self.runner_processes, timeout=self.settings.server.stop_timeout)
        while self.engine.loaded_model(model.model) is not None or any(
                _alive(p) for p in self.runner_processes):
            if time.monotonic() > deadline:
                raise TransitionFailed(f"'{model.model}' is still loaded "
                                       f'{self.settings.server.stop_timeout:g} s after unloading')
            time.sleep(0.02)
        self.runner_processes = []
        self.get_logger().info(f"model '{model.model}' unloaded in "
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
        """The process is going down (Ctrl-C, SIGTERM): stop everything without waiting for a
        restart backoff in progress."""
        self._exiting.set()
        self.diagnostics.stop()
        self.release_everything()

    def release_everything(self) -> None:
        """Abort chats, unload the model, stop the server: safe from any state, idempotent."""
        with self._lock:
            self.chat.abort_all('the node is shutting down')
            if self.server is not None and self.server.adopted and self.model_loaded:
                try:
                    self._unload_model()
                except (TransitionFailed, EngineError) as error:
                    self.get_logger().warning(str(error))
            self._stop_server()

    # ---- supervision ---------------------------------------------------------------------
    def _supervision_loop(self) -> None:
        while not self._exiting.wait(SUPERVISION_PERIOD):
            try:
                self._supervise()
            except Exception as error:  # keep supervising; say what went wrong
                if not self.context.ok():
                    return      # Ctrl-C shut rclpy down before the node stopped this thread
                self.get_logger().error(f'supervision raised {type(error).__name__}: {error}')

    def _supervise(self) -> None:
        if self.server is None or not self._lock.acquire(blocking=False):
            return
        try:
            problem = self._detect_failure()
            if problem:
                self._handle_failure(problem)
        finally:
            self._lock.release()

    def _detect_failure(self) -> str:
        assert self.server is not None
        if self.server.adopted:
            return '' if self.server.reachable() else \
                f'the Ollama server at {self.server.base_url} stopped answering'
        code = self.server.exit_code()
        if code is not None:
            return f'the Ollama server (pid {self.server.pid}) exited with code {code}'
        for runner in self.runner_processes:
            if not _alive(runner):
                return f"the runner of '{self.model}' (pid {runner.pid}) died"
        return ''

    def _handle_failure(self, problem: str) -> None:
        self.get_logger().error(problem)
        self.last_error = problem
        self.chat.abort_all(problem)
        supervision = self.settings.supervision if self.settings else None
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > (supervision.restart_window
                                                            if supervision else 0):
            self._restarts.popleft()
        if supervision and supervision.restart_on_failure and \
                len(self._restarts) < supervision.max_restarts:
            backoff = supervision.restart_backoff * 2 ** len(self._restarts)
            self._restarts.append(now)
            self.get_logger().warning(f'restarting in {backoff:g} s (restart '
                                      f'{len(self._restarts)}/{supervision.max_restarts})')
            if self._exiting.wait(backoff):
                return
            try:
                self._restart()
                self.get_logger().info('recovered: server running'
                                       + (' and model loaded' if self.model_loaded else ''))
                return
            except (TransitionFailed, EngineError, ServerError) as error:
                self.get_logger().error(f'restart failed: {error}')
                self.last_error = f'{problem}; restart failed: {error}'
        self._failure = self.last_error
        self.get_logger().error('giving up: going to ErrorProcessing')
        if self.state_label == 'active':
            self.trigger_deactivate()
        elif self.state_label == 'inactive':
            self.trigger_cleanup()

    def _restart(self) -> None:
        assert self.server is not None and self.settings is not None
        was_active = self.model_loaded
        self.model_loaded = False
        if self.server.exit_code() is not None:
            self.server.stop()
            self.server.start()
            self.server.restarts += 1
        if was_active:
            self._load_model()

    def _log_line(self, level: str, line: str) -> None:
        # rclpy refuses one call site logging at several severities: one call per level.
        logger = self.get_logger()
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
