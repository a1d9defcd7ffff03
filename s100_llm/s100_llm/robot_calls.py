"""Robot tools over ROS: the calls of the services, actions and topics a robot_tools_file names.

RosToolBackend is core/robot_tools.py's RobotToolBackend made of rclpy: the chat run's loop
asks it for a tool's parameter schema (derived from the request, goal or message type minus
the fields the file fixes) and has it make one call, which always ends in an outcome:

service  a client per tool, created at its first call. No server within the tool's timeout:
         NOT_AVAILABLE; no response within it: TIMEOUT (the request is dropped from the
         client); the response as JSON: SUCCEEDED.
action   an ActionClient per tool. No server: NOT_AVAILABLE; goal rejected: NOT_AVAILABLE;
         each feedback is reported (JSON) while it runs; the timeout passes: the goal is
         canceled, TIMEOUT; the chat goal is canceled: the goal is canceled, CANCELED; it
         aborts (or the server cancels it): FAILED; it succeeds: its result as JSON.
topic    a publisher per tool. No subscriber within the timeout: NOT_AVAILABLE; otherwise one
         message published: SUCCEEDED.

The tool's timeout bounds the whole call (finding the server and its answer). No exception
leaves call(): a robot's failure is an outcome the model is told about.

Threads: call() runs in the chat goal's execution thread (an executor thread of the node's
MultiThreadedExecutor) and blocks it until the call ends, waiting on a threading.Event and
never on the executor: the clients' responses, feedback and results are taken by the other
executor threads, in reentrant callback groups (the service clients share the backend's;
each action client has its own, compat.action_client's). `_lock` guards only the
client and schema caches.
"""

import json
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple
import uuid

from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.action.client import ClientGoalHandle
from rclpy.callback_groups import CallbackGroup
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.task import Future
from unique_identifier_msgs.msg import UUID

from . import compat
from .core.robot_tools import CallOutcome
from .core.robot_tools import INTERFACE_KIND
from .core.robot_tools import RobotTool
from .interface_schema import fill_message
from .interface_schema import InterfaceProblem
from .interface_schema import message_class
from .interface_schema import message_schema
from .interface_schema import message_to_data
from .interface_schema import set_fixed

# An outcome with the JSON the model is sent and the reason in words ('' when it succeeded).
CallResult = Tuple[CallOutcome, str, str]
# How often a wait looks at the chat goal's cancel flag and at a server's discovery (rclpy has
# no event for either; a response or result wakes the wait at once).
CHECK_PERIOD = 0.05
# How long a canceled or timed-out action call waits for the server to accept its cancel.
CANCEL_WAIT = 2.0
STATUS_NAMES = {value: name[len('STATUS_'):] for name, value in vars(GoalStatus).items()
                if name.startswith('STATUS_')}


class RosToolBackend:
    """Calls robot tools with rclpy on behalf of `node` (see the module docstring)."""

    def __init__(self, node: Node, callback_group: Optional[CallbackGroup] = None) -> None:
        self._node = node
        self._group = callback_group or ReentrantCallbackGroup()
        self._lock = threading.Lock()
        self._endpoints: Dict[str, Any] = {}         # tool name -> client / publisher
        self._schemas: Dict[str, Dict[str, Any]] = {}

    # ---- the protocol --------------------------------------------------------------------
    def parameters(self, tool: RobotTool) -> Dict[str, Any]:
        """The JSON Schema of the tool's arguments: its request, goal or message type's
        fields minus the fixed ones. Raises InterfaceProblem when the type cannot be used or
        a fixed value does not fill its field."""
        with self._lock:
            schema = self._schemas.get(tool.name)
        if schema is None:
            argument_class = self._argument_class(tool)
            schema = message_schema(argument_class, omit=tuple(tool.fixed))
            # A fixed value its field does not take fails the configure, rather than every
            # call as INVALID_ARGUMENTS (which the model would read as its own fault).
            set_fixed(argument_class(), tool.fixed)
            with self._lock:
                self._schemas[tool.name] = schema
        return schema

    def call(self, tool: RobotTool, arguments: Dict[str, Any], report: Callable[[str], None],
             canceled: threading.Event) -> CallResult:
        """Make one call of the tool; its outcome, whatever happens (see the module)."""
        deadline = time.monotonic() + tool.timeout
        try:
            request = fill_message(self._argument_class(tool), arguments, fixed=tool.fixed)
        except InterfaceProblem as problem:
            return CallOutcome.INVALID_ARGUMENTS, '', str(problem)
        except Exception as error:     # a value the generated class refuses (range, type)
            return CallOutcome.INVALID_ARGUMENTS, '', f'{type(error).__name__}: {error}'
        try:
            if tool.kind == 'service':
                return self._call_service(tool, request, deadline, canceled)
            if tool.kind == 'action':
                return self._call_action(tool, request, deadline, report, canceled)
            return self._publish(tool, request, deadline, canceled)
        except Exception as error:     # e.g. the context went away during the exit
            return CallOutcome.FAILED, '', f'the call failed: {type(error).__name__}: {error}'

    def close(self) -> None:
        """Destroy every client and publisher (the node cleans up or goes away)."""
        with self._lock:
            endpoints, self._endpoints = self._endpoints, {}
        for endpoint in endpoints.values():
            if isinstance(endpoint, ActionClient):
                # destroy_node would leave it (rclpy keeps waitables)
                compat.destroy_action_client(self._node, endpoint)
            elif isinstance(endpoint, Publisher):
                self._node.destroy_publisher(endpoint)
            else:
                self._node.destroy_client(endpoint)

    # ---- the kinds -----------------------------------------------------------------------
    def _call_service(self, tool: RobotTool, request: Any, deadline: float,
                      canceled: threading.Event) -> CallResult:
        client = self._endpoint(tool)
        if not _wait(client.service_is_ready, deadline, canceled):
            if canceled.is_set():
                return CallOutcome.CANCELED, '', 'canceled before the service was found'
            return (CallOutcome.NOT_AVAILABLE, '',
                    f"no server of service '{tool.ros_name}' within {tool.timeout:g} s")
        future = client.call_async(request)
        if not _wait_future(future, deadline, canceled):
            client.remove_pending_request(future)   # a late response is dropped
            future.cancel()
            if canceled.is_set():
                return CallOutcome.CANCELED, '', 'canceled while the service was called'
            return (CallOutcome.TIMEOUT, '',
                    f"service '{tool.ros_name}' did not answer within {tool.timeout:g} s")
        return CallOutcome.SUCCEEDED, json.dumps(message_to_data(future.result())), ''

    def _call_action(self, tool: RobotTool, goal: Any, deadline: float,
                     report: Callable[[str], None], canceled: threading.Event) -> CallResult:
        client: ActionClient = self._endpoint(tool)
        if not _wait(client.server_is_ready, deadline, canceled):
            if canceled.is_set():
                return CallOutcome.CANCELED, '', 'canceled before the action server was found'
            return (CallOutcome.NOT_AVAILABLE, '',
                    f"no server of action '{tool.ros_name}' within {tool.timeout:g} s")
        running = threading.Event()
        running.set()

        def on_feedback(message: Any) -> None:
            # rclpy may deliver feedback after the call ended: the chat run has moved on.
            if running.is_set():
                report(json.dumps(message_to_data(message.feedback)))

        goal_id = UUID(uuid=list(uuid.uuid4().bytes))
        sent = client.send_goal_async(goal, feedback_callback=on_feedback, goal_uuid=goal_id)
        try:
            if not _wait_future(sent, deadline, canceled):
                # The goal may still be accepted: cancel it when the response comes, and by its
                # id now, since the response may never come to this client (Humble's and
                # Jazzy's send_goal_async register the request after sending it, without a
                # lock: a response taken in between is dropped, "unexpected goal response").
                sent.add_done_callback(_cancel_if_accepted)
                action = message_class(tool.interface_type, kind='action')
                ClientGoalHandle(client, goal_id, action.Impl.SendGoalService.Response(
                    accepted=True)).cancel_goal_async()
                return _ended_early(tool, canceled, 'before the action server accepted the goal')
            handle = sent.result()
            if not handle.accepted:
                return (CallOutcome.NOT_AVAILABLE, '',
                        f"action server '{tool.ros_name}' rejected the goal")
            finished = handle.get_result_async()
            if not _wait_future(finished, deadline, canceled):
                cancel = handle.cancel_goal_async()
                accepted = (_wait_future(cancel, time.monotonic() + CANCEL_WAIT, None)
                            and len(cancel.result().goals_canceling) > 0)
                outcome, _, why = _ended_early(tool, canceled, 'while the action ran')
                return outcome, '', why + ('; the goal was canceled' if accepted else
                                           '; the server did not confirm the cancel')
            response = finished.result()
        finally:
            running.clear()
            # rclpy drops it only with a result received: not for a rejected or abandoned goal.
            compat.forget_feedback_callback(client, goal_id)
        result_json = json.dumps(message_to_data(response.result))
        if response.status == GoalStatus.STATUS_SUCCEEDED:
            return CallOutcome.SUCCEEDED, result_json, ''
        return (CallOutcome.FAILED, result_json,
                f"action '{tool.ros_name}' ended {STATUS_NAMES.get(response.status, '?')}")

    def _publish(self, tool: RobotTool, message: Any, deadline: float,
                 canceled: threading.Event) -> CallResult:
        publisher = self._endpoint(tool)
        # A message published before the publisher has discovered a subscriber reaches nobody
        # (the publisher is created at the tool's first call).
        if not _wait(lambda: publisher.get_subscription_count() > 0, deadline, canceled):
            if canceled.is_set():
                return CallOutcome.CANCELED, '', 'canceled before a subscriber was found'
            return (CallOutcome.NOT_AVAILABLE, '',
                    f"no subscriber of topic '{tool.ros_name}' within {tool.timeout:g} s")
        publisher.publish(message)
        return CallOutcome.SUCCEEDED, json.dumps({'published': True}), ''

    # ---- caches --------------------------------------------------------------------------
    def _argument_class(self, tool: RobotTool) -> Any:
        """The class the model's arguments fill: a service's Request, an action's Goal, the
        topic's message."""
        interface = message_class(tool.interface_type, kind=INTERFACE_KIND[tool.kind])
        if tool.kind == 'service':
            return interface.Request
        return interface.Goal if tool.kind == 'action' else interface

    def _endpoint(self, tool: RobotTool) -> Any:
        with self._lock:
            endpoint = self._endpoints.get(tool.name)
            if endpoint is None:
                interface = message_class(tool.interface_type, kind=INTERFACE_KIND[tool.kind])
                if tool.kind == 'service':
                    endpoint = self._node.create_client(interface, tool.ros_name,
                                                        callback_group=self._group)
                elif tool.kind == 'action':
                    # Created while the executor spins (rclpy#1589: compat).
                    endpoint = compat.action_client(self._node, interface, tool.ros_name)
                else:
                    endpoint = self._node.create_publisher(interface, tool.ros_name, 10)
                self._endpoints[tool.name] = endpoint
            return endpoint


def _wait(ready: Callable[[], bool], deadline: float, canceled: threading.Event) -> bool:
    """Wait until ready() (a server's or subscriber's discovery: rclpy offers no event for
    it), the deadline or the cancel; whether it became ready."""
    while not ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or canceled.is_set():
            return False
        canceled.wait(min(CHECK_PERIOD, remaining))
    return True


def _wait_future(future: Future, deadline: float, canceled: Optional[threading.Event]) -> bool:
    """Wait until the future is done (woken by it at once), the deadline or the cancel."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    while not done.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (canceled is not None and canceled.is_set()):
            return future.done()
        done.wait(min(CHECK_PERIOD, remaining))
    return True


def _ended_early(tool: RobotTool, canceled: threading.Event, when: str) -> CallResult:
    if canceled.is_set():
        # canceled, preempted, past its deadline or the node stopping: the goal's error_code says
        return CallOutcome.CANCELED, '', f'the chat goal stopped {when}'
    return (CallOutcome.TIMEOUT, '',
            f"action '{tool.ros_name}' did not finish within {tool.timeout:g} s ({when})")


def _cancel_if_accepted(sent: Future) -> None:
    handle = sent.result() if not sent.cancelled() and sent.exception() is None else None
    if handle is not None and handle.accepted:
        handle.cancel_goal_async()
