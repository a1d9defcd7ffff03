"""The real `ros2` command line against the installed package, as a robot developer types it.

Ros2 runs `ros2 ...` (the one on PATH: a ROS 2 installation, as on the robot) in one DDS
domain, every call under a timeout. It starts that domain's ros2 daemon first (upstream advice:
a command that finds no daemon spawns one and may miss the graph on its first call) and stops it
at close. Launch is one `ros2 launch s100_llm llm.launch.py ...` process; what runs on the
machine (node, Ollama server, runner, port) is checked with the harness's psutil helpers.
"""

import os
import pathlib
import shutil
import signal
import subprocess
from typing import Dict, List, Optional

import psutil
import yaml

from harness import processes_of
from harness import WAIT
from harness import wait_for
from support import split_server_env

EMULATOR = 's100-ollama-emulator'
# A CLI call that does not end within this is hung (they take 1-3 s here).
CLI_TIMEOUT = 60.0


def ros2_cli_missing() -> Optional[str]:
    """Why the CLI tests cannot run here, or None when `ros2` is installed."""
    if shutil.which('ros2') is not None:
        return None
    # ros2cli, launch and launch_ros are not on PyPI: the development venvs have no `ros2`.
    return 'no ros2 on PATH: these tests run where ROS 2 is installed'


class Ros2:
    """`ros2 ...` in one DDS domain, with that domain's daemon."""

    def __init__(self, domain_id: int) -> None:
        self.domain_id = domain_id
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED='1',
                        RCUTILS_LOGGING_BUFFERED_STREAM='0')
        self('daemon', 'start')

    def __call__(self, *arguments: str, timeout: float = CLI_TIMEOUT,
                 check: bool = True) -> subprocess.CompletedProcess:
        """Run `ros2 <arguments>` to its end; check: it must exit 0."""
        done = subprocess.run(['ros2', *arguments], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        if check:
            assert done.returncode == 0, \
                f'ros2 {" ".join(arguments)} exited {done.returncode}:\n{done.stdout}{done.stderr}'
        return done

    def start(self, *arguments: str, log_path: pathlib.Path,
              env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        """Start a `ros2 ...` that runs until stopped (launch, topic hz, send_goal)."""
        log = open(log_path, 'wb')
        try:
            return subprocess.Popen(['ros2', *arguments], stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(self.env, **(env or {})))
        finally:
            log.close()    # the child holds its own copy

    def lifecycle_state(self, node: str = '/llm') -> str:
        """`ros2 lifecycle get`'s answer without the id: 'active [3]' -> 'active'. Asked again
        while it says "Node not found": the daemon has not discovered a new node yet."""
        def ask() -> Optional[str]:
            answer = self('lifecycle', 'get', node, check=False)
            if answer.returncode != 0 and 'Node not found' in answer.stderr + answer.stdout:
                return None
            assert answer.returncode == 0, answer
            return answer.stdout.split()[0]
        return wait_for(ask, f'the ros2 daemon to discover {node}')

    def close(self) -> None:
        self('daemon', 'stop')


def command_line(process: psutil.Process) -> str:
    """The process's command line; '' once it has died (a zombie has none to read)."""
    try:
        return ' '.join(process.cmdline())
    except psutil.Error:
        return ''


def is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's new parent may reap it late)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_process(process: subprocess.Popen, number: int = signal.SIGINT,
                 timeout: float = WAIT) -> int:
    """Signal a process started by a test and wait for it; kill it and fail if it hangs."""
    if process.poll() is None:
        process.send_signal(number)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f'{process.args} did not exit within {timeout:g} s of {number}')


class Launch:
    """`ros2 launch s100_llm llm.launch.py ARGS` (or another launch file of the package) with its
    own Ollama port and models dir."""

    def __init__(self, ros2: Ros2, log_path: pathlib.Path, port: int, models_dir: str,
                 *arguments: str, model: str = 'echo:latest',
                 env: Optional[Dict[str, str]] = None, emulator_arguments: bool = True,
                 launch_file: str = 'llm.launch.py') -> None:
        """emulator_arguments: pass ollama_bin, model, host and models_dir (the port and models
        dir are this launch's in any case: a params file given instead must use them).
        launch_file: the package's launch file (robot_tools.launch.py includes llm.launch.py)."""
        self.ros2 = ros2
        self.port = port
        self.models_dir = models_dir
        self.base_url = f'http://127.0.0.1:{port}'
        self.log_path = log_path
        # The last of repeated arguments wins: the test's own come last.
        self.arguments = [f'ollama_bin:={EMULATOR}', f'model:={model}',
                          f'host:=127.0.0.1:{port}', f'models_dir:={models_dir}'
                          ] if emulator_arguments else []
        env, server_env = split_server_env(env)
        if server_env:
            # The server's variables are the ollama_env parameter: a params file gives it.
            params_file = log_path.with_suffix('.params.yaml')
            params_file.write_text(yaml.safe_dump(
                {'/**': {'ros__parameters': {'ollama_env': server_env}}}))
            self.arguments.append(f'params_file:={params_file}')
        self.arguments += arguments
        self.process = ros2.start('launch', 's100_llm', launch_file, *self.arguments,
                                  log_path=log_path, env=env)
        self._node: Optional[psutil.Process] = None

    def output(self) -> str:
        return self.log_path.read_text(errors='replace')

    def wait_output(self, fragment: str, timeout: float = WAIT) -> None:
        wait_for(lambda: fragment in self.output(), f'{fragment!r} in the launch output',
                 timeout)

    def node(self) -> psutil.Process:
        """The llm_node process launch started (launch's child)."""
        if self._node is None:
            self._node = wait_for(self._started_node, 'launch to start llm_node')
        return self._node

    def _started_node(self) -> Optional[psutil.Process]:
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return None
        return next((p for p in children if 'llm_node' in command_line(p)), None)

    def wait_state(self, state: str, node: str = '/llm') -> None:
        wait_for(lambda: self.ros2.lifecycle_state(node) == state, f'{node} to be {state}')

    def leftovers(self) -> List[psutil.Process]:
        """The launched node, Ollama servers and runners of this launch still alive."""
        alive = processes_of(self.models_dir, self.port)
        if self._node is not None and is_alive(self._node):
            alive.append(self._node)
        return alive

    def stop(self, number: int = signal.SIGINT) -> int:
        """Stop launch like a user (Ctrl-C sends SIGINT to it); returns its exit code."""
        return stop_process(self.process, number)

    def close(self) -> None:
        """Teardown: stop launch, then fail (after killing them) if anything of it survived."""
        # Known before launch exits, so that a node it orphans is counted too.
        self._node = self._node or self._started_node()
        self.stop()
        try:
            wait_for(lambda: not self.leftovers(), 'everything launched to exit', timeout=20)
        except AssertionError:
            left = self.leftovers()
            for process in left:
                process.kill()
            raise AssertionError(f'left running after launch exited: {left}\n{self.output()}')
