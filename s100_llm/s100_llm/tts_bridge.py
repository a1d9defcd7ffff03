"""`ros2 run s100_llm tts_bridge`: D-Robotics' speech chain to the chat action: prompt_text in,
tts_text out, sentence by sentence, like hobot_llm and hobot_xlm.

Its own node (tts_bridge; started by `ros2 launch s100_llm llm.launch.py tts_bridge:=true`),
a client of the chat action like any behaviour, so prompts from speech get exactly the same
validation, concurrency policy and cancel behaviour as any other goal. Its names are relative:
in namespace robot1 it reads /robot1/prompt_text, writes /robot1/tts_text and calls
/robot1/llm/chat (the `action` parameter; remap the topics with -r prompt_text:=...). Prompts
are answered one at a time, in order (TtsBridge).
"""

import collections
import re
import sys
from typing import Deque, List, Optional

from rcl_interfaces.msg import ParameterDescriptor
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from s100_llm_msgs.action import Chat
from std_msgs.msg import String

from . import guard
from .client import ChatClient
from .parent_death import exit_with_parent

# Prompts that may wait while another is answered (a speech chain sends one at a time; a burst
# beyond this is dropped with a warning naming each prompt).
MAX_WAITING_PROMPTS = 64
# Seconds to wait for the chat action to be discovered before a prompt is dropped.
SERVER_WAIT = 5.0
# A sentence ends at . ! ? (or their CJK forms) followed by white space, or at a line break.
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+|(?<=[。！？])|\n+')


class SentenceSplitter:
    """Collects streamed text and hands out whole sentences as soon as they are complete."""

    def __init__(self) -> None:
        self.buffer = ''

    def feed(self, text: str) -> List[str]:
        self.buffer += text
        parts = _SENTENCE_END.split(self.buffer)
        self.buffer = parts.pop()
        return [p.strip() for p in parts if p.strip()]

    def flush(self) -> List[str]:
        rest, self.buffer = self.buffer.strip(), ''
        return [rest] if rest else []


class TtsBridge(Node):
    """Speaks the answer to every prompt, one prompt at a time, in the order they arrived.

    A prompt arriving while another is answered waits in a queue of at most
    MAX_WAITING_PROMPTS; beyond that it is dropped, and the log says which prompt and why (as
    it does for a prompt the chat action does not serve). Answers never interleave on tts_text.

    Spun by a single-threaded executor (main()): prompts are taken one at a time, in order,
    and a goal is never sent while a response is handled on another thread (see
    ChatClient.send), so nothing here needs a lock.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__('tts_bridge', **kwargs)
        action = self.declare_parameter('action', 'llm/chat', ParameterDescriptor(
            description="The chat action to ask, resolved in this node's namespace "
                        '(robot1: /robot1/llm/chat).', read_only=True)).value
        self.publisher = self.create_publisher(String, 'tts_text', 10)
        self.chat = ChatClient(self, action)
        self._waiting: Deque[str] = collections.deque()
        self._busy = False      # a prompt is being answered; the next waits for it
        # KEEP_ALL: a burst of prompts waits in DDS until the callback queues (or drops) each,
        # rather than being overwritten unseen.
        prompts = self.create_subscription(
            String, 'prompt_text', guard.subscription(self, 'prompt_text', self._on_prompt),
            QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=1,
                       reliability=ReliabilityPolicy.RELIABLE))
        self.get_logger().info(f'{prompts.topic_name} -> {self.resolve_topic_name(action)} '
                               f'-> {self.publisher.topic_name}')

    def _on_prompt(self, message: String) -> None:
        if len(self._waiting) >= MAX_WAITING_PROMPTS:
            self.get_logger().warning(
                f'dropped prompt {_excerpt(message.data)}: '
                f'{MAX_WAITING_PROMPTS} prompts are already waiting to be answered')
            return
        self._waiting.append(message.data)
        if not self._busy:
            self._busy = True
            self._answer_next()

    def _answer_next(self) -> None:
        """Send the oldest waiting prompt as a goal; its result (or rejection) sends the next."""
        if not self._waiting:
            self._busy = False
            return
        prompt = self._waiting.popleft()
        if not self.chat.wait_for_server(SERVER_WAIT):
            self.get_logger().warning(f'dropped prompt {_excerpt(prompt)}: '
                                      f'the chat action is not available')
            self._answer_next()
            return
        splitter = SentenceSplitter()
        fed = []   # the answer text given to the splitter so far
        # Feedback and result travel separately, so the last feedback may arrive after the
        # result: once the result has spoken, the goal is done.
        spoken = False

        def speak(text: str) -> None:
            if spoken:
                return
            fed.append(text)
            for sentence in splitter.feed(text):
                self.publisher.publish(String(data=sentence))

        def on_result(future) -> None:
            nonlocal spoken
            try:
                result = future.result().result
                if result.error_code != Chat.Result.NONE:
                    self.get_logger().warning(
                        f'prompt {_excerpt(prompt)} was not answered in full: '
                        f'{result.error_message}')
                # rclpy drops feedback that arrives after the result: the result has it all.
                already = ''.join(fed)
                rest = result.text[len(already):] if result.text.startswith(already) else ''
                for sentence in splitter.feed(rest) + splitter.flush():
                    self.publisher.publish(String(data=sentence))
                spoken = True
            finally:    # whatever happened to this prompt, the next one is answered
                self._answer_next()

        def on_goal_response(future) -> None:
            try:
                handle = future.result()
            except Exception as error:  # the request itself failed (e.g. during shutdown)
                self.get_logger().warning(
                    f'prompt {_excerpt(prompt)} could not be sent: {error}')
                self._answer_next()
                return
            if not handle.accepted:
                self.get_logger().warning(f'prompt {_excerpt(prompt)} was not accepted')
                self._answer_next()
                return
            handle.get_result_async().add_done_callback(on_result)

        # Only the answer is spoken; the reasoning stays out of tts_text.
        self.chat.send(Chat.Goal(prompt=prompt),
                       on_feedback=lambda feedback: speak(feedback.delta),
                       ).add_done_callback(on_goal_response)


def _excerpt(prompt: str) -> str:
    return repr(prompt if len(prompt) <= 60 else prompt[:57] + '...')


def main(args: Optional[List[str]] = None) -> int:
    # Started by `ros2 launch`, it must not outlive a launch killed without Ctrl-C.
    exit_with_parent()
    rclpy.init(args=args)
    bridge: Optional[TtsBridge] = None
    executor: Optional[SingleThreadedExecutor] = None
    try:
        # Inside the try: Ctrl-C right after start shuts the context down under them.
        bridge = TtsBridge()
        executor = SingleThreadedExecutor()
        executor.add_node(bridge)
        # In 1 s steps, as llm_node's main(): a signal that shuts the context down while the
        # executor rebuilds its wait set would otherwise never wake it.
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
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if bridge is not None:
            bridge.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
