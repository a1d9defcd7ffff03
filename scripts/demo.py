"""`make demo`: the node end to end on a machine without ROS 2 or Ollama.

With the real `ros2` command line on PATH (a ROS 2 installation), it runs and prints what a user
types: `ros2 launch s100_llm llm.launch.py ...` (autostart takes the node to active), `ros2 run
s100_llm chat ...`, `ros2 topic echo /diagnostics --once`, `ros2 lifecycle set /llm ...`, then
Ctrl-C of the launch. Without it, it starts llm_node itself and does the same through its own rclpy
client. Either way it checks that no Ollama process is left. It uses a real `ollama` when one is on
PATH, otherwise the development emulator with the real SmolLM2-135M-Instruct model behind it.
"""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from lifecycle_msgs.srv import GetState
import psutil
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from s100_llm_msgs.action import Chat
import yaml

from s100_llm.qos import FEEDBACK_QOS

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = 'smollm2:135m'
QUESTION = 'What is the capital of France?'
LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class Demo:
    def __init__(self, domain_id: int) -> None:
        rclpy.init(domain_id=domain_id)
        self.node = Node('demo')
        self.executor = SingleThreadedExecutor()   # keeps up with per-chunk feedback
        self.executor.add_node(self.node)
        self.diagnostics = []
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      self.diagnostics.append, 10)
        self.chat = ActionClient(self.node, Chat, '/llm/chat',
                                 feedback_sub_qos_profile=FEEDBACK_QOS)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def call(self, service_type, name, request, timeout=600.0):
        client = self.node.create_client(service_type, name)
        if not client.wait_for_service(timeout_sec=60):
            raise SystemExit(f'demo: {name} did not appear')
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise SystemExit(f'demo: no answer from {name}')
            time.sleep(0.01)
        return future.result()

    def transition(self, transition_id: int, label: str) -> None:
        started = time.monotonic()
        request = ChangeState.Request()
        request.transition.id = transition_id
        ok = self.call(ChangeState, '/llm/change_state', request).success
        state = self.call(GetState, '/llm/get_state', GetState.Request()).current_state.label
        print(f'  ros2 lifecycle set /llm {label:<10} -> {state} '
              f'({time.monotonic() - started:.2f} s)', flush=True)
        if not ok:
            raise SystemExit(f'demo: {label} failed (see the node log above)')

    def ask(self, question: str) -> Chat.Result:
        if not self.chat.wait_for_server(timeout_sec=60):
            raise SystemExit('demo: no /llm/chat action server')
        print(f'\n> {question}\n', flush=True)
        printed = []

        def on_feedback(message):
            printed.append(message.feedback.delta)
            sys.stdout.write(message.feedback.delta)
            sys.stdout.flush()

        goal = self.chat.send_goal_async(Chat.Goal(prompt=question, temperature=0.0,
                                                   max_tokens=64),
                                         feedback_callback=on_feedback)
        while not goal.done():
            time.sleep(0.01)
        handle = goal.result()
        if not handle.accepted:
            raise SystemExit('demo: the goal was rejected')
        result = handle.get_result_async()
        while not result.done():
            time.sleep(0.01)
        answer = result.result().result
        if answer.error_code != Chat.Result.NONE:
            raise SystemExit(f'demo: the goal was not served (error_code {answer.error_code}): '
                             f'{answer.error_message}')
        sys.stdout.write(answer.text[len(''.join(printed)):] + '\n')
        stats = answer.stats
        print(f'\n[{answer.done_reason}] {stats.completion_tokens} tokens at '
              f'{stats.tokens_per_second:.1f} tokens/s, first token after '
              f'{stats.time_to_first_token * 1000:.0f} ms', flush=True)
        return answer

    def print_diagnostics(self) -> None:
        since = len(self.diagnostics)
        deadline = time.monotonic() + 10
        while len(self.diagnostics) <= since and time.monotonic() < deadline:
            time.sleep(0.05)
        print('\n/diagnostics:')
        for status in self.diagnostics[-1].status:
            level = int.from_bytes(status.level, 'little') if isinstance(status.level, bytes) \
                else status.level
            print(f'  {LEVELS[level]:5} {status.name}: {status.message}')

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown()


class CliDemo:
    """The same steps through the real `ros2` commands, printed as a user types them."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.env = env

    def ros2(self, *arguments: str, show: bool = True, timeout: float = 600.0,
             capture: bool = True) -> subprocess.CompletedProcess:
        if show:
            print(f'$ ros2 {" ".join(quoted(a) for a in arguments)}', flush=True)
        return subprocess.run(['ros2', *arguments], env=self.env, timeout=timeout, text=True,
                              capture_output=capture)

    def state(self) -> Optional[str]:
        answer = self.ros2('lifecycle', 'get', '/llm', show=False, timeout=60)
        return answer.stdout.split()[0] if answer.returncode == 0 and answer.stdout else None

    def wait_active(self, launch: subprocess.Popen) -> None:
        started = time.monotonic()
        while self.state() != 'active':
            if launch.poll() is not None:
                raise SystemExit(f'demo: ros2 launch exited with {launch.returncode} (see its '
                                 'output above)')
            if time.monotonic() > started + 600:
                raise SystemExit('demo: the node did not reach active (see its log above)')
            time.sleep(0.5)
        print(f'$ ros2 lifecycle get /llm            -> active (autostart, '
              f'{time.monotonic() - started:.1f} s after the launch)', flush=True)

    def transition(self, label: str, goal: str) -> None:
        started = time.monotonic()
        printed = self.ros2('lifecycle', 'set', '/llm', label, show=False).stdout.strip()
        # `ros2 lifecycle set` exits 0 whatever happened; what it prints says.
        if printed != 'Transitioning successful':
            raise SystemExit(f'demo: {label} failed: {printed} (see the node log above)')
        # A finalized node has no lifecycle services left to ask.
        state = goal if goal == 'finalized' else self.state()
        print(f'$ ros2 lifecycle set /llm {label:<10} -> {state} '
              f'({time.monotonic() - started:.2f} s)', flush=True)

    def ask(self, question: str) -> None:
        print()
        asked = self.ros2('run', 's100_llm', 'chat', '--temperature', '0', '--max-tokens', '64',
                          question, capture=False)
        if asked.returncode != 0:
            raise SystemExit(f'demo: the chat exited {asked.returncode}')

    def print_diagnostics(self) -> None:
        print()
        echoed = self.ros2('topic', 'echo', '/diagnostics', '--once', timeout=60).stdout
        for status in yaml.safe_load(echoed.split('---')[0])['status']:
            level = status['level']
            level = ord(level) if isinstance(level, str) else int(level)
            print(f'  {LEVELS[level]:5} {status["name"]}: {status["message"]}')


def quoted(argument: str) -> str:
    return f'"{argument}"' if ' ' in argument else argument


def run_with_ros2_cli(env: Dict[str, str], launch_arguments: List[str]) -> None:
    demo = CliDemo(env)
    demo.ros2('daemon', 'start', show=False, timeout=60)
    print(f'$ ros2 launch s100_llm llm.launch.py {" ".join(launch_arguments)}', flush=True)
    launch = subprocess.Popen(['ros2', 'launch', 's100_llm', 'llm.launch.py',
                               *launch_arguments], env=env)
    try:
        demo.wait_active(launch)
        demo.ask(QUESTION)
        demo.print_diagnostics()
        print('\nshutting down:')
        demo.transition('deactivate', 'inactive')
        demo.transition('cleanup', 'unconfigured')
        demo.transition('shutdown', 'finalized')
    finally:
        print('Ctrl-C of ros2 launch', flush=True)
        launch.send_signal(signal.SIGINT)
        try:
            launch.wait(60)
        except subprocess.TimeoutExpired:
            launch.kill()
            launch.wait()
            raise SystemExit('demo: ros2 launch did not exit within 60 s of Ctrl-C')
        finally:
            demo.ros2('daemon', 'stop', show=False, timeout=60)


def run_with_own_client(env: Dict[str, str], parameters: Dict[str, str],
                        domain_id: int) -> None:
    print('(no `ros2` command here: llm_node is started directly and driven by this script; '
          'the lines below show the equivalent ros2 commands)', flush=True)
    node = subprocess.Popen(
        [str(pathlib.Path(get_package_prefix('s100_llm')) / 'lib' / 's100_llm' / 'llm_node'),
         '--ros-args',
         *[part for name, value in parameters.items() for part in ('-p', f'{name}:={value}')]],
        env=env)
    demo = Demo(domain_id)
    try:
        print('\nlifecycle (what the launch file does with autostart:=true):', flush=True)
        demo.transition(Transition.TRANSITION_CONFIGURE, 'configure')
        demo.transition(Transition.TRANSITION_ACTIVATE, 'activate')
        demo.ask(QUESTION)
        demo.print_diagnostics()
        print('\nshutting down:')
        demo.transition(Transition.TRANSITION_DEACTIVATE, 'deactivate')
        demo.transition(Transition.TRANSITION_CLEANUP, 'cleanup')
        demo.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, 'shutdown')
    finally:
        demo.close()
        node.send_signal(signal.SIGINT)
        node.wait(30)


def main() -> int:
    ollama = shutil.which('ollama')
    binary = ollama or 's100-ollama-emulator'
    port = free_port()
    models_dir = ROOT / '.demo' / 'models'
    domain_id = int(os.environ.get('ROS_DOMAIN_ID') or 42)
    print(f'demo: {MODEL} on {"Ollama at " + ollama if ollama else "the Ollama emulator"}, '
          f'models in {models_dir}', flush=True)
    # Discovery stays on this machine: Humble has no ROS_AUTOMATIC_DISCOVERY_RANGE (Iron and
    # newer), and Jazzy reports ROS_LOCALHOST_ONLY as deprecated.
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    if env.get('ROS_DISTRO') == 'humble':
        env['ROS_LOCALHOST_ONLY'] = '1'
    parameters = {'model': MODEL, 'ollama_bin': binary, 'host': f'127.0.0.1:{port}',
                  'models_dir': str(models_dir)}
    if shutil.which('ros2'):
        run_with_ros2_cli(env, [f'{name}:={value}' for name, value in parameters.items()])
    else:
        run_with_own_client(env, parameters, domain_id)
    # The runners name models_dir on their command line, the server in its environment.
    left = [p for p in psutil.process_iter(['cmdline', 'environ'])
            if str(models_dir) in ' '.join(p.info['cmdline'] or [])
            or (p.info['environ'] or {}).get('OLLAMA_MODELS') == str(models_dir)]
    print(f'\nnothing left running: {not left}' + (f' ({left})' if left else ''))
    return 1 if left else 0


if __name__ == '__main__':
    sys.exit(main())
