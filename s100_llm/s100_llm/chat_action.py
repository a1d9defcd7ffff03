"""The /<node>/chat action server: goal admission, streaming into feedback, cancel.

Every goal is accepted. rclpy then hands it to `_on_accepted`, which validates it and admits
it under the concurrency policy of core.admission: it starts at once, waits in the queue, or
(when the node is not serving, the goal is invalid or there is no room) ends ABORTED at once
with Result.error_code and error_message, because a rejected ROS 2 goal carries no reason
(nav2 reports its errors the same way). The reason is also logged ("chat goal rejected").

A goal runs when `goal_handle.execute()` is called for it: at acceptance when a slot is free,
or when a running goal ends and frees its slot. Waiting goals hold no thread. A goal that must
end without running (canceled or preempted while waiting, refused, drained by abort_all) is
executed too, straight to its result, so no accepted goal is left without one. Each running
goal streams through core.chat.run.ChatRun, whose chunks become feedback.

A client that goes away without canceling (killed, crashed) cannot receive its goals' results:
while a goal streams, the action's feedback topic is checked once per CLIENT_CHECK_PERIOD, and
when no client of ~/chat is left, the running goals stop (ended with CANCELED, as aborted: the
client did not ask) and the waiting ones end too, so the next behaviour is not kept waiting.

A goal with a deadline gets a one-shot timer on the steady clock at acceptance (an rclpy timer:
the executor runs it, no thread per goal): when it fires the goal ends with DEADLINE through the
same paths as a cancel (withdrawn unrun while it waits, its stream closed while it runs).

Threads: the executor runs the goal, cancel and accepted callbacks, the deadline timers and each
goal's execution; the node's transition callbacks and its exit call abort_all(). The node is
read only through serving_state().
"""

import dataclasses
import functools
import json
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, TYPE_CHECKING
import uuid

from rclpy.action import CancelResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock
from rclpy.clock import ClockType
from rclpy.timer import Timer

from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import Confidence as ConfidenceMsg
from s100_llm_msgs.msg import GenerationStats
from s100_llm_msgs.msg import RobotToolCall
from s100_llm_msgs.msg import TokenLogprob as TokenLogprobMsg
from s100_llm_msgs.msg import ToolCall
from sensor_msgs.msg import CompressedImage as CompressedImageMsg
from sensor_msgs.msg import Image

from .compat import CancelHookActionServer
from .compat import execute_goal
from .core.admission import Admission
from .core.chat.checks import validate
from .core.chat.confidence import Confidence
from .core.chat.request import ChatOutcome
from .core.chat.request import ChatRequest
from .core.chat.request import DONE_ERROR
from .core.chat.request import ErrorCode
from .core.chat.request import Refusal
from .core.chat.run import ChatRun
from .core.config import ChatSettings
from .core.config import VisionSettings
from .core.images import CompressedImage
from .core.images import RawImage
from .core.robot_tools import RobotCall
from .core.robot_tools import RobotToolbox
from .core.serving import ServingState
from .core.sessions import SessionStore
from .core.warmup import activate_messages
from .core.warmup import Warmer
from .interface_schema import fill_from_json
from .interface_schema import InterfaceProblem
from .interface_schema import looks_like_type_name
from .interface_schema import message_class
from .interface_schema import message_schema
from .interface_schema import type_name
from .qos import FEEDBACK_QOS
from .qos import SERVICE_QOS

if TYPE_CHECKING:
    from .node import LlmNode
    from .parameters import NodeSettings

CANCELED_BY_CLIENT = 'canceled by the client'
PREEMPTED = 'preempted by a newer goal'
NO_CLIENT_LEFT = 'no client of ~/chat left'
# How long abort_all() waits for the chats to end (each closes its stream at once).
ABORT_WAIT = 5.0
# Seconds between two looks of a streaming goal at whether any client of the action is left.
CLIENT_CHECK_PERIOD = 1.0


def request_from_goal(goal: Chat.Goal) -> ChatRequest:
    return ChatRequest(
        prompt=goal.prompt, system_prompt=goal.system_prompt, session_id=goal.session_id,
        reset_session=goal.reset_session,
        context=[{'role': m.role, 'content': m.content, 'thinking': m.thinking}
                 for m in goal.context],
        think=goal.think, temperature=goal.temperature, top_p=goal.top_p, top_k=goal.top_k,
        max_tokens=goal.max_tokens, seed=goal.seed, stop=list(goal.stop),
        output_format=goal.format,
        tools=[{'name': t.name, 'description': t.description,
                'parameters_json': t.parameters_json} for t in goal.tools],
        tool_results=[{'tool_call_id': r.tool_call_id, 'name': r.name, 'content': r.content}
                      for r in goal.tool_results],
        images=[raw_image(image) for image in goal.images],
        compressed_images=[compressed_image(image) for image in goal.compressed_images],
        use_camera=goal.use_camera, logprobs=goal.logprobs,
        token_logprobs=goal.token_logprobs, top_logprobs=goal.top_logprobs,
        deadline=goal.deadline, robot_tools=list(goal.robot_tools), dry_run=goal.dry_run)


def robot_call_messages(calls: Sequence[RobotCall]) -> List[RobotToolCall]:
    return [RobotToolCall(step=call.step, name=call.name, arguments_json=call.arguments_json,
                          outcome=int(call.outcome), result_json=call.result_json,
                          message=call.message, duration=call.duration) for call in calls]


def confidence_message(confidence: Optional[Confidence]) -> ConfidenceMsg:
    """Chat.Result.confidence (available False when the goal did not ask for logprobs)."""
    if confidence is None:
        return ConfidenceMsg()
    return ConfidenceMsg(
        available=confidence.available, token_count=confidence.token_count,
        mean_logprob=confidence.mean_logprob, min_logprob=confidence.min_logprob,
        min_token=confidence.min_token, least_confident_field=confidence.least_confident_field,
        least_confident_field_logprob=confidence.least_confident_field_logprob,
        tokens=[TokenLogprobMsg(token=token.token, logprob=token.logprob,
                                top_tokens=[text for text, _ in token.top],
                                top_logprobs=[value for _, value in token.top])
                for token in confidence.tokens])


@functools.lru_cache(maxsize=64)
def typed_format(name: str) -> Tuple[Any, str]:
    """The message class a goal's format names and its JSON Schema as compact JSON text;
    InterfaceProblem when it is not an installed message type a model can write. Cached (a
    failure is not): the schema of a type does not change while the node runs."""
    cls = message_class(name)
    return cls, json.dumps(message_schema(cls), separators=(',', ':'))


def resolve_typed_format(goal: 'ChatGoal') -> None:
    """A format that names a message type: the core gets the type's schema (it constrains
    and checks the answer as with any schema), the goal keeps the class to fill after."""
    name = goal.request.output_format
    if not looks_like_type_name(name):
        return
    try:
        cls, schema = typed_format(name.strip())
    except InterfaceProblem as problem:
        raise Refusal(ErrorCode.INVALID_GOAL, f'format: {problem}') from None
    goal.request.output_format = schema
    goal.format_class = cls
    goal.format_type = type_name(cls)


def check_typed_answer(outcome: ChatOutcome, cls: Any) -> None:
    """A served answer must fill a message of the goal's type: FORMAT_MISMATCH otherwise
    (the text stays the raw answer). The core has checked it against the type's schema,
    which says all a message's setters check, so this catches only a defect."""
    if outcome.error_code != ErrorCode.NONE or outcome.tool_calls:
        return
    try:
        fill_from_json(cls, outcome.text)
    except InterfaceProblem as problem:
        outcome.done_reason = DONE_ERROR
        outcome.error_code = ErrorCode.FORMAT_MISMATCH
        outcome.error_message = f'the answer does not fill {problem}'


def raw_image(message: Image) -> RawImage:
    """A sensor_msgs/Image's fields for the ROS-free core (data as bytes: one copy)."""
    return RawImage(width=message.width, height=message.height, encoding=message.encoding,
                    step=message.step, is_bigendian=bool(message.is_bigendian),
                    data=bytes(message.data))


def compressed_image(message: CompressedImageMsg) -> CompressedImage:
    return CompressedImage(format_name=message.format, data=bytes(message.data))


class ChatCounters:
    """What the diagnostics report about chats (goals refused at arrival are not counted)."""

    def __init__(self) -> None:
        self.served = 0
        self.failed = 0
        self.canceled = 0
        self.last_tokens_per_second = 0.0
        self.last_time_to_first_token = 0.0


@dataclasses.dataclass(eq=False)
class ChatGoal:
    """One accepted goal, from acceptance to its result."""

    handle: ServerGoalHandle
    request: ChatRequest
    accepted_at: float
    admitted: bool = False      # it entered admission (refused goals did not)
    # Set before the goal is executed when it must end without running: (error_code, reason).
    ending: Optional[Tuple[ErrorCode, str]] = None
    # Set when a running goal is told to stop; applied to its run as soon as it has one.
    stop: Optional[Tuple[ErrorCode, str]] = None
    run: Optional[ChatRun] = None
    # A format naming a message type: its class (to fill with the answer) and full name.
    format_class: Any = None
    format_type: str = ''
    # The deadline's one-shot timer while it is armed, and whether it has fired (or the goal
    # ended first, so that it never acts).
    deadline_timer: Optional[Timer] = None
    deadline_done: bool = False

    @property
    def uuid(self) -> bytes:
        return bytes(self.handle.goal_id.uuid)


class ChatActionServer:
    def __init__(self, node: 'LlmNode') -> None:
        self.node = node
        self.settings = ChatSettings()
        self.vision = VisionSettings()
        self.sessions = SessionStore(self.settings.session_max_turns, self.settings.max_sessions)
        # The robot tools of the robot_tools_file (set by the node at configure; None: none).
        self.toolbox: Optional[RobotToolbox] = None
        self.admission: Admission[ChatGoal] = Admission('queue', 1, 0)
        self.counters = ChatCounters()
        self.warmer = Warmer()      # Ollama's prompt cache, warmed between turns
        self._goals: Dict[bytes, ChatGoal] = {}     # goal uuid -> goal, until its result
        self._cancels: List[ChatGoal] = []          # cancel requests not yet acted on
        self._lock = threading.Lock()
        # Notified when a goal's execution has ended (its result set): abort_all waits on it.
        self._ended = threading.Condition(self._lock)
        self._executing = 0
        # Set when the node is going down: every goal that arrives is refused with it.
        self.closing = ''
        self._clients_checked = 0.0
        self._no_client_since: Optional[float] = None
        # Deadlines are wall-clock seconds: a steady clock, whatever use_sim_time says.
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._timers = ReentrantCallbackGroup()
        self._server = CancelHookActionServer(
            node, Chat, '~/chat', after_cancel=self._apply_cancels,
            execute_callback=self._execute,
            handle_accepted_callback=self._on_accepted, cancel_callback=self._on_cancel,
            callback_group=ReentrantCallbackGroup(), feedback_pub_qos_profile=FEEDBACK_QOS,
            goal_service_qos_profile=SERVICE_QOS, cancel_service_qos_profile=SERVICE_QOS,
            result_service_qos_profile=SERVICE_QOS)

    def configure(self, settings: 'NodeSettings') -> None:
        """Take the chat settings (at configure and activate); sessions survive."""
        self.settings = settings.chat
        self.vision = settings.vision
        self.sessions.max_turns = settings.chat.session_max_turns
        self.sessions.max_sessions = settings.chat.max_sessions
        self.admission.policy = settings.chat.concurrency
        self.admission.slots = settings.server.num_parallel
        self.admission.max_queued = settings.chat.max_queued_goals

    # ---- admission -----------------------------------------------------------------------
    def _on_accepted(self, handle: ServerGoalHandle) -> None:
        goal = ChatGoal(handle, request_from_goal(handle.request), time.monotonic())
        with self._lock:
            self._goals[goal.uuid] = goal
        try:
            resolve_typed_format(goal)
            self._check(goal.request)
        except Refusal as refusal:
            self._refuse(goal, refusal.code, refusal.reason)
            return
        except Exception as error:  # a defect: the goal still gets a result that says so
            self.node.get_logger().error(f'chat goal check failed: {error!r}')
            self._refuse(goal, ErrorCode.UNKNOWN, f'internal error: {error!r}')
            return
        arrival = self.admission.admit(goal)
        if arrival.refusal:
            self._refuse(goal, ErrorCode.QUEUE_FULL, arrival.refusal)
            return
        goal.admitted = True
        self._arm_deadline(goal)
        if arrival.preempted is not None:
            self._preempt(arrival.preempted, arrival.preempted_was_waiting)
        if arrival.start:
            execute_goal(handle)

    def _refuse(self, goal: ChatGoal, code: ErrorCode, reason: str) -> None:
        self.node.get_logger().warning(f'chat goal rejected: {reason} ({code.name})')
        _end_unrun(goal, code, reason)

    def _check(self, request: ChatRequest) -> None:
        """Raise Refusal when the goal cannot be served."""
        if self.closing:
            raise Refusal(ErrorCode.NOT_SERVING, self.closing)
        state = self.node.serving_state()
        if not state.serving:
            raise Refusal(ErrorCode.NOT_SERVING, state.not_serving_reason)
        if request.use_camera:
            # The frame current when the goal is accepted: a goal that waits in the queue
            # still sees what the robot saw when it asked. Taken before validate(), which
            # checks it (or refuses the goal for its absence) after the goal's own fields.
            frame, missing = self.node.camera.latest(self.vision.camera_max_age)
            request.camera_name = f'the camera frame from {self.node.camera.topic}'
            if frame is None:
                request.camera_missing = missing
            else:
                request.camera_image = (compressed_image(frame)
                                        if isinstance(frame, CompressedImageMsg)
                                        else raw_image(frame))
        validate(request, self.settings, self.sessions, list(state.capabilities), state.model,
                 self.vision, think_levels=state.think_levels,
                 robot_tools=list(self.toolbox.tools) if self.toolbox is not None else [])

    def _preempt(self, victim: ChatGoal, was_waiting: bool) -> None:
        if was_waiting:
            _end_unrun(victim, ErrorCode.PREEMPTED, PREEMPTED)
        else:
            self._stop(victim, ErrorCode.PREEMPTED, PREEMPTED)

    def _stop(self, goal: ChatGoal, code: ErrorCode, reason: str) -> None:
        """Tell a running goal to end (at once if it streams, before it starts otherwise)."""
        with self._lock:
            goal.stop = goal.stop or (code, reason)
            run = goal.run
        if run is not None:
            run.cancel(reason, code)

    # ---- deadline ------------------------------------------------------------------------
    def _arm_deadline(self, goal: ChatGoal) -> None:
        deadline = goal.request.deadline
        if not deadline:
            return

        def expire() -> None:
            with self._lock:
                if goal.deadline_done:
                    return
                goal.deadline_done = True
                timer = goal.deadline_timer
            if timer is not None:
                timer.cancel()
            reason = f'the deadline of {deadline:g} s passed'
            if self.admission.withdraw(goal):       # still waiting: it ends without running
                _end_unrun(goal, ErrorCode.DEADLINE, reason)
            else:
                self._stop(goal, ErrorCode.DEADLINE, reason)

        left = max(goal.accepted_at + deadline - time.monotonic(), 0.001)
        timer = self.node.create_timer(left, expire, callback_group=self._timers,
                                       clock=self._steady)
        with self._lock:
            goal.deadline_timer = timer

    def _disarm_deadline(self, goal: ChatGoal) -> None:
        with self._lock:
            goal.deadline_done = True
            timer, goal.deadline_timer = goal.deadline_timer, None
        if timer is not None:
            self.node.destroy_timer(timer)

    # ---- cancel --------------------------------------------------------------------------
    def _on_cancel(self, handle: ServerGoalHandle) -> CancelResponse:
        """Accept; act once rclpy has marked the goal CANCELING (_apply_cancels), since a goal
        can be ended as canceled only after that mark, which follows this callback."""
        with self._lock:
            goal = self._goals.get(bytes(handle.goal_id.uuid))
            if goal is not None:
                self._cancels.append(goal)
        return CancelResponse.ACCEPT

    def _apply_cancels(self) -> None:
        """Act on the cancels rclpy has marked. Two of these can run at once (two cancel
        requests): each takes only goals already marked (or ended), so a goal whose mark is
        still to come stays for the call that follows its own cancel request."""
        with self._lock:
            pending = list(self._cancels)
        # The goal handles' flags are read outside our lock (rclpy takes their own lock).
        settled = [g for g in pending
                   if g.handle.is_cancel_requested or not g.handle.is_active]
        with self._lock:
            goals = [g for g in self._cancels if g in settled]
            self._cancels = [g for g in self._cancels if g not in settled]
        for goal in goals:
            if not goal.handle.is_cancel_requested:     # it ended before the cancel came
                continue
            if self.admission.withdraw(goal):           # waiting: it ends now, unrun
                _end_unrun(goal, ErrorCode.CANCELED, CANCELED_BY_CLIENT)
            else:
                self._stop(goal, ErrorCode.CANCELED, CANCELED_BY_CLIENT)

    # ---- execution -----------------------------------------------------------------------
    def _execute(self, handle: ServerGoalHandle) -> Chat.Result:
        with self._lock:
            goal = self._goals[bytes(handle.goal_id.uuid)]
            self._executing += 1
        state = self.node.serving_state()
        try:
            try:
                outcome = self._outcome(goal, state)
                if goal.format_class is not None:
                    check_typed_answer(outcome, goal.format_class)
            except Exception as error:  # a defect: the goal still gets a result that says so
                self.node.get_logger().error(f'chat failed: {error!r}')
                outcome = ChatOutcome.unserved(ErrorCode.UNKNOWN, f'internal error: {error!r}')
            with self._lock:
                del self._goals[goal.uuid]
            self._disarm_deadline(goal)
            return self._finish(goal, outcome, state.model)
        finally:    # its slot goes to the next waiting goals, after its result is set
            try:
                for starting in self.admission.release(goal):
                    execute_goal(starting.handle)
            finally:
                with self._lock:
                    self._executing -= 1
                    self._ended.notify_all()

    def _outcome(self, goal: ChatGoal, state: ServingState) -> ChatOutcome:
        if goal.ending is not None:
            return ChatOutcome.unserved(*goal.ending)
        if not state.serving or state.engine is None:
            return ChatOutcome.unserved(ErrorCode.NOT_SERVING, state.not_serving_reason)

        def publish(seq: int, delta: str, thinking_delta: str,
                    calls: Sequence[RobotCall]) -> None:
            goal.handle.publish_feedback(
                Chat.Feedback(seq=seq, delta=delta, thinking_delta=thinking_delta,
                              robot_calls=robot_call_messages(calls)))
            self._check_clients()

        run = ChatRun(state.engine, state.model, goal.request, self.settings, self.sessions,
                      state.context_length, keep_alive=-1, publish=publish,
                      accepted_at=goal.accepted_at,
                      inline_think='thinking' in state.capabilities,
                      image_max_side=self.vision.image_max_side, toolbox=self.toolbox,
                      log=self.node.get_logger().info, warmer=self.warmer)
        with self._lock:
            goal.run = run
            stop = goal.stop
        if stop is not None:        # told to stop before it had a run: it ends unstarted
            run.cancel(stop[1], stop[0])
        return run.run()

    def _finish(self, goal: ChatGoal, outcome: ChatOutcome, model: str) -> Chat.Result:
        result = Chat.Result(
            text=outcome.text, thinking=outcome.thinking, done_reason=outcome.done_reason,
            error_code=int(outcome.error_code), error_message=outcome.error_message,
            model=model, feedback_count=outcome.feedback_messages,
            session_id=goal.request.session_id, session_turns=outcome.session_turns,
            stats=GenerationStats(
                prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
                time_to_first_token=outcome.time_to_first_token,
                tokens_per_second=outcome.tokens_per_second,
                total_duration=outcome.total_duration, load_duration=outcome.load_duration,
                prompt_eval_duration=outcome.prompt_eval_duration,
                eval_duration=outcome.eval_duration),
            tool_calls=[ToolCall(id=call.call_id, name=call.name,
                                 arguments_json=call.arguments_json)
                        for call in outcome.tool_calls],
            confidence=confidence_message(outcome.confidence),
            robot_calls=robot_call_messages(outcome.robot_calls))
        result.format_type = goal.format_type
        code = outcome.error_code
        if code == ErrorCode.NONE:
            self.counters.served += 1
            self.counters.last_tokens_per_second = outcome.tokens_per_second
            self.counters.last_time_to_first_token = outcome.time_to_first_token
            goal.handle.succeed()
            return result
        if goal.admitted:
            if code in (ErrorCode.CANCELED, ErrorCode.PREEMPTED):
                self.counters.canceled += 1
            else:
                self.counters.failed += 1
            if code == ErrorCode.NOT_SERVING:     # a deactivate or shutdown: not a failure
                self.node.get_logger().warning(f'chat ended by the node: {outcome.error_message}')
            elif code == ErrorCode.DEADLINE:      # the goal's own limit, not a node failure
                self.node.get_logger().warning(f'chat ended: {outcome.error_message}')
            elif code not in (ErrorCode.CANCELED, ErrorCode.PREEMPTED):
                self.node.get_logger().error(
                    f'chat aborted: {outcome.error_message} ({code.name})')
        if code == ErrorCode.CANCELED and goal.handle.is_cancel_requested:
            goal.handle.canceled()
        else:   # preempted and no client left included: the client did not ask for it
            goal.handle.abort()
        return result

    # ---- clients ------------------------------------------------------------------------
    def _check_clients(self) -> None:
        """End every goal when no client of the action is left (at most once per
        CLIENT_CHECK_PERIOD, from the goals that stream). Every action client subscribes to the
        feedback topic (rclpy, rclcpp, `ros2 action send_goal`); counting its subscribers works
        the same on Humble, Jazzy and Kilted. A killed client is gone once DDS notices (its
        lease runs out: seconds). Two counts of none, a period apart, are needed: discovery can
        show a new client's goal before its feedback subscription."""
        now = time.monotonic()
        with self._lock:
            if now - self._clients_checked < CLIENT_CHECK_PERIOD:
                return
            self._clients_checked = now
        if self.node.count_subscribers('~/chat/_action/feedback') > 0:
            self._no_client_since = None
            return
        if self._no_client_since is None:
            self._no_client_since = now
            return
        if now - self._no_client_since < CLIENT_CHECK_PERIOD:
            return
        self._no_client_since = None
        with self._lock:
            goals = [g for g in self._goals.values() if g.ending is None and g.stop is None]
        for goal in goals:
            self.node.get_logger().warning(
                f'chat goal {uuid.UUID(bytes=goal.uuid)} canceled: {NO_CLIENT_LEFT}')
        self.abort_all(NO_CLIENT_LEFT, code=ErrorCode.CANCELED, wait=False)

    # ---- for the node --------------------------------------------------------------------
    def close(self, reason: str) -> None:
        """The node is going down: refuse every goal from now on."""
        self.closing = reason

    def abort_all(self, reason: str, failure: bool = True,
                  code: Optional[ErrorCode] = None, wait: bool = True) -> None:
        """End every running or waiting chat and wait until each has its result: because
        something failed (SERVER_FAILED) or on purpose (failure=False: deactivate, shutdown;
        NOT_SERVING, logged as a warning), or with the code given."""
        if code is None:
            code = ErrorCode.SERVER_FAILED if failure else ErrorCode.NOT_SERVING
        self.warmer.cancel()
        for goal in self.admission.withdraw_all():
            _end_unrun(goal, code, reason)
        with self._lock:
            running = [g for g in self._goals.values() if g.ending is None]
        for goal in running:
            self._stop(goal, code, reason)
        if wait:
            self.wait_ended(reason)

    def warm_at_activate(self) -> None:
        """Warm the cache with the system prompt the first turn most likely starts with
        (core/warmup.py's activate_messages), in the background."""
        state = self.node.serving_state()
        if state.engine is not None:
            self.warmer.start(state.engine, state.model, activate_messages(self.sessions),
                              keep_alive=-1, idle_timeout=self.settings.stream_timeout)

    def wait_ended(self, reason: str) -> None:
        """Wait (at most ABORT_WAIT) until every goal abort_all ended has its result."""
        with self._lock:
            ended = self._ended.wait_for(
                lambda: not self._goals and not self._executing, ABORT_WAIT)
            left = len(self._goals)
        if not ended:
            self.node.get_logger().error(
                f'{left} chat(s) without a result {ABORT_WAIT:g} s after: {reason}')


def _end_unrun(goal: ChatGoal, code: ErrorCode, reason: str) -> None:
    """End a goal that never ran (refused, preempted or canceled while waiting, withdrawn):
    executed straight to its result."""
    goal.ending = (code, reason)
    execute_goal(goal.handle)
