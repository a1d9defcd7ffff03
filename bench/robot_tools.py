"""The robot tools loop's own overhead per executed call: the node calling a service itself
against a behaviour making the same call (docs/robot-tools.md).

Both paths run against the same node (the scripted `tooler` model of the emulator) and the
same Look service in this process, one model turn that calls the tool and one that answers
from its result:

node       one goal with robot_tools=['look']: the node calls /bench_look between the turns.
behaviour  a goal with tools=[look] in a session ends DONE_TOOL_CALLS; the behaviour calls
           /bench_look itself and sends the result in a second goal (what robot_skills did).

    scripts/ros-env python bench/robot_tools.py [--calls 30]
prints one JSON object: the median and p95 of each path's whole exchange, their difference,
and the node's own per-call time (RobotToolCall.duration) against the behaviour's service call.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from s100_llm_demo_interfaces.srv import Look
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import Tool
from s100_llm_msgs.msg import ToolResult
import yaml

# bench/ is on sys.path (the script's directory): run.py's node harness.
from run import Bench  # noqa: I100
from run import NODE_DOMAIN
from run import spread

LOOK = {'name': 'look', 'description': 'Look at something.', 'kind': 'service',
        'ros_name': '/bench_look', 'interface_type': 's100_llm_demo_interfaces/srv/Look',
        'timeout': 30}
PROMPT = 'look target=door'
WARMUP = 3


class LookServer:
    """The robot's Look service, in this process (its own context and executor)."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=NODE_DOMAIN)
        self.node = Node('bench_robot', context=self.context)
        self.node.create_service(Look, '/bench_look', self._look)
        self.executor = MultiThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    @staticmethod
    def _look(request: Look.Request, response: Look.Response) -> Look.Response:
        response.seen = True
        response.description = f'the {request.target} is open'
        return response

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def ask(bench: Bench, goal: Chat.Goal) -> Chat.Result:
    """Send a goal and wait for its result, woken by the futures' callbacks (the harness's
    waits poll every 20 ms: too coarse here). Kilted's ActionClient registers a request under
    its lock, so sending from this thread while the client's executor spins is safe."""
    client = bench.client.chat_client
    accepted, answered = threading.Event(), threading.Event()
    sent = client.send_goal_async(goal)
    sent.add_done_callback(lambda _: accepted.set())
    assert accepted.wait(60) and sent.result().accepted, 'goal not accepted'
    finished = sent.result().get_result_async()
    finished.add_done_callback(lambda _: answered.set())
    assert answered.wait(600), 'no result'
    result = finished.result().result
    assert result.error_code == Chat.Result.NONE, result.error_message
    return result


def node_exchange(bench: Bench) -> Dict[str, float]:
    started = time.monotonic()
    result = ask(bench, Chat.Goal(prompt=PROMPT, robot_tools=['look']))
    total = time.monotonic() - started
    [call] = result.robot_calls
    assert call.outcome == call.SUCCEEDED, call.message
    return {'total': total, 'call': call.duration}


def behaviour_exchange(bench: Bench, look: Any, number: int) -> Dict[str, float]:
    tool = Tool(name='look', description=LOOK['description'], parameters_json=json.dumps(
        {'type': 'object', 'properties': {'target': {'type': 'string'}},
         'required': ['target']}))
    session = f'bench-{number}'
    started = time.monotonic()
    first = ask(bench, Chat.Goal(prompt=PROMPT, session_id=session, tools=[tool]))
    [call] = first.tool_calls
    called = time.monotonic()
    answered = threading.Event()
    future = look.call_async(Look.Request(**json.loads(call.arguments_json)))
    future.add_done_callback(lambda _: answered.set())
    assert answered.wait(30), 'no answer from /bench_look'
    call_time = time.monotonic() - called
    content = json.dumps({'seen': future.result().seen,
                          'description': future.result().description})
    ask(bench, Chat.Goal(session_id=session, tools=[tool], tool_results=[
        ToolResult(tool_call_id=call.id, name=call.name, content=content)]))
    return {'total': time.monotonic() - started, 'call': call_time}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--calls', type=int, default=30, help='exchanges of each path')
    args = parser.parse_args()
    robot = LookServer()
    with tempfile.TemporaryDirectory() as directory:
        workdir = pathlib.Path(directory)
        tools_file = workdir / 'robot_tools.yaml'
        tools_file.write_text(yaml.safe_dump({'tools': [LOOK]}))
        bench = Bench(workdir, 'tooler:latest', {},
                      {'robot_tools_file': str(tools_file)})
        try:
            assert bench.client.change_state('configure'), bench.node.output()
            assert bench.client.change_state('activate'), bench.node.output()
            look = bench.client.node.create_client(Look, '/bench_look')
            assert look.wait_for_service(timeout_sec=30)
            node: List[Dict[str, float]] = []
            behaviour: List[Dict[str, float]] = []
            # Interleaved, so that a slow phase of the machine hits both paths alike.
            for number in range(WARMUP + args.calls):
                node.append(node_exchange(bench))
                behaviour.append(behaviour_exchange(bench, look, number))
        finally:
            bench.close()
            robot.close()
    node, behaviour = node[WARMUP:], behaviour[WARMUP:]
    figures = {
        'calls': args.calls,
        'node_exchange_ms': spread([n['total'] * 1000 for n in node]),
        'behaviour_exchange_ms': spread([b['total'] * 1000 for b in behaviour]),
        'node_call_ms': spread([n['call'] * 1000 for n in node]),
        'behaviour_call_ms': spread([b['call'] * 1000 for b in behaviour]),
        'median_difference_ms': (spread([n['total'] * 1000 for n in node])['median']
                                 - spread([b['total'] * 1000 for b in behaviour])['median']),
    }
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
