"""Issue 12 item 7: the node stops its server and exits when the process that started it dies
without passing a signal on (`ros2 launch` on SIGTERM, a killed supervisor). Here the parent
is a plain process that is SIGKILLed, so this runs on every distro; the real `ros2 launch` and
`ros2 run` cases are in test/cli."""

import os
import signal
import subprocess
import sys

import psutil

from conftest import default_parameters
from harness import install_prefix
from harness import processes_of
from harness import RosClient
from harness import wait_for

# A parent that starts llm_node and waits for it, as launch and `ros2 run` do.
PARENT = 'import subprocess, sys; subprocess.Popen(sys.argv[1:]).wait()'


def test_the_node_stops_its_server_and_exits_when_its_parent_is_killed(
        domain_id, ollama_port, models_dir, tmp_path):
    arguments = [str(install_prefix() / 'lib' / 's100_llm' / 'llm_node'), '--ros-args']
    for key, value in default_parameters(ollama_port, models_dir).items():
        arguments += ['-p', f'{key}:={value}']
    with open(tmp_path / 'node.log', 'wb') as log:
        parent = subprocess.Popen([sys.executable, '-c', PARENT, *arguments], stdout=log,
                                  stderr=subprocess.STDOUT,
                                  env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)))
    client = RosClient(domain_id)
    node = None
    try:
        node = wait_for(lambda: next(iter(psutil.Process(parent.pid).children()), None),
                        'the parent to start llm_node')
        client.wait_for_node()
        assert client.change_state('configure') and client.change_state('activate')
        assert len(processes_of(models_dir, ollama_port)) == 2   # server and runner
        parent.kill()
        parent.wait()
        wait_for(lambda: not node.is_running() or node.status() == psutil.STATUS_ZOMBIE,
                 'llm_node to exit after its parent died')
        assert processes_of(models_dir, ollama_port) == []
        assert 'stopping the Ollama server' in (tmp_path / 'node.log').read_text()
    finally:
        client.close()
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        # After a failure: nothing of this test may outlive it.
        if node is not None and node.is_running():
            node.send_signal(signal.SIGKILL)
        for process in processes_of(models_dir, ollama_port):
            process.kill()
