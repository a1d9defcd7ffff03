"""What goes to Ollama and what comes back, ROS-free: the goal's options, tools and format in
Ollama's terms; a leading <think> block split from the answer (ThinkTagSplitter); streamed
text batched into feedback messages (FeedbackBatch).
"""

import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .request import ChatRequest
from .request import FORMAT_JSON
from .request import THINK_DEFAULT
from .request import THINK_LEVELS
from .request import THINK_OFF
from ..config import ChatSettings
from ..robot_tools import RobotCall


def ollama_options(request: ChatRequest, settings: ChatSettings) -> Dict[str, Any]:
    """Ollama's `options`: what the goal sets (the model's defaults for the rest), and
    num_predict always, capped by max_tokens_limit."""
    options: Dict[str, Any] = {'num_predict': request.max_tokens or settings.max_tokens_limit}
    if request.temperature >= 0:
        options['temperature'] = request.temperature
    if request.top_p >= 0:
        options['top_p'] = request.top_p
    if request.top_k > 0:
        options['top_k'] = request.top_k
    if request.seed >= 0:
        options['seed'] = request.seed
    if request.stop:
        options['stop'] = list(request.stop)
    return options


def ollama_think(think: int) -> Union[None, bool, str]:
    """Ollama's `think` for the goal's think field: None (the model decides), a bool, or a
    level ('low' .. 'max')."""
    if think == THINK_DEFAULT:
        return None
    return THINK_LEVELS.get(think, think != THINK_OFF)


def ollama_tools(tools: List[Dict[str, str]]) -> List[Dict[str, Any]]:
    """The goal's tools as Ollama's `tools` (function definitions)."""
    return [{'type': 'function',
             'function': {'name': tool['name'], 'description': tool['description'],
                          'parameters': (json.loads(tool['parameters_json'])
                                         if tool['parameters_json']
                                         else {'type': 'object', 'properties': {}})}}
            for tool in tools]


def output_format(text: str) -> Any:
    """Ollama's `format` for the goal's format field: None, 'json' or the schema (a dict).
    The field must have passed check_format()."""
    if text in ('', FORMAT_JSON):
        return text or None
    return json.loads(text)


class ThinkTagSplitter:
    """Moves a <think>...</think> block that opens the answer into the reasoning.

    Ollama separates reasoning itself when `think` is set; older servers, and models whose
    template it does not know, stream the reasoning inline, as reasoning models emit it: one
    block at the very start of the answer (after white space at most). Only that block is
    taken, and only for a model that thinks (`enabled`); "<think>" anywhere else, or from any
    other model, is answer text. Tags may be split across chunks.
    """

    OPEN, CLOSE = '<think>', '</think>'
    START, INSIDE, ANSWER = 'start', 'inside', 'answer'

    def __init__(self, enabled: bool = True) -> None:
        self.state = self.START if enabled else self.ANSWER
        self.pending = ''

    def feed(self, text: str) -> Tuple[str, str]:
        """(answer, thinking) parts of text that are certain; a possible tag is held back."""
        if self.state == self.ANSWER:
            return text, ''
        self.pending += text
        if self.state == self.START:
            opening = self.pending.lstrip()
            if self.OPEN.startswith(opening):       # white space or part of the tag so far
                return '', ''
            if not opening.startswith(self.OPEN):   # the answer starts without reasoning
                self.state = self.ANSWER
                answer, self.pending = self.pending, ''
                return answer, ''
            self.state = self.INSIDE
            self.pending = opening[len(self.OPEN):]
        index = self.pending.find(self.CLOSE)
        if index >= 0:
            thinking, answer = self.pending[:index], self.pending[index + len(self.CLOSE):]
            self.state, self.pending = self.ANSWER, ''
            return answer, thinking
        keep = _partial_suffix(self.pending, self.CLOSE)
        thinking, self.pending = (self.pending[:len(self.pending) - keep],
                                  self.pending[len(self.pending) - keep:])
        return '', thinking

    def flush(self) -> Tuple[str, str]:
        """(answer, thinking): what is held back, at the end of the stream."""
        rest, self.pending = self.pending, ''
        return ('', rest) if self.state == self.INSIDE else (rest, '')


def _partial_suffix(text: str, tag: str) -> int:
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


# (seq, delta, thinking_delta, robot_calls)
FeedbackSink = Callable[[int, str, str, Sequence[RobotCall]], None]


class FeedbackBatch:
    """Turns streamed text into feedback messages, at most one per `min_interval` seconds.

    Text that arrives after a quiet interval goes out at once, so the first token and a slow
    model's tokens are never delayed. Text that follows a message within the interval is held
    and joins the next one, which is due at most `min_interval` after the last: the caller
    flushes when due_in() says so, even if the model has paused. No text is ever dropped;
    min_interval 0 sends one message per piece of text. Robot call entries go out at once,
    with the text held (send_calls); they may come from another thread (an action's feedback),
    so publishing is serialized.
    """

    def __init__(self, min_interval: float, publish: FeedbackSink,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = min_interval
        self.publish = publish
        self.clock = clock
        self.sent = 0                   # messages published, also the next message's seq
        self._answer = ''
        self._thinking = ''
        self._last_sent: Optional[float] = None
        self._lock = threading.Lock()

    def add(self, answer: str, thinking: str) -> None:
        with self._lock:
            self._answer += answer
            self._thinking += thinking
        if self.due_in() == 0.0:
            self.flush()

    def due_in(self) -> Optional[float]:
        """Seconds until the held text must go out; None when nothing is held."""
        if not (self._answer or self._thinking):
            return None
        if self._last_sent is None:
            return 0.0
        return max(0.0, self._last_sent + self.min_interval - self.clock())

    def flush(self) -> None:
        """Publish the held text now, if any."""
        self._send(())

    def send_calls(self, calls: Sequence[RobotCall]) -> None:
        """Publish robot call entries now, with the held text. Any thread."""
        self._send(calls)

    def _send(self, calls: Sequence[RobotCall]) -> None:
        with self._lock:
            if not (calls or self._answer or self._thinking):
                return
            self.publish(self.sent, self._answer, self._thinking, calls)
            self.sent += 1
            self._answer = self._thinking = ''
            self._last_sent = self.clock()
