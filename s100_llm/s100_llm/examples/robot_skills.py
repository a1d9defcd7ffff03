"""`ros2 run s100_llm robot_skills "<request>"`: a behaviour that lets the model drive robot
skills through tool calls (the example to copy).

It offers the model three skills as tools (navigate_to(place), say(text), report_battery()),
runs each call the model asks for, sends the results back in the same session and repeats until
the model answers in words, which it prints. The skills are simulated: each is logged and
published as JSON on ~/skill_calls (std_msgs/String) for the rest of the robot (or a test) to
see; a real behaviour would start a nav2 goal, call the TTS, read the battery topic instead.

    ros2 run s100_llm robot_skills "Go to the kitchen, then tell me the battery level"
"""

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional
import uuid

import rclpy
from rclpy.node import Node
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import Tool
from s100_llm_msgs.msg import ToolResult
from std_msgs.msg import String

from s100_llm.client import ChatClient
from s100_llm.client import ChatError

# Tool calls the behaviour runs for one request before it gives up (a model may loop).
MAX_STEPS = 8
SYSTEM_PROMPT = ('You control a mobile robot. Use the tools to act; answer the user in one '
                 'short sentence once done.')


def _parameters(**properties: str) -> str:
    """A tool's parameters_json: required string properties with their descriptions."""
    return json.dumps({
        'type': 'object',
        'properties': {name: {'type': 'string', 'description': description}
                       for name, description in properties.items()},
        'required': list(properties)})


SKILLS = [
    Tool(name='navigate_to', description='Drive the robot to a named place.',
         parameters_json=_parameters(place='where to go, e.g. kitchen')),
    Tool(name='say', description='Speak a sentence aloud.',
         parameters_json=_parameters(text='what to say')),
    Tool(name='report_battery', description="Read the robot's battery level.",
         parameters_json=''),
]


class RobotSkills(Node):
    """Runs one request to its final answer: goals with tools, calls, results, answer."""

    def __init__(self, llm_node: str) -> None:
        super().__init__('robot_skills')
        self.chat = ChatClient(self, f"{llm_node.rstrip('/')}/chat")
        self.skill_calls = self.create_publisher(String, '~/skill_calls', 10)
        self.skills: Dict[str, Callable[..., str]] = {
            'navigate_to': self.navigate_to, 'say': self.say,
            'report_battery': self.report_battery}

    # ---- the simulated skills ------------------------------------------------------------
    def navigate_to(self, place: str = '') -> str:
        return f'arrived at {place}' if place else 'no place given; the robot stays'

    def say(self, text: str = '') -> str:
        return f'said "{text}"'

    def report_battery(self) -> str:
        return 'battery at 87 %'

    def run_skill(self, name: str, arguments_json: str) -> str:
        """Run one tool call; a call the behaviour cannot run returns why, for the model."""
        self.get_logger().info(f'skill call: {name} {arguments_json}')
        self.skill_calls.publish(String(data=json.dumps(
            {'name': name, 'arguments': json.loads(arguments_json or '{}')})))
        skill = self.skills.get(name)
        if skill is None:
            return f'error: there is no skill named {name}'
        try:
            return skill(**json.loads(arguments_json or '{}'))
        except TypeError as error:      # arguments the skill does not take
            return f'error: {error}'

    # ---- the exchange with the model -----------------------------------------------------
    def fulfil(self, request: str) -> Optional[str]:
        """The model's final answer to the request, or None (the reason is logged)."""
        session = f'robot-skills-{uuid.uuid4().hex[:8]}'
        goal = Chat.Goal(prompt=request, system_prompt=SYSTEM_PROMPT, session_id=session,
                         tools=SKILLS)
        for _ in range(MAX_STEPS):
            try:
                result = self.chat.ask(goal)
            except ChatError as error:
                self.get_logger().error(f'the model did not answer: {error.error_message} '
                                        f'(error_code {error.error_code})')
                return None
            if result.done_reason != Chat.Result.DONE_TOOL_CALLS:
                return result.text
            results: List[ToolResult] = [
                ToolResult(tool_call_id=call.id, name=call.name,
                           content=self.run_skill(call.name, call.arguments_json))
                for call in result.tool_calls]
            goal = Chat.Goal(session_id=session, tools=SKILLS, tool_results=results)
        self.get_logger().error(f'no final answer after {MAX_STEPS} rounds of tool calls')
        return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='robot_skills', description=__doc__.split('\n')[0])
    parser.add_argument('request', help='what the robot should do, in words')
    parser.add_argument('--node', default='/llm', help='the llm node (default /llm)')
    parser.add_argument('--wait', type=float, default=10.0,
                        help='seconds to wait for the chat action server')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    rclpy.init()
    behaviour = RobotSkills(args.node)
    try:
        if not behaviour.chat.wait_for_server(args.wait):
            print(f'no chat action server at {args.node}/chat (is the node running?)',
                  file=sys.stderr)
            return 2
        answer = behaviour.fulfil(args.request)
        if answer is None:
            return 1
        print(answer)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        behaviour.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
