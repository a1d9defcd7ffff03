"""Test harness: the node as a separate process, talked to over DDS like a robot behaviour.

NodeProcess starts the installed `llm_node` executable (what `ros2 run s100_llm llm_node`
runs) with its own ROS_DOMAIN_ID, localhost-only discovery (conftest: support.localhost_discovery),
Ollama port and models dir.
RosClient is an rclpy node in its own context that calls the lifecycle services
(`ros2 lifecycle set` uses the same), sends Chat goals and listens to /diagnostics and /rosout.
"""

import itertools
import os
import pathlib
import re
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from action_msgs.msg import GoalStatus
from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
import httpx
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from lifecycle_msgs.srv import GetAvailableTransitions
from lifecycle_msgs.srv import GetState
import psutil
from rcl_interfaces.msg import Log
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import QoSReliabilityPolicy
from s100_llm_msgs.action import Chat

from s100_llm.qos import FEEDBACK_QOS
from s100_llm.qos import SERVICE_QOS
# The ROS-free helpers live in support (the unit tests import them from there); the node's
# tests import them from here too.
from support import free_port  # noqa: F401
from support import processes_of
from support import RecordedLog  # noqa: F401
from support import split_server_env
from support import WAIT
from support import wait_for

TRANSITIONS = {
    'configure': Transition.TRANSITION_CONFIGURE,
    'cleanup': Transition.TRANSITION_CLEANUP,
    'activate': Transition.TRANSITION_ACTIVATE,
    'deactivate': Transition.TRANSITION_DEACTIVATE,
    'unconfigured_shutdown': Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
    'inactive_shutdown': Transition.TRANSITION_INACTIVE_SHUTDOWN,
    'active_shutdown': Transition.TRANSITION_ACTIVE_SHUTDOWN,
}
# A reply the node sent reaches a client within this or was dropped (see wait_until_answered).
REPLY_WAIT = 10.0
REPLY_ATTEMPTS = 5


def _settles(future: Any) -> bool:
    try:
        wait_for(future.done, 'a reply', REPLY_WAIT)
    except AssertionError:
        return False
    return True


def assert_aborted(run: 'GoalRun', error_code: int, fragment: str) -> Chat.Result:
    """The goal was accepted and ended ABORTED with error_code and fragment in its message."""
    assert run.wait_accepted()
    result = run.wait_result()
    assert run.status == GoalStatus.STATUS_ABORTED, run.status
    assert result.error_code == error_code, (result.error_code, result.error_message)
    assert fragment in result.error_message, result.error_message
    return result


def install_prefix() -> pathlib.Path:
    """Where s100_llm is installed (what `ros2 pkg prefix s100_llm` prints)."""
    return pathlib.Path(get_package_prefix('s100_llm'))


def run_installed(domain_id: int, executable: str, *arguments: str,
                  stdin: Optional[str] = None) -> Tuple[int, str, str]:
    """Run one of the package's executables (what `ros2 run s100_llm <executable>` starts) in
    the test's domain to its end: (exit code, stdout, stderr)."""
    done = subprocess.run([str(install_prefix() / 'lib' / 's100_llm' / executable), *arguments],
                          env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)), input=stdin,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def api_ps(llm: Any) -> List[Dict[str, Any]]:
    """What /api/ps of the node's server lists."""
    return httpx.get(llm.base_url + '/api/ps', timeout=5).json()['models']


# Both read the command line processes_of() took: asking a process again can meet a zombie
# (it died in between) and raise.
def runners(llm: Any) -> List[psutil.Process]:
    """The model runners of the test's models dir, by their `--model <blob>` (whatever the
    program: `ollama runner`, llama-server or the emulator's)."""
    return [p for p in processes_of(llm.models_dir, llm.port)
            if '--model' in (p.info['cmdline'] or [])]


def runner_threads(llm: Any, runner: psutil.Process) -> Optional[int]:
    """The threads a runner was given: `-t`/`--threads` on llama-server's command line
    (Ollama 0.30+), else the latest load request the runner logged through the server
    (Ollama 0.2x: `msg=load request="{... NumThreads:N ...}"`). None: neither says."""
    command = runner.cmdline()
    for flag in ('-t', '--threads'):
        if flag in command:
            return int(command[command.index(flag) + 1])
    loads = re.findall(r'NumThreads:(\d+)', llm.node.output())
    return int(loads[-1]) if loads else None


def servers(llm: Any) -> List[psutil.Process]:
    return [p for p in processes_of(llm.models_dir, llm.port)
            if (p.info['cmdline'] or [])[-1:] == ['serve']]


# The emulator's runner generation (see tools/ollama_emulator): set for a test run, it reaches
# every server a test node starts, as the node passes OLLAMA_* variables only from ollama_env.
class NodeProcess:
    """The llm_node executable, started with parameters, stopped with a signal."""

    def __init__(self, domain_id: int, log_path: pathlib.Path, parameters: Dict[str, Any],
                 extra_env: Optional[Dict[str, str]] = None, name: str = 'llm',
                 executable: str = 'llm_node', ros_arguments: Sequence[str] = (),
                 preexec: Optional[Callable[[], None]] = None) -> None:
        """extra_env: OLLAMA_* variables reach the server through the ollama_env parameter
        (the node passes no other way), the rest is the node's environment. executable: this
        package's executable to run (tts_bridge); ros_arguments: more of them, e.g. a
        namespace (`-r __ns:=/robot1`). preexec runs in the node's process before it starts
        (e.g. to restrict its CPU affinity)."""
        # A test that gives ollama_env or a params file itself sets the server's variables.
        extra_env, server_env = split_server_env(
            extra_env, generation=not {'ollama_env', 'params_file'} & set(parameters))
        if server_env:
            parameters = dict(parameters, ollama_env=server_env)
        self.parameters = parameters
        self.executable = executable
        path = install_prefix() / 'lib' / 's100_llm' / executable
        arguments = [str(path), '--ros-args', '-r', f'__node:={name}', *ros_arguments]
        parameters = dict(parameters)
        if 'params_file' in parameters:
            arguments += ['--params-file', parameters.pop('params_file')]
        for key, value in parameters.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            arguments += ['-p', f'{key}:={text}']
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED='1',
                   RCUTILS_LOGGING_BUFFERED_STREAM='0')
        env.update(extra_env or {})
        self.log_path = log_path
        self.log = open(log_path, 'wb')
        self.process = subprocess.Popen(arguments, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env, preexec_fn=preexec)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors='replace')

    def stop(self, number: int = signal.SIGINT, timeout: float = WAIT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(number)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f'{self.executable} did not exit within {timeout:g} s of '
                                 f'{number}')
        finally:
            self.log.close()


_client_numbers = itertools.count()


class RosClient:
    """A robot behaviour's view of the node, in its own rclpy context and DDS domain."""

    def __init__(self, domain_id: int, node_name: str = 'llm') -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        # Unique names: rclpy shares one /rosout publisher per node name within a process.
        self.node = Node(f'test_client_{next(_client_numbers)}', context=self.context)
        self.name = node_name
        # Every callback here only records what arrived. A SingleThreadedExecutor takes a stream
        # of feedback messages far faster than rclpy's MultiThreadedExecutor, which hands each
        # one to a thread pool and keeps up with only a few hundred per second.
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.diagnostics: List[DiagnosticArray] = []
        self.rosout: List[Log] = []
        self._lock = threading.Lock()
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        rosout_qos = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                                durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Log, '/rosout', self._on_rosout, rosout_qos)
        self.chat_client = ActionClient(
            self.node, Chat, f'/{node_name}/chat', feedback_sub_qos_profile=FEEDBACK_QOS,
            goal_service_qos_profile=SERVICE_QOS, cancel_service_qos_profile=SERVICE_QOS,
            result_service_qos_profile=SERVICE_QOS)
        # rclpy's ActionClient drops feedback that arrives after the goal's result; a test
        # that checks every chunk the server sent reads the feedback topic itself.
        self.feedback: Dict[bytes, List[Chat.Feedback]] = {}
        self.node.create_subscription(Chat.Impl.FeedbackMessage,
                                      f'/{node_name}/chat/_action/feedback',
                                      self._on_feedback, FEEDBACK_QOS)
        self._closing = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:
            # rclpy's executor may trip over its own guard condition while it shuts down
            # ("cannot use Destroyable"): only an error before close() counts.
            if not self._closing:
                raise

    def close(self) -> None:
        """Idempotent: a test may close a client early; the fixture closes it again."""
        if self._closing:
            return
        # Stop spinning before the node and context go away under the spinning thread.
        self._closing = True
        self.executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5)
        # destroy_node leaves an action client alive (rclpy destroys no waitables): the node
        # would still see it as a client of its action.
        self.chat_client.destroy()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        with self._lock:
            self.diagnostics.append(message)

    def _on_feedback(self, message: Any) -> None:
        with self._lock:
            self.feedback.setdefault(bytes(message.goal_id.uuid), []).append(message.feedback)

    def _on_rosout(self, message: Log) -> None:
        with self._lock:
            self.rosout.append(message)

    # ---- services ------------------------------------------------------------------------
    def _call(self, service_type: Any, name: str, request: Any, timeout: float = WAIT,
              retry_every: Optional[float] = None) -> Any:
        """Call a service. retry_every resends an idempotent request that got no answer: DDS
        may still list a killed node's service, which swallows the first request."""
        deadline = time.monotonic() + timeout
        while True:
            client = self.node.create_client(service_type, name)
            try:
                wait_for(lambda: client.wait_for_service(timeout_sec=0.1), f'service {name}')
                future = client.call_async(request)
                attempt_end = min(deadline, time.monotonic() + (retry_every or timeout))
                while not future.done() and time.monotonic() < attempt_end:
                    time.sleep(0.01)
                if future.done():
                    return future.result()
            finally:
                self.node.destroy_client(client)
            if time.monotonic() >= deadline:
                raise AssertionError(f'no answer from {name} within {timeout:g} s')

    def service_ready(self, service: str) -> bool:
        client = self.node.create_client(GetState, f'/{self.name}/{service}')
        try:
            return client.wait_for_service(timeout_sec=0.1)
        finally:
            self.node.destroy_client(client)

    def state(self) -> str:
        return self._call(GetState, f'/{self.name}/get_state', GetState.Request(),
                          retry_every=1.0).current_state.label

    def available_transitions(self) -> List[str]:
        reply = self._call(GetAvailableTransitions, f'/{self.name}/get_available_transitions',
                           GetAvailableTransitions.Request(), retry_every=1.0)
        return [t.transition.label for t in reply.available_transitions]

    def set_parameters(self, **values: Any) -> None:
        """What `ros2 param set` does; asserts that the node took every value."""
        request = SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        results = self._call(SetParameters, f'/{self.name}/set_parameters', request).results
        assert all(result.successful for result in results), [r.reason for r in results]

    def change_state(self, transition: str, timeout: float = 300.0) -> bool:
        """What `ros2 lifecycle set /llm <transition>` does; True on success."""
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        return self._call(ChangeState, f'/{self.name}/change_state', request, timeout).success

    def wait_for_node(self) -> None:
        wait_for(lambda: self.state() == 'unconfigured', 'the node to come up unconfigured')

    # ---- chat ----------------------------------------------------------------------------
    def send_chat(self, goal: Chat.Goal) -> 'GoalRun':
        assert self.chat_client.wait_for_server(timeout_sec=WAIT), 'no chat action server'
        return GoalRun(self, goal)

    def on_executor(self, function: Callable[[], Any]) -> Any:
        """Run function on this client's spinning thread; returns what it returned.

        Jazzy's (and Humble's) rclpy ActionClient sends a request before it registers the
        request's future, without a lock: a response that the spinning thread takes in between
        makes send_goal_async fail ("list.remove(x): x not in list"). A request sent from the
        spinning thread cannot race with it.
        """
        task = self.executor.create_task(function)
        wait_for(task.done, 'the client thread to run a request')
        return task.result()

    def wait_until_answered(self) -> None:
        """Send short goals until one is answered with its result.

        rmw_fastrtps drops a service reply when the requester's reply reader has not matched
        100 ms after the request arrived (rclpy then warns "failed to send response (timeout)");
        wait_for_server sees only the request side. With many new participants on a busy
        machine this can hit a client's first requests. Once a goal and its result came back,
        both reply paths of this client are matched for good.
        """
        for _ in range(REPLY_ATTEMPTS):
            run = self.send_chat(Chat.Goal(prompt='are you there?'))
            if _settles(run._goal_future):
                run.handle = run._goal_future.result()
                if any(_settles(self.on_executor(run.handle.get_result_async))
                       for _ in range(REPLY_ATTEMPTS)):
                    return
        raise AssertionError(f'no goal answered in {REPLY_ATTEMPTS} attempts')

    def chat(self, prompt: str = '', **fields: Any) -> 'GoalRun':
        run = self.send_chat(Chat.Goal(prompt=prompt, **fields))
        if run.wait_accepted():
            run.wait_result()
        return run

    # ---- topics --------------------------------------------------------------------------
    def log_messages(self) -> List[str]:
        with self._lock:
            return [m.msg for m in self.rosout if m.name == self.name]

    def wait_log(self, fragment: str, timeout: float = WAIT) -> str:
        return wait_for(lambda: next((m for m in self.log_messages() if fragment in m), None),
                        f'a log line containing {fragment!r}', timeout)

    def statuses(self, after: float = 0.0) -> Dict[str, Any]:
        """The newest /diagnostics statuses by name, from a message stamped after `after`."""
        with self._lock:
            messages = list(self.diagnostics)
        for message in reversed(messages):
            stamp = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9
            if stamp >= after and any(s.name.startswith(f'{self.name}: ')
                                      for s in message.status):
                return {s.name: s for s in message.status}
        return {}

    def fresh_statuses(self, condition: Callable[[Dict[str, Any]], bool] = lambda s: True,
                       what: str = 'diagnostics') -> Dict[str, Any]:
        since = time.time()
        return wait_for(lambda: (lambda s: s if s and condition(s) else None)(
            self.statuses(since)), what)


class GoalRun:
    """One goal: its acceptance, feedback and result."""

    def __init__(self, client: RosClient, goal: Chat.Goal) -> None:
        self.client = client
        self.first_feedback_at: Optional[float] = None
        self._goal_future = client.on_executor(lambda: client.chat_client.send_goal_async(
            goal, feedback_callback=self._on_feedback))
        self.handle = None
        self.result: Optional[Chat.Result] = None
        self.status: Optional[int] = None

    def _on_feedback(self, message: Any) -> None:
        if self.first_feedback_at is None:
            self.first_feedback_at = time.monotonic()

    @property
    def feedback(self) -> List[Chat.Feedback]:
        """Every feedback message of this goal received on the feedback topic so far."""
        if self.handle is None:
            return []
        with self.client._lock:
            return list(self.client.feedback.get(bytes(self.handle.goal_id.uuid), []))

    def wait_accepted(self) -> bool:
        wait_for(self._goal_future.done, 'the goal response')
        self.handle = self._goal_future.result()
        return self.handle.accepted

    def wait_result(self, timeout: float = WAIT) -> Chat.Result:
        future = self.client.on_executor(self.handle.get_result_async)
        wait_for(future.done, 'the goal result', timeout)
        self.status = future.result().status
        self.result = future.result().result
        return self.result

    def cancel(self) -> None:
        future = self.client.on_executor(self.handle.cancel_goal_async)
        wait_for(future.done, 'the cancel response')

    @property
    def streamed_text(self) -> str:
        return ''.join(f.delta for f in self.feedback)
