"""A client of the chat action, shared by the TTS bridge, the chat CLI and the examples.

ChatClient is an ActionClient with the QoS profiles below (FEEDBACK_QOS, SERVICE_QOS), a
send() for callback code and an ask() that waits for the result. ask() raises the typed
errors below instead of leaving every caller to test `error_code` and `accepted` by hand.

A behaviour in another package may copy this file: it needs only rclpy and s100_llm_msgs.
The typed answers (typed_answer, ChatClient.ask_typed: the answer as a message of the type the
goal's format named) also need s100_llm's interface_schema module, imported only when used: a
behaviour that wants them depends on s100_llm for that helper alone.

The QoS of the chat action (the server, chat_action.py, uses the same, through qos.py): nothing
a burst sends is overwritten. rclpy's defaults keep the last 10 messages: a model streaming
hundreds of chunks per second would overwrite most feedback before the client takes it. Goal
requests are worse: rclpy's ActionServer takes one request per executor wake-up (about 1-3 ms
each here), so a burst of a few hundred goals waits in the DDS reader, and a KEEP_LAST reader
drops the oldest unread requests without any answer (5 clients x 100 goals lost 342-383 of them
with depth 100). KEEP_ALL keeps every request; DDS's reliable flow control holds back a writer
instead of dropping. A client's own KEEP_LAST(10) default loses its own requests and answers
beyond 10 in flight, whatever the server does.
"""

import copy
from typing import Any, Callable, Optional

import rclpy
from rclpy.action import ActionClient
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from rclpy.task import Future
from s100_llm_msgs.action import Chat

__all__ = ['ChatClient', 'ChatError', 'GoalNotAccepted', 'check', 'typed_answer',
           'FEEDBACK_QOS', 'SERVICE_QOS']

FEEDBACK_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
# Goal, cancel and result services: requests from many clients at once are all kept (depth is
# ignored with KEEP_ALL; rclpy requires a value).
SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=1000,
                         reliability=ReliabilityPolicy.RELIABLE)

FeedbackCallback = Callable[[Chat.Feedback], None]
# Wait until the condition holds, spinning the client's node meanwhile.
SpinUntil = Callable[[Callable[[], bool]], None]


class GoalNotAccepted(Exception):
    """The server rejected the goal (llm_node accepts every goal: seen only with other
    servers, or when the request failed)."""


class ChatError(Exception):
    """A goal that ended without being served in full: the Result's error_code (a
    Chat.Result constant) and error_message; `result` is the whole Result (partial text,
    stats)."""

    def __init__(self, result: Chat.Result) -> None:
        super().__init__(f'error_code {result.error_code}: {result.error_message}')
        self.result = result
        self.error_code: int = result.error_code
        self.error_message: str = result.error_message


def check(result: Chat.Result) -> Chat.Result:
    """The result when it was served; ChatError otherwise."""
    if result.error_code != Chat.Result.NONE:
        raise ChatError(result)
    return result


def typed_answer(result: Chat.Result, msg_class: Any) -> Any:
    """The answer of a goal whose format named msg_class's type, as a message of that type.

    Raises ChatError for a result with an error_code, and ChatError with FORMAT_MISMATCH when
    the text does not fill the type (e.g. a result of a goal that asked for another format).
    """
    # Imported here: the rest of this file needs only rclpy and s100_llm_msgs (it may be
    # copied into a behaviour's package); the typed answers need the s100_llm package.
    from s100_llm.interface_schema import fill_from_json
    from s100_llm.interface_schema import InterfaceProblem
    check(result)
    try:
        return fill_from_json(msg_class, result.text)
    except InterfaceProblem as problem:
        mismatch = copy.copy(result)
        mismatch.error_code = Chat.Result.FORMAT_MISMATCH
        mismatch.error_message = f'the answer does not fill {problem}'
        raise ChatError(mismatch) from None


class ChatClient:
    """The chat action of an llm node, as a behaviour uses it.

    action: the action's name, resolved like any name of `node` (relative: under the node's
    namespace, so 'llm/chat' in namespace robot1 is /robot1/llm/chat).
    """

    def __init__(self, node: Node, action: str = 'llm/chat',
                 callback_group: Optional[CallbackGroup] = None) -> None:
        self.node = node
        self.action_name = action
        self.action = ActionClient(node, Chat, action, callback_group=callback_group,
                                   feedback_sub_qos_profile=FEEDBACK_QOS,
                                   goal_service_qos_profile=SERVICE_QOS,
                                   cancel_service_qos_profile=SERVICE_QOS,
                                   result_service_qos_profile=SERVICE_QOS)

    def wait_for_server(self, timeout: Optional[float] = None) -> bool:
        return self.action.wait_for_server(timeout_sec=timeout)

    def send(self, goal: Chat.Goal, on_feedback: Optional[FeedbackCallback] = None) -> Future:
        """Send the goal; the future is done with its ClientGoalHandle. on_feedback gets each
        Chat.Feedback. Call it from the thread that spins the node, or with the client in a
        mutually exclusive callback group: Humble's and Jazzy's ActionClient registers the
        request's future after sending it, without a lock, and a response handled on another
        thread in between raises."""
        callback = None if on_feedback is None else (lambda message: on_feedback(message.feedback))
        return self.action.send_goal_async(goal, feedback_callback=callback)

    def ask(self, goal: Chat.Goal, on_feedback: Optional[FeedbackCallback] = None,
            spin_until: Optional[SpinUntil] = None,
            cancel_when: Callable[[], bool] = lambda: False) -> Chat.Result:
        """Send the goal and wait for its result, which is returned when it was served.

        spin_until(condition) drives the node until condition() holds (default: rclpy's
        global executor, for a node that no executor spins). cancel_when() is checked while
        the answer streams; once it holds, the goal is canceled and its (CANCELED) result
        awaited. Raises GoalNotAccepted, or ChatError for a result with an error_code.
        """
        spin = spin_until or self._spin_until
        sent = self.send(goal, on_feedback)
        spin(sent.done)
        handle = sent.result()
        if not handle.accepted:
            raise GoalNotAccepted(f'{self.action_name}: the goal was not accepted')
        result = handle.get_result_async()
        spin(lambda: result.done() or cancel_when())
        if not result.done():
            handle.cancel_goal_async()
            spin(result.done)
        return check(result.result().result)

    def ask_typed(self, goal: Chat.Goal, msg_class: Any, **ask: Any) -> Any:
        """ask() with the goal's format set to msg_class's type (e.g. PoseStamped); returns
        the answer as a message of that type (typed_answer). `ask` takes ask()'s arguments."""
        from s100_llm.interface_schema import type_name
        goal.format = type_name(msg_class)
        return typed_answer(self.ask(goal, **ask), msg_class)

    def _spin_until(self, condition: Callable[[], bool]) -> None:
        # In steps: rcl_wait is not woken by signals, and Python runs a SIGINT handler only
        # between bytecodes.
        while not condition():
            rclpy.spin_once(self.node, timeout_sec=0.1)
