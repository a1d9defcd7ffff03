"""The lifecycle node: glue between ROS 2 and the ROS-free core that serves the model.

    unconfigured --configure--> inactive --activate--> active
         ^                          |  ^                 |
         +---------cleanup----------+  +---deactivate----+

configure   validates the parameters, reads the robot_tools_file, starts `ollama serve` (or
            adopts a running server) and waits until it answers HTTP. SUCCESS -> inactive;
            FAILURE (bad parameter or robot tools file, missing binary, port taken, server died
            or timed out) -> unconfigured, nothing left running.
activate    takes the model and chat parameters as they are now, pulls the model (and the
            embedding_model, when set) if missing, checks that they fit in the available RAM
            and that the embedding model embeds, loads them (kept loaded for as long as the
            node is active) and confirms them in /api/ps.
            SUCCESS -> active, chats are accepted; FAILURE -> inactive, model not loaded.
deactivate  stops accepting chats, aborts the running ones, unloads the model and confirms the
            runner has exited (an unload not confirmed in time is a warning: the node has
            stopped serving either way). SUCCESS -> inactive.
cleanup     stops the server (SIGTERM, grace, SIGKILL of its process group, sweep of orphaned
            runners) and confirms its port is free; an adopted server is left running.
            SUCCESS -> unconfigured.
shutdown    from any state: everything above that applies. -> finalized.
on_error    (a transition raised, or supervision gave up): stops everything.
            SUCCESS -> unconfigured.
Any transition callback that raises returns ERROR -> ErrorProcessing -> on_error.

Who does what: core/serving.py's Serving owns the server, its HTTP client and the model's
runners (every step above), core/supervision.py's Supervisor recovers them (restart with
backoff, reload, or ErrorProcessing through `_enter_error_processing`), chat_action.py serves
chats, camera.py keeps the camera_topic's latest frame while active (for use_camera goals),
embed_service.py serves embeddings, model_services.py lists, deletes and pulls the models
of models_dir (while a server runs), diagnostics.py publishes /diagnostics; chat, embed, the
model services and diagnostics read only `serving_state()`, an immutable snapshot taken
without a lock.

Threads and locks:
- the executor's threads (main()): lifecycle services (change_state in a group of its own, so
  get_state and the others answer during a transition), parameter services, the chat action,
  the camera's frames, the embed service (a group of its own), the model services (a group
  of their own) and a running pull (its goal's execution, minutes). A transition takes
  `_transitions` (one at a time, whether a client or supervision asks) and then `Serving.lock`
  for its steps.
- 'supervision' (Supervisor): takes `Serving.lock` only when free for a check, holds it for a
  reload or a restart (never while waiting the backoff), and takes `_transitions` to enter
  ErrorProcessing.
- 'diagnostics' (DiagnosticsPublisher), chat executions, embed requests and the model
  services: no lock of the node's or of Serving's; they read `serving_state()`. A chat
  execution may first wait for its session's cache warm-up (core/warmup.py: no thread of its
  own, the engine's loop streams it; activate starts one and does not wait).
- 'sessions file' (core/session_file.py's SessionWriter): writes the sessions file after each
  stored turn; takes the session store's lock only to copy the sessions.
- 'executor': spins the executor (main() starts it; Python runs signal handlers in the main
  thread only, so the executor cannot spin there).
- 'ollama-spawner' (core/server.py): starts every `ollama serve`; lives as long as the process,
  because the server's parent-death signal follows the thread that started it.
- the main thread: waits for SIGINT/SIGTERM/SIGHUP (main() handles them, not rclpy), then runs
  the exit (exit_process) while the executor still spins, so that every goal's result reaches
  its client; takes `Serving.lock` when free, else stops the server at once so the step
  holding it gives way (Serving.exit_now).
"""

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, List, Optional

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.lifecycle import LifecycleNode
from rclpy.lifecycle import LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from . import compat
from . import guard
from . import parameters
from .camera import Camera
from .chat_action import ChatActionServer
from .core.config import ConfigError
from .core.config import SupervisionSettings
from .core.robot_tools import load_robot_tools
from .core.robot_tools import robot_toolbox
from .core.robot_tools import RobotToolsProblem
from .core.serving import Serving
from .core.serving import ServingError
from .core.serving import ServingState
from .core.session_file import expand
from .core.session_file import SessionFileError
from .core.session_file import SessionWriter
from .core.supervision import Supervisor
from .diagnostics import DiagnosticsPublisher
from .embed_service import EmbedService
from .model_services import ModelServices
from .parent_death import exit_with_parent
from .robot_calls import RosToolBackend
from .session_services import SessionServices

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
ERROR = TransitionCallbackReturn.ERROR


class LlmNode(LifecycleNode):
    """Declares the parameters, maps lifecycle transitions to Serving, wires chat,
    diagnostics and supervision."""

    def __init__(self, node_name: str = 'llm', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        parameters.declare(self)
        self.add_on_set_parameters_callback(guard.parameters(
            self, lambda changed: parameters.validate_change(self, changed)))
        # After Ctrl-C/SIGTERM the context is gone and the node's logger can no longer publish
        # to /rosout (rcl says so on stderr for every line): the last lines go to this one,
        # which only writes to the console.
        self._exit_logger = rclpy.logging.get_logger(f'{self.get_name()}.exit')
        self.settings: Optional[parameters.NodeSettings] = None
        self.serving = Serving(self._log_line)
        # One lifecycle transition at a time, whether a client or supervision asks for it.
        self._transitions = threading.Lock()
        # The cause while _enter_error_processing runs its transition ('' otherwise).
        self._error_cause = ''
        self._decouple_lifecycle_services()
        self.chat = ChatActionServer(self)
        self._robot_backend: Optional[RosToolBackend] = None    # with the robot tools
        self.camera = Camera(self)
        self.session_writer = SessionWriter(self.chat.sessions, self._log_line)
        self.chat.sessions.on_change = self.session_writer.changed
        self.session_services = SessionServices(self, self.chat.sessions)
        self.embed = EmbedService(self)
        self.models = ModelServices(self)
        self.diagnostics = DiagnosticsPublisher(self)
        # Supervision is a plain thread, not an rclpy timer: a timer costs the executor a wake-up
        # and a dispatch (about 2 ms of CPU each on a 2-core machine), which made up a third of
        # the idle node's CPU; the check itself is a waitpid and a /proc read.
        self.supervisor = Supervisor(self.serving, self._supervision_settings,
                                     self.chat.abort_all, self._enter_error_processing,
                                     self._log_line)
        self.supervisor.start()
        self.log.info('ready (unconfigured): configure starts the Ollama server')

    @property
    def log(self) -> RcutilsLogger:
        return self.get_logger() if self.context.ok() else self._exit_logger

    # ---- lifecycle services --------------------------------------------------------------
    def _decouple_lifecycle_services(self) -> None:
        """Let status queries answer during a transition, and refuse invalid requests.

        rclpy creates all five lifecycle services in one mutually exclusive callback group, so
        get_state waited for a whole pull or load. change_state gets a group of its own:
        get_state, the other lifecycle services and the parameter services answer at once.

        On Humble and Jazzy, a transition id not valid in the current state makes rclpy raise
        RCLError out of the service callback, which ends the executor and the node (rclpy#1209;
        Kilted catches it). The request is checked first and answered success=false.
        (compat.own_change_state says which rclpy internals this takes.)
        """
        compat.own_change_state(self, self._on_change_state)

    def _on_change_state(self, handle_request: Callable[[Any, Any], Any], request: Any,
                         response: Any) -> Any:
        with self._transitions:
            wanted = request.transition.label or request.transition.id
            valid = compat.available_transitions(self)
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
            except compat.RCLError as error:   # e.g. the context went away (Ctrl-C) during it
                self.log.warning(f"change_state '{wanted}' could not complete: {error}")
                response.success = False
                return response

    # ---- state ---------------------------------------------------------------------------
    @property
    def state_label(self) -> str:
        return compat.lifecycle_state(self)

    def serving_state(self) -> ServingState:
        """What the node serves now, as one snapshot (no lock): all the chat action and the
        diagnostics read of the node's serving state."""
        state = self.serving.state.in_lifecycle(self.state_label)
        if not state.models_dir:    # before the first configure: where models will be
            state = dataclasses.replace(state, models_dir=parameters.expand_models_dir(
                parameters.value(self, 'models_dir')))
        return state

    # ---- transitions ---------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the parameters, start (or adopt) the Ollama server.

        SUCCESS -> inactive; FAILURE (the cause in the log and on /diagnostics) ->
        unconfigured with no server left running; ERROR (a bug) -> ErrorProcessing.
        """
        def configure() -> None:
            self.settings = self._read_settings()
            self.chat.configure(self.settings)      # the sessions' bounds, before loading
            self._open_sessions_file(self.settings.chat.sessions_file)
            self._load_robot_tools(self.settings.chat.robot_tools_file)
            self.serving.start(self.settings.server, self.settings.models_dir,
                               self.settings.model, self.settings.embedding.embedding_model)
            self.embed.configure(self.settings)
            self.supervisor.budget.clear()
        result = self._transition('configure', configure)
        if result is FAILURE:   # unconfigured: the sessions file is free for another node
            self.session_writer.close()
            self._drop_robot_tools()
        return result

    def _open_sessions_file(self, parameter: str) -> None:
        """Lock and load the sessions file (a corrupt one is moved aside with a WARN); a file
        the node must not use (not a regular file, too large, used by another node, an
        unwritable directory: core/session_file.py) fails the configure."""
        try:
            loaded = self.session_writer.use(expand(parameter))
        except SessionFileError as error:
            raise ServingError(str(error)) from None
        if parameter:
            self.log.info(f"sessions file {loaded['path']}: {loaded['sessions']} session(s), "
                          f"{loaded['turns']} turn(s) loaded")

    def _load_robot_tools(self, parameter: str) -> None:
        """Read the robot_tools_file and derive each tool's parameters from its interface; a
        problem (core/robot_tools.py, an interface not installed or not expressible) fails the
        configure with the reason."""
        self._drop_robot_tools()
        if not parameter:
            return
        path = os.path.abspath(os.path.expanduser(parameter))
        backend = RosToolBackend(self)
        try:
            self.chat.toolbox = robot_toolbox(load_robot_tools(path), backend)
        except RobotToolsProblem as problem:
            backend.close()
            raise ServingError(str(problem)) from None
        self._robot_backend = backend
        self.log.info(f"robot tools from {path}: {', '.join(self.chat.toolbox.tools) or 'none'}")

    def _drop_robot_tools(self) -> None:
        """Forget the robot tools and destroy their clients (no goal runs any more)."""
        self.chat.toolbox = None
        backend, self._robot_backend = self._robot_backend, None
        if backend is not None:
            backend.close()

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Take the model and chat settings, make sure the model is present and fits, load it,
        confirm it in /api/ps.

        SUCCESS -> active, chats served; FAILURE -> inactive, nothing loaded; ERROR ->
        ErrorProcessing.
        """
        def activate() -> None:
            assert self.settings is not None
            current = self._read_settings()     # server settings apply at configure only
            self.settings = dataclasses.replace(
                self.settings, model=current.model, chat=current.chat, vision=current.vision,
                # embedding_model applies at configure (the server makes room for it then)
                embedding=dataclasses.replace(
                    current.embedding,
                    embedding_model=self.settings.embedding.embedding_model))
            self.serving.use_model(self.settings.model)
            self.chat.configure(self.settings)
            self.embed.configure(self.settings)
            self.serving.activate()
            self.chat.warm_at_activate()
            self.camera.start(self.settings.vision.camera_topic)
        result = self._transition('activate', activate, about_model=True)
        return super().on_activate(state) if result is SUCCESS else result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop accepting chats, abort the running ones, unload the model.

        SUCCESS -> inactive (an unload not confirmed is a warning, never a failure); ERROR
        (supervision gave up, or a bug) -> ErrorProcessing.
        """
        if self._error_cause:
            return ERROR

        def deactivate() -> None:
            self.chat.abort_all('the node is deactivating', failure=False)
            self.camera.stop()
            self.serving.unload()
        result = self._transition('deactivate', deactivate, about_model=True)
        return super().on_deactivate(state) if result is SUCCESS else result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the server (an adopted one is left running) and forget sessions (a sessions
        file keeps them: the next configure loads it).

        SUCCESS -> unconfigured; FAILURE (the port stayed busy) -> inactive; ERROR
        (supervision gave up, or a bug) -> ErrorProcessing.
        """
        if self._error_cause:
            return ERROR

        def cleanup() -> None:
            self.models.abort('the node is cleaning up (its Ollama server stops)')
            self.serving.stop()
            self.session_writer.close()     # so that clearing memory does not reach the file
            self.chat.sessions.clear()
            self._drop_robot_tools()
        return self._transition('cleanup', cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: abort chats, unload, stop the server. SUCCESS -> finalized."""
        return self._transition('shutdown', self.release_everything)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Leave nothing behind. SUCCESS -> unconfigured, ready to configure; FAILURE ->
        finalized (must not raise: that would finalize the node too)."""
        cause = self.serving.state.server_error or self.serving.state.model_error
        self.log.error(f'error processing (from {state.label}): stopping the server'
                       + (f'; cause: {cause}' if cause else ''))
        try:
            self.release_everything()
        except Exception as error:
            self.log.error(f'error processing: cleanup failed: {error}')
            return FAILURE
        return SUCCESS

    def _transition(self, name: str, step: Callable[[], None],
                    about_model: bool = False) -> TransitionCallbackReturn:
        """Run one transition's step in a Serving transition: FAILURE when it failed for a
        named cause, ERROR when it raised anything else."""
        started = time.monotonic()
        try:
            with self.serving.transition(name, about_model):
                step()
        except ServingError as error:
            self.log.error(str(error))
            return FAILURE
        except Exception as error:
            # rclpy turns an exception into ERROR without a word: say what it was.
            self.log.error(f'{name} raised {type(error).__name__}: {error}')
            return ERROR
        self.log.info(f'{name}: done in {time.monotonic() - started:.3f} s')
        return SUCCESS

    def _enter_error_processing(self, cause: str, epoch: int) -> None:
        """Supervision gave up: take the lifecycle to ErrorProcessing (then on_error ->
        unconfigured), unless a client's transition ran since the failure and decided.

        rclpy has no request for ErrorProcessing from a primary state: it is reached when a
        transition callback returns ERROR. So the transition that leaves the current state is
        triggered here, and its callback returns ERROR while `_error_cause` is set, only for
        the duration of this call and under `_transitions` (no client's transition sees it).
        """
        with self._transitions:
            if self.serving.epoch != epoch:
                return
            trigger = {'active': self.trigger_deactivate,
                       'inactive': self.trigger_cleanup}.get(self.state_label)
            if trigger is None:
                return
            self._error_cause = cause
            try:
                trigger()
            finally:
                self._error_cause = ''

    def _read_settings(self) -> parameters.NodeSettings:
        try:
            return parameters.read(self)
        except ConfigError as error:
            raise ServingError(f'invalid parameter: {error}') from None

    def _supervision_settings(self) -> SupervisionSettings:
        """The restart policy applies at once: read from the parameters at each failure."""
        return parameters.read_part(self, SupervisionSettings)

    # ---- exit ----------------------------------------------------------------------------
    def release_everything(self) -> None:
        """Abort chats, unload the model, stop the server: safe from any state, idempotent."""
        self.chat.abort_all('the node is shutting down', failure=False)
        self.models.abort('the node is shutting down')
        self._drop_robot_tools()
        self.camera.stop()
        self.serving.release()
        self.session_writer.close()     # written, and its lock released for another node

    def exit_process(self) -> None:
        """The process is going down (Ctrl-C, SIGTERM): stop everything within seconds, whatever
        runs (a pull or load in progress is ended by stopping the server: Serving.exit_now).

        Runs while rclpy still works (the executor spins): every goal ends with its result
        (NOT_SERVING, 'the node is shutting down'), which reaches its client. The server is
        stopped first of the slow steps (`ros2 launch` sends SIGTERM 5 s after SIGINT and
        SIGKILL 5 s later: a server killed with the node would orphan its runners), and
        whatever an earlier step did.
        """
        reason = 'the node is shutting down'
        self.log.info(f'{reason}: ending chats, stopping the Ollama server')
        try:
            self.supervisor.stop()
            self.chat.close(reason)
            self.chat.abort_all(reason, failure=False, wait=False)
            self.models.abort(reason, wait=0.0)     # a running pull stops; waited for below
        except Exception as error:      # never keeps the server from being stopped
            self.log.error(f'exit: ending the chats failed: {error!r}')
        finally:
            self.serving.exit_now()
        self.chat.wait_ended(reason)
        self.models.abort(reason)
        self.diagnostics.stop()
        self.session_writer.flush()     # the last completed turns reach the file

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


# After the exit sequence: how long the executor may take to send what it still has (the
# goals' results are sent from tasks of its own) before the context goes away.
EXECUTOR_DRAIN = 2.0


def main(args: Optional[List[str]] = None) -> int:
    exit_with_parent()
    # rclpy's own SIGINT/SIGTERM handlers shut the context down at once: running goals could
    # then neither publish nor send their results (the client never got one), and goals still
    # waiting raised RCLError in the exit path, before the server was stopped. The node handles
    # the signals itself: they start the exit, which ends the goals while rclpy works, stops
    # the server, and shuts the context down last.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    exit_requested = threading.Event()

    def request_exit(number: int, frame: Any) -> None:
        exit_requested.set()    # a second signal during the exit changes nothing
    # SIGHUP too: a closed terminal or ssh session would otherwise end the node without its
    # exit (the server's parent-death signal would kill it and orphan its runners).
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, request_exit)
    node = LlmNode()
    # One thread per chat that runs (a waiting goal holds none: it is executed when a slot
    # frees), plus the lifecycle, parameter and goal/cancel/result services, the
    # embed service, the model services, a running pull (minutes), and the quick callbacks of
    # the camera and the session services (diagnostics, supervision and the sessions file
    # have their own threads).
    executor = MultiThreadedExecutor(num_threads=node.get_parameter('num_parallel').value + 7)
    executor.add_node(node)
    spinning = True
    failures: List[BaseException] = []

    def spin() -> None:
        # Spun from its own thread: Python runs signal handlers in the main thread only, which
        # waits for them here instead of inside a wait set. 1 s steps: `spinning` is read
        # between them (the executor's shutdown wakes the wait at once).
        try:
            while spinning:
                executor.spin_once(timeout_sec=1.0)
        except BaseException as error:     # a defect: the node exits 1 after its exit sequence
            if spinning:
                failures.append(error)
                exit_requested.set()
    spinner = threading.Thread(target=spin, name='executor')
    spinner.start()
    # Polled, not exit_requested.wait(): the handler runs in this thread, and set() would wait
    # forever for the Event's lock if the signal came while wait() held it.
    while not exit_requested.is_set():
        time.sleep(0.1)
    try:
        node.exit_process()
        compat.wait_until_idle(executor, EXECUTOR_DRAIN)
    finally:
        spinning = False
        executor.shutdown(timeout_sec=1.0)
        spinner.join()
        node.destroy_node()
        rclpy.try_shutdown()
    if failures:
        raise failures[0]
    return 0


if __name__ == '__main__':
    sys.exit(main())
