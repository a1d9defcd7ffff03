"""Optional bridge to D-Robotics' speech chain: /prompt_text in, /tts_text out, sentence by
sentence, like hobot_llm and hobot_xlm.

It is a client of the node's own chat action, so prompts from speech get exactly the same
validation, concurrency policy and cancel behaviour as any other goal. Prompts are answered one
at a time, in order (TtsBridge).
"""

import collections
import re
import threading
from typing import Deque, List, TYPE_CHECKING

from rclpy.action import ActionClient
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from s100_llm_msgs.action import Chat
from std_msgs.msg import String

from . import guard
from .qos import FEEDBACK_QOS
from .qos import SERVICE_QOS

if TYPE_CHECKING:
    from .node import LlmNode

# Prompts that may wait while another is answered (a speech chain sends one at a time; a burst
# beyond this is dropped with a warning naming each prompt).
MAX_WAITING_PROMPTS = 64
# Seconds to wait for the node's own chat action to be discovered before a prompt is dropped.
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


class TtsBridge:
    """Speaks the answer to every prompt, one prompt at a time, in the order they arrived.

    A prompt arriving while another is answered waits in a queue of at most
    MAX_WAITING_PROMPTS; beyond that it is dropped, and the log says which prompt and why (as
    it does for a prompt the chat action does not serve). Answers never interleave on /tts_text.
    """

    def __init__(self, node: 'LlmNode', input_topic: str = '/prompt_text',
                 output_topic: str = '/tts_text') -> None:
        self.node = node
        # One mutually exclusive group for the prompts and the action client: prompts are taken
        # one at a time, in order, and a goal is never sent while the client handles a response
        # on another thread (Humble's and Jazzy's rclpy ActionClient sends a request before it
        # registers its future, without a lock: a response handled in between raises).
        group = MutuallyExclusiveCallbackGroup()
        self.publisher = node.create_publisher(String, output_topic, 10)
        self.client = ActionClient(node, Chat, '~/chat', callback_group=group,
                                   feedback_sub_qos_profile=FEEDBACK_QOS,
                                   goal_service_qos_profile=SERVICE_QOS,
                                   cancel_service_qos_profile=SERVICE_QOS,
                                   result_service_qos_profile=SERVICE_QOS)
        self._waiting: Deque[str] = collections.deque()
        self._busy = False      # a prompt is being answered; the next waits for it
        self._lock = threading.Lock()
        # KEEP_ALL: a burst of prompts waits in DDS until the callback queues (or drops) each,
        # rather than being overwritten unseen.
        node.create_subscription(String, input_topic,
                                 guard.subscription(node, f'TTS bridge {input_topic}',
                                                    self._on_prompt),
                                 QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=1,
                                            reliability=ReliabilityPolicy.RELIABLE),
                                 callback_group=group)
        node.get_logger().info(f'TTS bridge: {input_topic} -> chat -> {output_topic}')

    def _on_prompt(self, message: String) -> None:
        with self._lock:
            if len(self._waiting) >= MAX_WAITING_PROMPTS:
                self.node.get_logger().warning(
                    f'TTS bridge: dropped prompt {_excerpt(message.data)}: '
                    f'{MAX_WAITING_PROMPTS} prompts are already waiting to be answered')
                return
            self._waiting.append(message.data)
            if self._busy:
                return
            self._busy = True
        self._answer_next()

    def _answer_next(self) -> None:
        """Send the oldest waiting prompt as a goal; its result (or rejection) sends the next."""
        with self._lock:
            if not self._waiting:
                self._busy = False
                return
            prompt = self._waiting.popleft()
        if not self.client.wait_for_server(timeout_sec=SERVER_WAIT):
            self.node.get_logger().warning(f'TTS bridge: dropped prompt {_excerpt(prompt)}: '
                                           'the chat action is not available')
            self._answer_next()
            return
        splitter = SentenceSplitter()
        fed = []   # the answer text given to the splitter so far
        # Feedback and result travel separately, so the last feedback may arrive after the
        # result: once the result has spoken, the goal is done.
        spoken = threading.Event()

        def speak(text: str) -> None:
            if spoken.is_set():
                return
            fed.append(text)
            for sentence in splitter.feed(text):
                self.publisher.publish(String(data=sentence))

        def on_result(future) -> None:
            try:
                result = future.result().result
                if result.error_code != Chat.Result.NONE:
                    self.node.get_logger().warning(
                        f'TTS bridge: prompt {_excerpt(prompt)} was not answered in full: '
                        f'{result.error_message}')
                # rclpy drops feedback that arrives after the result: the result has it all.
                already = ''.join(fed)
                rest = result.text[len(already):] if result.text.startswith(already) else ''
                for sentence in splitter.feed(rest) + splitter.flush():
                    self.publisher.publish(String(data=sentence))
                spoken.set()
            finally:    # whatever happened to this prompt, the next one is answered
                self._answer_next()

        def on_goal_response(future) -> None:
            try:
                handle = future.result()
            except Exception as error:  # the request itself failed (e.g. during shutdown)
                self.node.get_logger().warning(
                    f'TTS bridge: prompt {_excerpt(prompt)} could not be sent: {error}')
                self._answer_next()
                return
            if not handle.accepted:
                self.node.get_logger().warning(
                    f'TTS bridge: prompt {_excerpt(prompt)} was not accepted')
                self._answer_next()
                return
            handle.get_result_async().add_done_callback(on_result)

        # Only the answer is spoken; the reasoning stays out of /tts_text.
        self.client.send_goal_async(
            Chat.Goal(prompt=prompt),
            feedback_callback=lambda feedback: speak(feedback.feedback.delta),
        ).add_done_callback(on_goal_response)


def _excerpt(prompt: str) -> str:
    return repr(prompt if len(prompt) <= 60 else prompt[:57] + '...')
