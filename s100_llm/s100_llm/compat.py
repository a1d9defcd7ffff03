"""The one home of rclpy internals and of the differences between ROS 2 distros.

Every use of an rclpy name starting with `_` (a private attribute, the C extension behind
`rclpy.impl.implementation_singleton`) and every behaviour that differs between Humble, Jazzy
and Kilted lives here, each with the upstream issue or code it works around and the distros it
concerns. The rest of the package imports only public rclpy (test_compat.py checks it).

Each workaround has a contract test in test/integration/test_compat.py that fails when the
installed rclpy no longer behaves as assumed here (the private name is gone or changed, or
the bug was fixed): then this module is the one place to change.
"""

import threading
import time
from typing import Any, Callable, List, Tuple

from rclpy.action import ActionClient
from rclpy.action import ActionServer
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import Executor
# The C extension (rclpy._rclpy_pybind11): the only way to name the exception it raises.
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node

# What rcl failures raise (Humble, Jazzy, Kilted): defined in the C extension, with no public
# name (ros2/rclpy#478 added it; rclpy's own modules alias it the same way).
RCLError = _rclpy.RCLError

# A change_state service callback: (request, response) -> response.
ChangeStateHandler = Callable[[Any, Any], Any]


# ---- lifecycle -----------------------------------------------------------------------------
def own_change_state(node: LifecycleNode,
                     wrap: Callable[[ChangeStateHandler, Any, Any], Any]) -> None:
    """Give the node's change_state service a callback group of its own, and route its
    requests through wrap(rclpy's handler, request, response).

    Humble, Jazzy, Kilted: rclpy creates the five lifecycle services in one mutually exclusive
    group (the node's default group; Kilted's LifecycleNode takes a `callback_group` argument,
    still one group for all five), so get_state waits for a whole transition.
    No public API reaches the service: `_service_change_state` is rclpy's attribute.
    The wrap is how the node refuses a transition not valid in the current state before rclpy
    sees it: on Humble and Jazzy rclpy raises RCLError out of the service callback for it, which
    ends the executor (ros2/rclpy#1209, fixed for Kilted by ros2/rclpy#1319).
    """
    service = node._service_change_state
    group = MutuallyExclusiveCallbackGroup()
    service.callback_group = group
    group.add_entity(service)
    handle_request = service.callback
    service.callback = lambda request, response: wrap(handle_request, request, response)


def lifecycle_state(node: LifecycleNode) -> str:
    """The node's current lifecycle state label ('unconfigured', 'configuring', ...).

    Humble, Jazzy, Kilted: LifecycleNode has no public getter; rclpy's own get_state service
    reads `_state_machine.current_state`, an (id, label) pair.
    """
    return node._state_machine.current_state[1]


def available_transitions(node: LifecycleNode) -> List[Tuple[int, str]]:
    """The (id, label) of each transition valid in the node's current state.

    Humble, Jazzy, Kilted: no public getter; rclpy's get_available_transitions service reads
    `_state_machine.available_transitions` (tuples starting with the transition's id, label).
    """
    return [(t[0], t[1]) for t in node._state_machine.available_transitions]


# ---- actions -------------------------------------------------------------------------------
def execute_goal(handle: ServerGoalHandle) -> None:
    """handle.execute(), also when a cancel marks the goal CANCELING in between.

    Humble, Jazzy, Kilted: ServerGoalHandle.execute() checks is_cancel_requested and then
    applies the EXECUTE event without holding the handle's lock (rclpy/action/server.py), so a
    cancel accepted on another thread in between makes rcl_action refuse the event (RCLError
    "invalid transition from state CANCELING with event EXECUTE", the rclpy side of
    ros2/rclpy#790). Called again, it sees the cancel and runs the goal as canceled.
    """
    try:
        handle.execute()
    except RCLError:
        if not handle.is_cancel_requested:
            raise
        handle.execute()


class CancelHookActionServer(ActionServer):
    """rclpy's ActionServer, calling after_cancel() once it has handled a cancel request.

    Humble, Jazzy, Kilted: rclpy marks a goal CANCELING only after the cancel callback
    returned ACCEPT (rcl_action leaves the transition to the client library, ros2/rcl#341), and
    a goal can end as canceled only from CANCELING; so what a cancel does to a goal waits for
    this hook. It overrides Waitable.execute(taken_data), where a cancel request arrives under
    the 'cancel' key of rclpy's private taken-data dict.
    """

    def __init__(self, *args: Any, after_cancel: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_cancel = after_cancel

    async def execute(self, taken_data: Any) -> None:
        await super().execute(taken_data)
        if 'cancel' in taken_data:
            self.after_cancel()


class _Gate(ReentrantCallbackGroup):
    """A reentrant group whose entities an executor takes in its wait set only while open
    (executors list a node's waitables through can_execute)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = False
        self.passed = threading.Event()     # an executor asked after it closed

    def can_execute(self, entity: Any) -> bool:
        if not self.open:
            self.passed.set()
            return False
        return super().can_execute(entity)


# How long destroy_action_client waits for the executor's next wait set.
GATE_WAIT = 1.0


def action_client(node: Node, action_type: Any, name: str) -> ActionClient:
    """An ActionClient created while the node's executor spins, which the executor takes only
    once it is whole.

    Humble, Jazzy, Kilted: ActionClient.__init__ adds itself to the node (waking the executor)
    before it sets the `_lock` its wait-set methods take, so the executor's next pass may raise
    AttributeError out of spin, which ends the node (ros2/rclpy#1589). Its own group keeps it
    out of the executor's passes until the constructor has returned.
    """
    gate = _Gate()
    client = ActionClient(node, action_type, name, callback_group=gate)
    gate.open = True
    return client


def destroy_action_client(node: Node, client: ActionClient) -> None:
    """Destroy an action_client() while the node's executor spins.

    Humble, Jazzy, Kilted: an executor that listed the node's waitables just before the client
    was destroyed still adds it to its wait set (it skips the client's InvalidHandle when
    entering it, then calls add_to_wait_set anyway): RCLError "action client pointer is
    invalid" out of spin. So the client is first left out of the executor's passes, and
    destroyed once the executor has begun a pass without it (or GATE_WAIT passed: no executor
    spins the node).
    """
    gate = client.callback_group
    if isinstance(gate, _Gate):
        gate.open = False
        gate.passed.clear()
        if node.executor is not None:
            node.executor.wake()
        gate.passed.wait(GATE_WAIT)
    client.destroy()


def forget_feedback_callback(client: ActionClient, goal_id: Any) -> None:
    """Drop the feedback callback send_goal_async registered for the goal (a UUID message).

    Humble, Jazzy, Kilted: ActionClient keeps it in `_feedback_callbacks` (goal id bytes ->
    callback) until the goal's result is received; a goal rejected, never answered, or whose
    result is not waited for keeps it (and what the callback holds) for the client's life.
    """
    client._feedback_callbacks.pop(bytes(goal_id.uuid), None)


# ---- executors -----------------------------------------------------------------------------
def wait_until_idle(executor: Executor, timeout: float) -> bool:
    """Wait until the executor has run every task it was given (a goal's result is sent by a
    task of the executor's, after the goal's execution ended), at most timeout seconds.

    Humble, Jazzy, Kilted: rclpy has no public way to ask; `Executor._tasks` (a list of
    (task, entity, node) tuples) holds each task until the executor's next pass after it is
    done. Without it (a later rclpy) this returns at once: the exit only loses its drain.
    """
    deadline = time.monotonic() + timeout
    while any(not task.done() for task, *_ in list(getattr(executor, '_tasks', []))):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
