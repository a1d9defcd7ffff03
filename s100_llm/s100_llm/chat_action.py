"""The /<node>/chat action server: goal admission, streaming into feedback, cancel.

Goals are accepted only while the node is active and the goal is valid; a rejection's reason
is logged (and so published on /rosout). Accepted goals run under the concurrency policy of
core.admission; each streams through core.chat.ChatRun, whose chunks become feedback.
"""

import threading
import time
from typing import Dict, TYPE_CHECKING

from rclpy.action import ActionServer
from rclpy.action import CancelResponse
from rclpy.action import GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup

from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import GenerationStats

from .core.admission import Admission
from .core.admission import Ticket
from .core.chat import ChatOutcome
from .core.chat import ChatRequest
from .core.chat import ChatRun
from .core.chat import validate
from .core.config import ChatSettings
from .core.sessions import SessionStore
from .qos import FEEDBACK_QOS
from .qos import SERVICE_QOS

if TYPE_CHECKING:
    from .node import LlmNode
    from .parameters import NodeSettings


def request_from_goal(goal: Chat.Goal) -> ChatRequest:
    return ChatRequest(
        prompt=goal.prompt, system_prompt=goal.system_prompt, session_id=goal.session_id,
        reset_session=goal.reset_session,
        context=[{'role': m.role, 'content': m.content, 'thinking': m.thinking}
                 for m in goal.context],
        think=goal.think, temperature=goal.temperature, top_p=goal.top_p, top_k=goal.top_k,
        max_tokens=goal.max_tokens, seed=goal.seed, stop=list(goal.stop))


class ChatCounters:
    """What the diagnostics report about chats."""

    def __init__(self) -> None:
        self.served = 0
        self.failed = 0
        self.canceled = 0
        self.last_tokens_per_second = 0.0
        self.last_time_to_first_token = 0.0


class ChatActionServer:
    def __init__(self, node: 'LlmNode') -> None:
        self.node = node
        self.settings = ChatSettings()
        self.sessions = SessionStore(self.settings.session_max_turns, self.settings.max_sessions)
        self.admission = Admission('queue', 1, 0)
        self.counters = ChatCounters()
        # Whether the last abort_all() was on purpose: goals still waiting for their turn then
        # end the same way as the running ones.
        self._stopped_on_purpose = False
        self._tickets: Dict[int, Ticket] = {}      # id(goal message) -> ticket
        self._accepted_at: Dict[int, float] = {}
        self._runs: Dict[bytes, ChatRun] = {}      # goal uuid -> run
        self._lock = threading.Lock()
        self._server = ActionServer(
            node, Chat, '~/chat', execute_callback=self._execute,
            goal_callback=self._on_goal, cancel_callback=self._on_cancel,
            callback_group=ReentrantCallbackGroup(), feedback_pub_qos_profile=FEEDBACK_QOS,
            goal_service_qos_profile=SERVICE_QOS, cancel_service_qos_profile=SERVICE_QOS,
            result_service_qos_profile=SERVICE_QOS)

    def configure(self, settings: 'NodeSettings') -> None:
        """Take the chat settings (at configure and activate); sessions survive."""
        self.settings = settings.chat
        self.sessions.max_turns = settings.chat.session_max_turns
        self.sessions.max_sessions = settings.chat.max_sessions
        self.admission.policy = settings.chat.concurrency
        self.admission.slots = settings.server.num_parallel
        self.admission.max_queued = settings.chat.max_queued_goals

    # ---- goal admission ------------------------------------------------------------------
    def _on_goal(self, goal: Chat.Goal) -> GoalResponse:
        accepted_at = time.monotonic()
        reason = self._rejection(goal)
        if reason:
            self.node.get_logger().warning(f'chat goal rejected: {reason}')
            return GoalResponse.REJECT
        ticket, reason = self.admission.request()
        if ticket is None:
            self.node.get_logger().warning(f'chat goal rejected: {reason}')
            return GoalResponse.REJECT
        with self._lock:
            self._tickets[id(goal)] = ticket
            self._accepted_at[id(goal)] = accepted_at
        return GoalResponse.ACCEPT

    def _rejection(self, goal: Chat.Goal) -> str:
        reason = self.node.not_serving_reason()
        if reason:
            return reason
        return validate(request_from_goal(goal), self.settings, self.sessions,
                        self.node.capabilities, self.node.model)

    def _on_cancel(self, goal_handle: ServerGoalHandle) -> CancelResponse:
        with self._lock:
            run = self._runs.get(bytes(goal_handle.goal_id.uuid))
        if run is not None:
            run.cancel('canceled by the client')
        self.admission.wake()
        return CancelResponse.ACCEPT

    # ---- execution -----------------------------------------------------------------------
    def _execute(self, goal_handle: ServerGoalHandle) -> Chat.Result:
        key = id(goal_handle.request)
        with self._lock:
            ticket = self._tickets.pop(key)
            accepted_at = self._accepted_at.pop(key)
        request = request_from_goal(goal_handle.request)
        if not self.admission.wait_turn(
                ticket, lambda: goal_handle.is_cancel_requested or not self.node.active):
            if goal_handle.is_cancel_requested or ticket.preempted:
                outcome = ChatOutcome(done_reason='canceled', error_message=(
                    'canceled by the client' if goal_handle.is_cancel_requested
                    else 'preempted by a newer goal'))
            else:   # deactivated or failed while the goal waited: like the running ones
                outcome = ChatOutcome(error_message='the node stopped serving (state: '
                                                    f'{self.node.state_label})',
                                      ended_on_purpose=self._stopped_on_purpose)
            return self._finish(goal_handle, outcome, ticket.preempted)
        uuid = bytes(goal_handle.goal_id.uuid)
        try:
            engine = self.node.engine
            if engine is None or not self.node.active:
                return self._finish(goal_handle, ChatOutcome(
                    error_message=f'the node stopped serving (state: {self.node.state_label})'))

            def publish(seq: int, delta: str, thinking_delta: str) -> None:
                goal_handle.publish_feedback(
                    Chat.Feedback(seq=seq, delta=delta, thinking_delta=thinking_delta))

            run = ChatRun(engine, self.node.model, request, self.settings, self.sessions,
                          self.node.context_length, keep_alive=-1, publish=publish,
                          accepted_at=accepted_at,
                          inline_think='thinking' in self.node.capabilities)
            with self._lock:
                self._runs[uuid] = run
            ticket.on_preempt = lambda: run.cancel('preempted by a newer goal')
            if ticket.preempted:
                run.cancel('preempted by a newer goal')
            if goal_handle.is_cancel_requested:
                run.cancel('canceled by the client')
            outcome = run.run()
            return self._finish(goal_handle, outcome, ticket.preempted)
        finally:
            with self._lock:
                self._runs.pop(uuid, None)
            self.admission.release(ticket)

    def _finish(self, goal_handle: ServerGoalHandle, outcome: ChatOutcome,
                preempted: bool = False) -> Chat.Result:
        result = Chat.Result(
            text=outcome.text, thinking=outcome.thinking, done_reason=outcome.done_reason,
            error_message=outcome.error_message, model=self.node.model,
            feedback_count=outcome.feedback_messages,
            session_id=goal_handle.request.session_id, session_turns=outcome.session_turns,
            stats=GenerationStats(
                prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
                time_to_first_token=outcome.time_to_first_token,
                tokens_per_second=outcome.tokens_per_second,
                total_duration=outcome.total_duration, load_duration=outcome.load_duration,
                prompt_eval_duration=outcome.prompt_eval_duration,
                eval_duration=outcome.eval_duration))
        if outcome.done_reason == 'canceled':
            self.counters.canceled += 1
            if self._cancel_acknowledged(goal_handle, preempted):
                goal_handle.canceled()
            else:   # preempted: the server, not the client, ended it
                goal_handle.abort()
        elif outcome.done_reason == 'error':
            self.counters.failed += 1
            if outcome.ended_on_purpose:    # a deactivate or shutdown: not a failure
                self.node.get_logger().warning(f'chat ended by the node: {outcome.error_message}')
            else:
                self.node.get_logger().error(f'chat aborted: {outcome.error_message}')
            goal_handle.abort()
        else:
            self.counters.served += 1
            self.counters.last_tokens_per_second = outcome.tokens_per_second
            self.counters.last_time_to_first_token = outcome.time_to_first_token
            goal_handle.succeed()
        return result

    @staticmethod
    def _cancel_acknowledged(goal_handle: ServerGoalHandle, preempted: bool) -> bool:
        """Whether the client canceled the goal, once rclpy has marked it CANCELING.

        A canceled chat that was not preempted was canceled by the client. Its stream is
        closed inside the cancel callback, and rclpy marks the goal CANCELING only after that
        callback returns: the chat can end first, and canceled() is refused before the mark.
        Waits for it (microseconds; bounded in case rclpy never marks it).
        """
        deadline = time.monotonic() + 1.0
        while not goal_handle.is_cancel_requested:
            if preempted or time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    # ---- for the node --------------------------------------------------------------------
    def abort_all(self, reason: str, failure: bool = True) -> None:
        """End every running or waiting chat and wait for them: because something failed, or
        on purpose (failure=False: deactivate, shutdown), which is logged as a warning."""
        self._stopped_on_purpose = not failure
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancel(reason, as_error=True, on_purpose=not failure)
        self.admission.wake()
        deadline = time.monotonic() + 5.0
        while self.admission.running and time.monotonic() < deadline:
            time.sleep(0.01)
