"""Issues 22 (items 2, 9) and 23 (items 5, 6): how the node ends goals and its server when it
goes down (SIGINT, SIGTERM), when supervision restarted the server, and when a client goes
away without canceling. Each test checks from outside: the client's results, the node's exit
code and output, the processes left."""

import os
import signal
import subprocess
import sys
import time

from action_msgs.msg import GoalStatus
import httpx
import pytest
from s100_llm_msgs.action import Chat

from harness import processes_of
from harness import RosClient
from harness import servers
from harness import WAIT
from harness import wait_for

SHUTTING_DOWN = 'the node is shutting down'
# What the node must never print on its way out.
TRACEBACK = 'Traceback'
EXECUTE_ERROR = 'Error raised in execute callback'


def streaming_goals(llm, count):
    """`count` goals of which the first streams (num_parallel 1) and the others wait; each
    with its result already asked for, as a client waiting for it does."""
    runs = [llm.client.send_chat(Chat.Goal(prompt=f'goal {i}', max_tokens=8192))
            for i in range(count)]
    assert all(run.wait_accepted() for run in runs)
    results = llm.client.on_executor(lambda: [run.handle.get_result_async() for run in runs])
    wait_for(lambda: runs[0].feedback, 'the first goal to stream')
    return runs, results


def assert_clean_exit(llm, number):
    asked = time.monotonic()
    assert llm.node.stop(number) == 0, llm.node.output()
    print(f'exit {time.monotonic() - asked:.2f} s after {signal.Signals(number).name}')
    output = llm.node.output()
    assert TRACEBACK not in output and EXECUTE_ERROR not in output, output
    assert not processes_of(llm.models_dir, llm.port)
    assert 'stopping the Ollama server' in output
    assert 'Failed to publish log message to rosout' not in output


@pytest.mark.parametrize('number', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_chat_gives_the_client_its_result(active, number):
    # Issue 23 item 5: the goal's result is sent before the node's context goes away.
    llm = active(model='endless:latest', env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    (run,), (result,) = streaming_goals(llm, 1)
    assert_clean_exit(llm, number)
    wait_for(result.done, 'the result of the goal that was streaming')
    assert result.result().status == GoalStatus.STATUS_ABORTED
    assert result.result().result.error_code == Chat.Result.NOT_SERVING
    assert result.result().result.error_message == SHUTTING_DOWN
    assert result.result().result.text.startswith('tok0 ')


@pytest.mark.parametrize('number', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_with_goals_in_the_queue_ends_every_goal_and_stops_the_server(active, number):
    # Issue 22 item 2: waiting goals made the exit raise before the server was stopped.
    llm = active(model='endless:latest', num_parallel=1,
                 env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    runs, results = streaming_goals(llm, 4)     # one streams, three wait
    assert_clean_exit(llm, number)
    wait_for(lambda: all(result.done() for result in results), 'every goal to have its result')
    for result in results:
        assert result.result().result.error_code == Chat.Result.NOT_SERVING
        assert result.result().result.error_message == SHUTTING_DOWN


def test_a_server_restarted_by_supervision_is_stopped_by_the_exit(active):
    # Issue 23 item 6: the restarted server died with supervision's thread (SIGKILL) at exit.
    llm = active()
    (server,) = servers(llm)
    server.kill()
    llm.client.wait_log('recovered: server running and model loaded')
    (restarted,) = servers(llm)
    assert llm.node.stop(signal.SIGINT) == 0
    assert f'stopping the Ollama server (pid {restarted.pid}): SIGTERM' in llm.node.output()
    assert 'after SIGTERM (code 0)' in llm.node.output()


# A client that sends one long goal, says so once it streams, and waits to be killed.
CLIENT = """
import sys, rclpy
from rclpy.action import ActionClient
from s100_llm_msgs.action import Chat
from s100_llm.qos import FEEDBACK_QOS, SERVICE_QOS
rclpy.init()
node = rclpy.create_node('leaving_client')
client = ActionClient(node, Chat, '/llm/chat', feedback_sub_qos_profile=FEEDBACK_QOS,
                      goal_service_qos_profile=SERVICE_QOS,
                      cancel_service_qos_profile=SERVICE_QOS,
                      result_service_qos_profile=SERVICE_QOS)
client.wait_for_server()
said = []

def on_feedback(message):
    if not said:
        said.append(True)
        print('streaming', flush=True)
client.send_goal_async(Chat.Goal(prompt='go', max_tokens=1 << 20),
                       feedback_callback=on_feedback)
rclpy.spin(node)
"""


def test_the_goals_of_a_client_that_went_away_stop_generating(active, domain_id):
    # Issue 22 item 9: a killed client's goal generated until max_tokens, the next one waited.
    llm = active(model='endless:latest', max_tokens_limit=1 << 20,
                 env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    llm.client.close()      # the test's own client would count as a client of ~/chat
    leaving = subprocess.Popen([sys.executable, '-c', CLIENT], stdout=subprocess.PIPE,
                               env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)))
    try:
        assert leaving.stdout.readline() == b'streaming\n'
        assert httpx.get(llm.base_url + '/emulator/stats').json()['generating'] == 1
        leaving.kill()
        leaving.wait()
        # Liveness: DDS notices a killed participant when its lease runs out (seconds).
        wait_for(lambda: 'canceled: no client of ~/chat left' in llm.node.output(),
                 'the node to notice that no client is left', timeout=WAIT)
        wait_for(lambda: httpx.get(llm.base_url + '/emulator/stats').json()['generating'] == 0,
                 'the runner to stop generating')
    finally:
        if leaving.poll() is None:
            leaving.kill()
            leaving.wait()
    client = RosClient(domain_id)
    try:
        assert client.chat('next', max_tokens=3).result.text == 'tok0 tok1 tok2 '
    finally:
        client.close()
