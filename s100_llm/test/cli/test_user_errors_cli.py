"""Issue 13: mistakes a user makes with `ros2 launch s100_llm llm.launch.py`: what the launch
output says, the state the node ends in, and that nothing is left running."""

import subprocess
import sys

from ament_index_python.packages import get_package_share_directory
from ament_index_python.packages import PackageNotFoundError
import psutil
import pytest

from cli.cli_harness import Ros2
from cli.cli_harness import stop_process
from harness import runners
from harness import servers
from harness import WAIT
from harness import wait_for


def test_an_unknown_model_fails_activate_with_the_reason(launch, ros2: Ros2):
    llm = launch(model='nosuch:latest')
    llm.wait_output('activate failed')
    assert 'pull nosuch:latest' in llm.output() and 'file does not exist' in llm.output(), \
        llm.output()
    llm.wait_state('inactive')
    assert len(servers(llm)) == 1 and runners(llm) == []


def test_a_missing_ollama_bin_fails_configure_and_a_fixed_one_configures_without_autostart(
        launch, ros2: Ros2):
    """Issue 12 item 5: autostart drives the first configure only; after it failed, a manual
    configure leaves the node inactive (the launch must not activate it behind the user)."""
    llm = launch('ollama_bin:=/nonexistent/ollama')
    llm.wait_output('configure failed')
    assert '/nonexistent/ollama' in llm.output(), llm.output()
    llm.wait_state('unconfigured')
    assert servers(llm) == []
    assert ros2('param', 'set', '/llm', 'ollama_bin', 's100-ollama-emulator').stdout.strip() \
        == 'Set parameter successful'
    assert ros2('lifecycle', 'set', '/llm', 'configure').stdout.strip() == \
        'Transitioning successful'
    # A re-armed autostart asks for activate as soon as launch hears of the transition, well
    # before a new `ros2` process has started and answered.
    assert ros2.lifecycle_state() == 'inactive'
    assert '[llm]: activate: done' not in llm.output() and runners(llm) == []


def launched_nodes(domain_id: int) -> list:
    """llm_node processes in this DDS domain (a launch's node gets the launch's environment)."""
    found = []
    for process in psutil.process_iter(['cmdline', 'environ', 'status']):
        if process.info['status'] != psutil.STATUS_ZOMBIE \
                and 'llm_node' in ' '.join(process.info['cmdline'] or []) \
                and (process.info['environ'] or {}).get('ROS_DOMAIN_ID') == str(domain_id):
            found.append(process)
    return found


def test_diagnostic_aggregator_without_the_package_starts_nothing(launch, ros2: Ros2):
    """Issue 12 item 6: launch used to start llm_node, then fail on the aggregator and exit,
    leaving the node behind."""
    try:
        get_package_share_directory('diagnostic_aggregator')
        pytest.skip('diagnostic_aggregator is installed here: this test needs it missing')
    except PackageNotFoundError:
        pass
    llm = launch('diagnostic_aggregator:=true')
    assert llm.process.wait(WAIT) != 0
    assert "diagnostic_aggregator:=true needs the package 'diagnostic_aggregator'" \
        in llm.output(), llm.output()
    left = launched_nodes(ros2.domain_id)
    for node in left:
        node.kill()
    assert 'llm_node' not in llm.output(), llm.output()
    assert left == [] and llm.leftovers() == []


def test_a_port_taken_by_another_program_fails_configure_and_spares_it(
        launch, ros2: Ros2, ollama_port: int):
    other = subprocess.Popen([sys.executable, '-m', 'http.server', str(ollama_port),
                              '--bind', '127.0.0.1'], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: psutil.Process(other.pid).net_connections(kind='tcp'),
                 'the other program to listen')
        llm = launch()
        llm.wait_output('configure failed')
        assert f'port {ollama_port} on 127.0.0.1 is in use by a program that is not Ollama' \
            in llm.output(), llm.output()
        llm.wait_state('unconfigured')
        assert servers(llm) == [] and other.poll() is None
    finally:
        stop_process(other)
