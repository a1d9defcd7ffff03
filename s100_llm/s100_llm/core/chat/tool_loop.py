"""The robot tools of one goal, ROS-free: what the model is offered, and what becomes of each
call it makes (RobotTools). A call the goal did not offer, arguments that do not match the
tool's schema and a call beyond the tool's max_calls are refused here; every other call goes
to the backend (or is only planned, on dry_run). Each call ends as a RobotCall entry (in the
Result, as feedback, in the log) and as the tool message the model reads next; nothing a call
does raises.
"""

import json
import threading
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ..robot_tools import CallOutcome
from ..robot_tools import RobotCall
from ..robot_tools import RobotToolbox
from ..schema import document_problem

Message = Dict[str, Any]
ModelCall = Tuple[str, Dict[str, Any]]      # (name, arguments), as the model asked
CallSink = Callable[[Sequence[RobotCall]], None]
# An action's feedback goes out at most this often per call (or every feedback_min_interval,
# if longer): the latest is what matters, and a fast action server must not flood the client.
PROGRESS_MIN_INTERVAL = 0.2
# The longest result sent to the model (and put in the Result): a response such as a map or an
# image as JSON would fill the model's context (4096 tokens by default: some 16,000 characters)
# and the goal's messages.
MAX_RESULT_CHARS = 16000


class RobotTools:
    """The robot tools a goal offers (names from the node's toolbox), its calls so far."""

    def __init__(self, toolbox: RobotToolbox, names: Sequence[str], send: CallSink,
                 log: Callable[[str], None], progress_interval: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.toolbox = toolbox
        self.names = list(names)
        self.send = send
        self.log = log
        self.progress_interval = max(progress_interval, PROGRESS_MIN_INTERVAL)
        self.clock = clock
        self.calls: List[RobotCall] = []    # every call the model asked for, in order
        self.steps = 0      # model turns whose robot calls were executed
        self._executed: Dict[str, int] = {}

    def offers(self) -> List[Dict[str, Any]]:
        """The tools as Ollama's function definitions."""
        return [self.toolbox.offer(name) for name in self.names]

    def refusal(self, name: str, arguments: Dict[str, Any]) -> Tuple[CallOutcome, str]:
        """Why the call is not executed (outcome, message), or (SUCCEEDED, '') when it may
        be."""
        if name not in self.names:
            return CallOutcome.UNKNOWN_TOOL, (
                f"no tool '{name[:70]}' was offered (offered: {', '.join(self.names)})")
        problem = document_problem(self.toolbox.schemas[name], arguments)
        if problem:
            return CallOutcome.INVALID_ARGUMENTS, problem.replace(
                'the answer does not match the format schema', 'the arguments do not match '
                "the tool's parameters").replace('the answer', 'the arguments')
        limit = self.toolbox.tools[name].max_calls
        if limit and self._executed.get(name, 0) >= limit:
            return CallOutcome.LIMIT, f"'{name}' may be called {limit} time(s) per goal"
        return CallOutcome.SUCCEEDED, ''

    def plan(self, step: int, calls: Sequence[ModelCall]) -> None:
        """dry_run: list the calls (PLANNED, or why they would not run); execute nothing."""
        for name, arguments in calls:
            outcome, message = self.refusal(name, arguments)
            self._end(RobotCall(step, name, _json(arguments), CallOutcome.PLANNED
                                if outcome == CallOutcome.SUCCEEDED else outcome,
                                message=message))

    def refuse(self, step: int, calls: Sequence[ModelCall], message: str) -> None:
        """List calls that are not executed because the goal ends (LIMIT, with message)."""
        for name, arguments in calls:
            self._end(RobotCall(step, name, _json(arguments), CallOutcome.LIMIT,
                                message=message))

    def execute(self, step: int, calls: Sequence[ModelCall],
                canceled: threading.Event) -> List[Message]:
        """Run the calls in order; returns the tool messages that answer them. Stops after a
        call during which `canceled` was set (the calls after it are not listed)."""
        results = []
        for name, arguments in calls:
            entry = self._call(step, name, arguments, canceled)
            results.append({'role': 'tool', 'tool_name': name, 'content': (
                entry.result_json if entry.outcome == CallOutcome.SUCCEEDED
                else f'{entry.outcome.name}: {entry.message}')})
            if canceled.is_set():
                break
        return results

    def _call(self, step: int, name: str, arguments: Dict[str, Any],
              canceled: threading.Event) -> RobotCall:
        arguments_json = _json(arguments)
        outcome, message = self.refusal(name, arguments)
        if outcome != CallOutcome.SUCCEEDED:
            return self._end(RobotCall(step, name, arguments_json, outcome, message=message))
        tool = self.toolbox.tools[name]
        self._executed[name] = self._executed.get(name, 0) + 1
        self.send([RobotCall(step, name, arguments_json, CallOutcome.STARTED)])
        progress = _Progress(self, step, name, arguments_json)
        started = self.clock()
        try:
            outcome, result_json, message = self.toolbox.backend.call(
                tool, arguments, progress.report, canceled)
        except Exception as error:  # a defect of the backend: the call failed, the goal goes on
            outcome, result_json, message = (CallOutcome.FAILED, '',
                                             f'the call raised {type(error).__name__}: {error}')
        finally:
            progress.close()
        if outcome == CallOutcome.SUCCEEDED and len(result_json) > MAX_RESULT_CHARS:
            outcome, message = CallOutcome.FAILED, (
                f'the result has {len(result_json)} characters, more than the '
                f'{MAX_RESULT_CHARS} a tool result may have: it is not sent to the model')
            result_json = ''
        return self._end(RobotCall(step, name, arguments_json, CallOutcome(outcome),
                                   result_json, message, self.clock() - started))

    def _end(self, entry: RobotCall) -> RobotCall:
        self.calls.append(entry)
        self.send([entry])
        self.log(f"robot tool '{entry.name}' (step {entry.step}): {entry.outcome.name} in "
                 f'{entry.duration:.3f} s' + (f': {entry.message}' if entry.message else ''))
        return entry


class _Progress:
    """An action's feedback as PROGRESS entries: at most one per interval. Feedback that comes
    sooner is held, the latest replacing the one before, and goes out with the next that is
    due or when the call ends (before its end entry): the latest feedback is never lost."""

    def __init__(self, tools: RobotTools, step: int, name: str, arguments_json: str) -> None:
        self.tools = tools
        self.entry = (step, name, arguments_json)
        self._lock = threading.Lock()
        self._last = float('-inf')
        self._held = ''
        self._open = True

    def report(self, feedback_json: str) -> None:
        with self._lock:
            if not self._open:      # a late callback: the call has ended
                return
            now = self.tools.clock()
            if now - self._last < self.tools.progress_interval:
                self._held = feedback_json
                return
            self._last, self._held = now, ''
            self._send(feedback_json)

    def close(self) -> None:
        with self._lock:
            self._open = False
            if self._held:
                self._send(self._held)

    def _send(self, feedback_json: str) -> None:
        message = ''
        if len(feedback_json) > MAX_RESULT_CHARS:   # published to every client of the goal
            feedback_json, message = '', (
                f'the feedback has {len(feedback_json)} characters, more than the '
                f'{MAX_RESULT_CHARS} a tool result may have: it is not sent')
        self.tools.send([RobotCall(*self.entry, CallOutcome.PROGRESS, feedback_json,
                                   message)])


def assistant_message(text: str, calls: Sequence[ModelCall]) -> Message:
    """The model's turn that made calls, as Ollama expects it back before their results."""
    return {'role': 'assistant', 'content': text,
            'tool_calls': [{'function': {'name': name, 'arguments': arguments}}
                           for name, arguments in calls]}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
