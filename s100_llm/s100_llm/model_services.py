"""The robot's models over ROS: `~/list_models`, `~/delete_model` (services) and `~/pull_model`
(action), so that an operator can prepare the next model while the robot charges.

Created with the node, so `ros2 service list` and `ros2 action list` show them in every state;
they are served while an Ollama server runs (inactive and active, during chats too) and answer
NOT_SERVING with the reason otherwise. What they do is core/models.py's (list, delete, pull,
import, the storage guard, the removal of what a canceled pull wrote); this module maps
requests, goals and outcomes to the messages, refuses to delete what the node serves, and keeps
one pull at a time; the rules are core/model_requests.py's.

Threads: the two services share a callback group of their own (each answer is bounded by the
engine's request timeout, load_timeout, and never waits for a chat, a transition or a pull);
a pull runs in the executor thread that executes its goal, for as long as it takes (minutes),
in a reentrant group so that its cancel request is taken while it runs. The node's cleanup,
shutdown and exit call abort(): the running pull stops (what it wrote is removed) before the
server goes away.
"""

import os
import threading
import time
import traceback
from typing import Optional, Tuple, TYPE_CHECKING, TypeVar, Union

from rclpy.action import CancelResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.callback_groups import ReentrantCallbackGroup
from s100_llm_msgs.action import PullModel
from s100_llm_msgs.msg import ModelInfo
from s100_llm_msgs.srv import DeleteModel
from s100_llm_msgs.srv import ListModels

from . import guard
from .compat import CancelHookActionServer
from .compat import execute_goal
from .core import models
from .core.engine import EngineError
from .core.model_requests import in_use_reason
from .core.model_requests import not_serving_reason
from .core.model_requests import ProgressThrottle
from .core.model_requests import pull_error
from .core.model_requests import replace_reason
from .core.model_requests import served_as
from .core.models import ModelProblem
from .qos import FEEDBACK_QOS
from .qos import SERVICE_QOS

if TYPE_CHECKING:
    from .node import LlmNode

Response = TypeVar('Response', bound=Union[ListModels.Response, DeleteModel.Response])
# How long abort() waits for the running pull to end: it closes its stream at once, then
# removes what the pull wrote (core/models.py waits up to 5 s for Ollama to let go of it).
ABORT_WAIT = 10.0

# How a pull's failure (core/model_requests.py's pull_error) is told in the result.
PULL_CODES = {'invalid': PullModel.Result.INVALID_GOAL, 'refused': PullModel.Result.REFUSED,
              'server': PullModel.Result.SERVER_FAILED, 'no_space': PullModel.Result.NO_SPACE,
              'canceled': PullModel.Result.CANCELED}


def pull_error_code(problem: ModelProblem) -> int:
    return PULL_CODES[pull_error(problem)]


class ModelServices:
    """~/list_models, ~/delete_model and ~/pull_model, served from the node's serving state."""

    def __init__(self, node: 'LlmNode') -> None:
        self.node = node
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        # The running pull: its model ('' when none runs), goal and stop event (set by a
        # cancel or by abort(), whose reason is kept).
        self._pulling = ''
        self._handle: Optional[ServerGoalHandle] = None
        self._stop = threading.Event()
        self._abort_reason = ''
        group = MutuallyExclusiveCallbackGroup()
        node.create_service(ListModels, '~/list_models',
                            guard.service(node, '~/list_models', self._list, _list_error,
                                          check_answer=True),
                            qos_profile=SERVICE_QOS, callback_group=group)
        node.create_service(DeleteModel, '~/delete_model',
                            guard.service(node, '~/delete_model', self._delete, _delete_error),
                            qos_profile=SERVICE_QOS, callback_group=group)
        # A cancel takes effect in after_cancel (compat.py), once the goal is CANCELING, so
        # that the pull it stops ends as canceled; execute_goal runs a goal canceled between
        # its acceptance and its execution (rclpy would raise).
        self._action = CancelHookActionServer(
            node, PullModel, '~/pull_model', execute_callback=self._execute,
            cancel_callback=lambda handle: CancelResponse.ACCEPT,
            after_cancel=self._after_cancel, handle_accepted_callback=execute_goal,
            callback_group=ReentrantCallbackGroup(), feedback_pub_qos_profile=FEEDBACK_QOS,
            goal_service_qos_profile=SERVICE_QOS, cancel_service_qos_profile=SERVICE_QOS,
            result_service_qos_profile=SERVICE_QOS)

    # ---- services ------------------------------------------------------------------------
    def _list(self, request: ListModels.Request,
              response: ListModels.Response) -> ListModels.Response:
        state = self.node.serving_state()
        reason = not_serving_reason(state)
        if reason:
            return self._refused(response, ListModels.Response.NOT_SERVING, reason, 'list')
        assert state.engine is not None
        try:
            entries = models.list_models(state.engine)
            response.total_size = models.models_size(state.models_dir)
            response.free_space = models.free_space(state.models_dir)
        except (ModelProblem, EngineError) as error:
            return self._failed(response, ListModels.Response.SERVER_FAILED, str(error), 'list')
        response.models = [ModelInfo(
            name=entry.name, digest=entry.digest, size=entry.size, family=entry.family,
            parameter_size=entry.parameter_size, quantization=entry.quantization,
            capabilities=list(entry.capabilities), loaded=entry.loaded,
            served=bool(served_as(entry.name, state)),
            embedding=served_as(entry.name, state) == 'embedding_model') for entry in entries]
        return response

    def _delete(self, request: DeleteModel.Request,
                response: DeleteModel.Response) -> DeleteModel.Response:
        name = request.name.strip()
        state = self.node.serving_state()
        reason = not_serving_reason(state)
        if reason:
            return self._refused(response, DeleteModel.Response.NOT_SERVING, reason, 'delete')
        if not name:
            return self._refused(response, DeleteModel.Response.INVALID_REQUEST,
                                 'name is empty: give the model to delete', 'delete')
        reason = in_use_reason(name, state)
        if reason:
            return self._refused(response, DeleteModel.Response.IN_USE, reason, 'delete')
        assert state.engine is not None
        try:
            response.freed = models.delete_model(state.engine, name)
        except ModelProblem as error:
            if error.code == 'invalid':     # no such model
                return self._refused(response, DeleteModel.Response.INVALID_REQUEST,
                                     str(error), 'delete')
            return self._failed(response, DeleteModel.Response.SERVER_FAILED, str(error),
                                'delete')
        except EngineError as error:
            return self._failed(response, DeleteModel.Response.SERVER_FAILED, str(error),
                                'delete')
        self.node.get_logger().info(f"deleted model '{name}': {response.freed} bytes freed")
        return response

    def _refused(self, response: Response, code: int, reason: str, what: str) -> Response:
        self.node.get_logger().warning(f'{what} model request refused: {reason}')
        response.error_code, response.error_message = code, reason
        return response

    def _failed(self, response: Response, code: int, reason: str, what: str) -> Response:
        """A request that failed: NOT_SERVING when the server went away meanwhile (a cleanup),
        else `code`."""
        now = not_serving_reason(self.node.serving_state())
        if now:
            code, reason = response.NOT_SERVING, f'{now} ({reason})'
        self.node.get_logger().error(f'{what} model request failed: {reason}')
        response.error_code, response.error_message = code, reason
        return response

    # ---- pull ----------------------------------------------------------------------------
    def _execute(self, handle: ServerGoalHandle) -> PullModel.Result:
        started = time.monotonic()
        goal: PullModel.Goal = handle.request
        result = PullModel.Result(model=goal.model)
        stop = threading.Event()
        with self._lock:
            busy = self._pulling
            if not busy:
                self._pulling, self._handle, self._stop = goal.model.strip() or '?', handle, stop
                self._abort_reason = ''
                if handle.is_cancel_requested:  # canceled before it ran
                    stop.set()
        if busy:
            # A second transfer would share the disk and the storage guard's free space with
            # the first: refused, with what to do.
            code, reason = (PullModel.Result.INVALID_GOAL,
                            f"a pull of '{busy}' is running (one at a time): send this goal "
                            'again when it has ended')
        else:
            try:
                code, reason = self._pull(handle, goal, result, stop)
            except Exception as error:     # a defect: the goal ends, the node carries on
                cause = f'internal error: {type(error).__name__}: {error}'
                self.node.get_logger().error(f'pull_model: {cause}\n{traceback.format_exc()}')
                code, reason = PullModel.Result.UNKNOWN, cause
            finally:
                with self._lock:
                    self._pulling, self._handle = '', None
                    self._ended.notify_all()
        result.error_code, result.error_message = code, reason
        result.duration = time.monotonic() - started
        if code == PullModel.Result.NONE:
            handle.succeed()
        elif code == PullModel.Result.CANCELED and handle.is_cancel_requested:
            handle.canceled()
        else:
            handle.abort()
        return result

    def _pull(self, handle: ServerGoalHandle, goal: PullModel.Goal, result: PullModel.Result,
              stop: threading.Event) -> Tuple[int, str]:
        """Run one pull or import until it ends or `stop` is set; (error code, reason), the
        result's other fields filled."""
        log = self.node.get_logger()
        state = self.node.serving_state()
        reason = not_serving_reason(state)
        if reason:
            log.warning(f'pull_model goal refused: {reason}')
            return PullModel.Result.NOT_SERVING, reason
        name = goal.model.strip()
        if not name:
            return PullModel.Result.INVALID_GOAL, 'model is empty: give the name to store it as'
        if goal.quantize and not goal.source:
            return (PullModel.Result.INVALID_GOAL,
                    'quantize needs a source (local F16/F32 weights): a registry model is '
                    'stored as published')
        if goal.source and not os.path.isabs(os.path.expanduser(goal.source)):
            return (PullModel.Result.INVALID_GOAL,
                    f"source '{goal.source}' is a relative path: give it absolute (a path on the "
                    "node's machine; the node's working directory is not the caller's)")
        reason = replace_reason(name, state)
        if reason:
            log.warning(f'pull_model goal refused: {reason}')
            return PullModel.Result.INVALID_GOAL, reason
        what = f"import '{goal.source}' as '{name}'" if goal.source else f"pull '{name}'"
        if goal.quantize:
            what += f' quantized to {goal.quantize}'
        log.info(f'pull_model: {what}')
        feedback = Feedback(handle)
        assert state.engine is not None
        try:
            if goal.source:
                entry = models.import_model(state.engine, name, goal.source, goal.quantize,
                                            state.models_dir, feedback.send, stop)
            else:
                entry = models.pull_model(state.engine, name, state.models_dir, feedback.send,
                                          stop)
        except ModelProblem as problem:
            code, message = pull_error_code(problem), str(problem)
        except EngineError as error:
            code, message = PullModel.Result.SERVER_FAILED, str(error)
        else:
            result.model, result.digest, result.size = entry.name, entry.digest, entry.size
            log.info(f'pull_model: {what}: done, {entry.size} bytes in '
                     f'{time.monotonic() - feedback.started:.1f} s')
            return PullModel.Result.NONE, ''
        now = not_serving_reason(self.node.serving_state())
        if stop.is_set() and not handle.is_cancel_requested:    # abort(): the node stops
            code, message = PullModel.Result.NOT_SERVING, self._abort_reason or message
        elif code == PullModel.Result.SERVER_FAILED and now:
            code, message = PullModel.Result.NOT_SERVING, f'{now} ({message})'
        if code == PullModel.Result.CANCELED:
            log.info(f'pull_model: {what}: canceled, what it wrote is removed')
        else:
            log.error(f'pull_model: {what} failed: {message}')
        return code, message

    def _after_cancel(self) -> None:
        """A cancel request was handled (its goal is CANCELING now): stop the running pull if
        it was the one canceled."""
        with self._lock:
            if self._handle is not None and self._handle.is_cancel_requested:
                self._stop.set()

    def abort(self, reason: str, wait: float = ABORT_WAIT) -> None:
        """Stop the running pull (its goal ends NOT_SERVING with `reason`; what it wrote is
        removed), waiting at most `wait` seconds for it to end: before the server stops."""
        with self._lock:
            if self._pulling:
                self._abort_reason = reason
                self._stop.set()
            self._ended.wait_for(lambda: not self._pulling, timeout=wait)


class Feedback:
    """A pull's progress as feedback, throttled (core/model_requests.py)."""

    def __init__(self, handle: ServerGoalHandle) -> None:
        self.handle = handle
        self.started = time.monotonic()
        self._throttle = ProgressThrottle()

    def send(self, status: str, completed: int, total: int) -> None:
        if self._throttle.due(status, completed, total):
            self.handle.publish_feedback(PullModel.Feedback(status=status, completed=completed,
                                                            total=total))


def _list_error(response: ListModels.Response, cause: str) -> None:
    response.error_code = ListModels.Response.UNKNOWN
    response.error_message = cause


def _delete_error(response: DeleteModel.Response, cause: str) -> None:
    response.error_code = DeleteModel.Response.UNKNOWN
    response.error_message = cause
