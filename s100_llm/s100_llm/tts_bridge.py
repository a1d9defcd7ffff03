"""Optional bridge to D-Robotics' speech chain: /prompt_text in, /tts_text out, sentence by
sentence, like hobot_llm and hobot_xlm.

It is a client of the node's own chat action, so prompts from speech get exactly the same
validation, concurrency policy and cancel behaviour as any other goal.
"""

import re
from typing import List, TYPE_CHECKING

from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from s100_llm_msgs.action import Chat
from std_msgs.msg import String

from .qos import FEEDBACK_QOS

if TYPE_CHECKING:
    from .node import LlmNode

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
    def __init__(self, node: 'LlmNode', input_topic: str = '/prompt_text',
                 output_topic: str = '/tts_text') -> None:
        self.node = node
        group = ReentrantCallbackGroup()
        self.publisher = node.create_publisher(String, output_topic, 10)
        self.client = ActionClient(node, Chat, '~/chat', callback_group=group,
                                   feedback_sub_qos_profile=FEEDBACK_QOS)
        node.create_subscription(String, input_topic, self._on_prompt, 10, callback_group=group)
        node.get_logger().info(f'TTS bridge: {input_topic} -> chat -> {output_topic}')

    def _on_prompt(self, message: String) -> None:
        splitter = SentenceSplitter()
        fed = []   # the answer text given to the splitter so far

        def speak(text: str) -> None:
            fed.append(text)
            for sentence in splitter.feed(text):
                self.publisher.publish(String(data=sentence))

        def on_result(future) -> None:
            # rclpy drops feedback that arrives after the result: the result has it all.
            text = future.result().result.text
            already = ''.join(fed)
            if text.startswith(already):
                speak(text[len(already):])
            for sentence in splitter.flush():
                self.publisher.publish(String(data=sentence))

        def on_goal_response(future) -> None:
            handle = future.result()
            if not handle.accepted:
                self.node.get_logger().warning('TTS bridge: the prompt was rejected (see above)')
                return
            handle.get_result_async().add_done_callback(on_result)

        # Only the answer is spoken; the reasoning stays out of /tts_text.
        self.client.send_goal_async(
            Chat.Goal(prompt=message.data),
            feedback_callback=lambda feedback: speak(feedback.feedback.delta),
        ).add_done_callback(on_goal_response)
