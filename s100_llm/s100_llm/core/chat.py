"""One chat turn, ROS-free: goal validation, the Ollama request, streaming with coalescing,
reasoning kept apart from the answer, cancellation, the generation statistics, structured
output (the goal's format, checked against the final text) and tool calls.
"""

import dataclasses
import enum
import json
import math
import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
import uuid

from .config import ChatSettings
from .config import VisionSettings
from .engine import ChatCanceled
from .engine import ChatChunk
from .engine import ChatStream
from .engine import EngineError
from .engine import OllamaEngine
from .engine import StreamTimeout
from .images import AnyImage
from .images import CompressedImage
from .images import ImageProblem
from .images import prepare as prepare_image
from .images import problem as image_problem
from .images import RawImage
from .schema import DEPTH_NOTE
from .schema import document_problem
from .schema import schema_problem
from .sessions import context_budget
from .sessions import SessionStore

# The values of Chat.Goal.think, Chat.Result.done_reason and Chat.Result.error_code, defined by
# s100_llm_msgs/action/Chat.action; the core is ROS-free, so test_chat_logic ties these to it.
THINK_DEFAULT, THINK_ON, THINK_OFF = 0, 1, 2
DONE_STOP, DONE_LENGTH, DONE_CANCELED, DONE_ERROR = 'stop', 'length', 'canceled', 'error'
DONE_TOOL_CALLS = 'tool_calls'
FORMAT_JSON = 'json'


class ErrorCode(enum.IntEnum):
    """Why a goal was not served (Chat.Result.error_code; see Chat.action for each meaning)."""

    NONE = 0
    UNKNOWN = 1
    NOT_SERVING = 2
    INVALID_GOAL = 3
    QUEUE_FULL = 4
    PREEMPTED = 5
    CANCELED = 6
    SERVER_FAILED = 7
    TIMEOUT = 8
    FORMAT_MISMATCH = 9
    NO_IMAGE = 10


ROLES = ('system', 'user', 'assistant')
# Limits of the goal fields that max_prompt_chars does not cover: every field of a goal is
# bounded, so what the node holds per goal (and in a session) is bounded whatever clients send.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256            # per stop string
MAX_SESSION_ID_CHARS = 128
MAX_CONTEXT_MESSAGES = 1000     # context[] entries (their text counts in max_prompt_chars)
MAX_TOOLS = 64                  # tools[] and tool_results[] entries (their text counts too)
# Ollama's function names (and what OpenAI-style tool parsers accept).
TOOL_NAME = re.compile(r'[A-Za-z0-9_-]{1,64}')


@dataclasses.dataclass
class ChatRequest:
    """The fields of a Chat goal, as plain Python values."""

    prompt: str
    system_prompt: str = ''
    session_id: str = ''
    reset_session: bool = False
    context: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    think: int = THINK_DEFAULT
    temperature: float = -1.0
    top_p: float = -1.0
    top_k: int = -1
    max_tokens: int = 0
    seed: int = -1
    stop: List[str] = dataclasses.field(default_factory=list)
    # '' (free text), 'json', or a JSON Schema document (JSON text).
    output_format: str = ''     # Chat.Goal.format
    # {'name', 'description', 'parameters_json'} each.
    tools: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    # {'tool_call_id', 'name', 'content'} each.
    tool_results: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    images: List[RawImage] = dataclasses.field(default_factory=list)
    compressed_images: List[CompressedImage] = dataclasses.field(default_factory=list)
    use_camera: bool = False
    # The camera frame a use_camera goal sees, taken by the node when it accepted the goal, and
    # what to call it in a reason (e.g. 'the camera frame from /camera/image_raw').
    camera_image: Optional[AnyImage] = None
    camera_name: str = 'the camera frame'

    @property
    def image_count(self) -> int:
        """The images the goal shows the model (the camera frame included)."""
        return len(self.images) + len(self.compressed_images) + int(self.use_camera)

    def named_images(self) -> List[Tuple[str, AnyImage]]:
        """(name for reasons, image), in the order the model sees them."""
        named: List[Tuple[str, AnyImage]] = [
            (f'images[{index}]', image) for index, image in enumerate(self.images)]
        named += [(f'compressed_images[{index}]', image)
                  for index, image in enumerate(self.compressed_images)]
        if self.camera_image is not None:
            named.append((self.camera_name, self.camera_image))
        return named


def image_note(count: int) -> str:
    """What a session stores in place of a turn's images (it never stores the images)."""
    return f"[{count} image{'s were' if count > 1 else ' was'} shown]"


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A call the model asked for; id is the node's (Ollama's client drops Ollama's own)."""

    call_id: str    # ToolCall.id
    name: str
    arguments_json: str


@dataclasses.dataclass
class ChatOutcome:
    text: str = ''
    thinking: str = ''
    done_reason: str = DONE_ERROR   # one of DONE_*
    error_code: ErrorCode = ErrorCode.UNKNOWN
    error_message: str = ''
    session_turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float = 0.0
    tokens_per_second: float = 0.0
    total_duration: float = 0.0
    load_duration: float = 0.0
    prompt_eval_duration: float = 0.0
    eval_duration: float = 0.0
    feedback_messages: int = 0
    tool_calls: List[ToolCall] = dataclasses.field(default_factory=list)

    @classmethod
    def unserved(cls, error_code: ErrorCode, error_message: str) -> 'ChatOutcome':
        """The outcome of a goal that ends for error_code (a preempted or canceled goal's
        done_reason is DONE_CANCELED, any other's DONE_ERROR)."""
        canceled = error_code in (ErrorCode.CANCELED, ErrorCode.PREEMPTED)
        return cls(done_reason=DONE_CANCELED if canceled else DONE_ERROR,
                   error_code=error_code, error_message=error_message)


def validate(request: ChatRequest, settings: ChatSettings, sessions: SessionStore,
             capabilities: List[str], model: str,
             vision: VisionSettings = VisionSettings()) -> str:
    """The reason to reject the goal, or '' when it is acceptable.

    Sizes are checked first, so that no reason quotes an unbounded field.
    """
    if request.image_count > vision.max_images:
        return (f'the goal has {request.image_count} images (camera included); the limit '
                f'(max_images) is {vision.max_images}')
    if len(request.context) > MAX_CONTEXT_MESSAGES:
        return (f'context has {len(request.context)} messages; at most '
                f'{MAX_CONTEXT_MESSAGES} are accepted')
    if len(request.tools) > MAX_TOOLS or len(request.tool_results) > MAX_TOOLS:
        return f'tools and tool_results take at most {MAX_TOOLS} entries each'
    size = (len(request.prompt) + len(request.system_prompt) + len(request.output_format)
            + sum(len(m.get('content', '')) + len(m.get('thinking', ''))
                  for m in request.context)
            + sum(len(value) for entry in request.tools + request.tool_results
                  for value in entry.values()))
    if size > settings.max_prompt_chars:
        return (f'prompt, system prompt, format, tools, tool results and context (with its '
                f'thinking) have {size} characters; the limit (max_prompt_chars) is '
                f'{settings.max_prompt_chars}')
    if len(request.session_id) > MAX_SESSION_ID_CHARS:
        return (f'session_id has {len(request.session_id)} characters; at most '
                f'{MAX_SESSION_ID_CHARS} are accepted')
    if not request.session_id.isprintable():
        return 'session_id must be printable text (no control characters or line breaks)'
    if len(request.stop) > MAX_STOP_STRINGS or any(
            not 0 < len(s) <= MAX_STOP_CHARS for s in request.stop):
        return (f'stop takes 1..{MAX_STOP_STRINGS} non-empty strings of at most '
                f'{MAX_STOP_CHARS} characters')
    for message in request.context:
        if message.get('role') not in ROLES:
            return (f"context role {message.get('role', '')[:20]!r} must be one of "
                    f"{', '.join(ROLES)}")
    if not request.prompt.strip() and not request.tool_results:
        return 'prompt is empty (it may be empty only with tool_results)'
    if request.think not in (THINK_DEFAULT, THINK_ON, THINK_OFF):
        return ('think must be THINK_DEFAULT (0), THINK_ON (1) or THINK_OFF (2), not '
                f'{request.think}')
    if request.think == THINK_ON and 'thinking' not in capabilities:
        return (f"model '{model}' cannot think (capabilities: {', '.join(capabilities)}); "
                'use THINK_DEFAULT or THINK_OFF')
    for name, value, high in (('temperature', request.temperature, 2.0),
                              ('top_p', request.top_p, 1.0)):
        if math.isnan(value) or math.isinf(value):
            return f'{name} is not a number'
        if value > high:
            return f'{name} {value:g} is out of range 0..{high:g} (negative: model default)'
    if request.top_k > 1000:
        return f'top_k {request.top_k} is out of range 1..1000 (0 or negative: model default)'
    if request.max_tokens < 0 or request.max_tokens > settings.max_tokens_limit:
        return (f'max_tokens {request.max_tokens} is out of range 0..{settings.max_tokens_limit} '
                '(0: up to max_tokens_limit)')
    if request.reset_session and not request.session_id:
        return 'reset_session needs a session_id'
    if request.reset_session and request.session_id not in sessions:
        return f"reset_session: unknown session '{request.session_id}'"
    if request.context and request.session_id:
        return 'context is for single-turn goals; a session keeps its own history'
    return (images_problem(request, capabilities, model, vision)
            or format_problem(request.output_format)
            or tools_problem(request, sessions, capabilities, model))


def images_problem(request: ChatRequest, capabilities: List[str], model: str,
                   vision: VisionSettings) -> str:
    """Why the goal's images are unusable (checks that need no decoding), or ''."""
    if not request.image_count:
        return ''
    if 'vision' not in capabilities:
        return (f"model '{model}' cannot see images (capabilities: {', '.join(capabilities)})"
                '; send no images or use a model with the "vision" capability')
    if not request.prompt.strip():
        return 'images need a prompt (they are shown with the prompt, saying what to do)'
    for name, image in request.named_images():
        reason = image_problem(image, name, vision.max_image_bytes)
        if reason:
            return reason
    return ''


def output_format(text: str) -> Any:
    """Ollama's `format` for the goal's format field: None, 'json' or the schema (a dict).
    The field must have passed format_problem()."""
    if text in ('', FORMAT_JSON):
        return text or None
    return json.loads(text)


def format_problem(text: str) -> str:
    """Why the goal's format is unusable, or ''."""
    if text in ('', FORMAT_JSON):
        return ''
    try:
        schema = json.loads(text)
    except ValueError as error:
        return f'format is neither "json" nor a JSON document (a JSON Schema): {error}'
    except RecursionError:
        return f'format is nested deeper than {DEPTH_NOTE}'
    if not isinstance(schema, dict):
        return 'format must be "json" or a JSON Schema object ({...})'
    return schema_problem(schema, 'format')


def tools_problem(request: ChatRequest, sessions: SessionStore, capabilities: List[str],
                  model: str) -> str:
    """Why the goal's tools or tool results are unusable, or ''."""
    if request.tools and 'tools' not in capabilities:
        return (f"model '{model}' cannot call tools (capabilities: {', '.join(capabilities)})"
                '; send no tools or use a model with the "tools" capability')
    names = set()
    for tool in request.tools:
        name = tool['name']
        if not TOOL_NAME.fullmatch(name):
            return (f'tool name {name[:70]!r} must be 1..64 letters, digits, "_" or "-"')
        if name in names:
            return f"tool '{name}' is offered twice"
        names.add(name)
        problem = _parameters_problem(tool['parameters_json'], name)
        if problem:
            return problem
    if request.tool_results:
        if not request.session_id:
            return ('tool_results need the session_id of the turn whose tool calls they '
                    'answer')
        pending = {} if request.reset_session else sessions.pending_calls(request.session_id)
        if not pending:
            return (f"tool_results: session '{request.session_id}' has no tool calls to "
                    'answer (unknown, reset, or its last turn called no tool)')
        answered = set()
        for result in request.tool_results:
            call_id = result['tool_call_id']
            if call_id in answered:     # the session would store (and send) it twice
                return f'tool_results: call {call_id[:70]!r} is answered more than once'
            answered.add(call_id)
            if call_id not in pending:
                return (f'tool_results: {call_id[:70]!r} is not a tool call of the last turn '
                        f"(its calls: {', '.join(sorted(pending))})")
            if result['name'] != pending[call_id]:
                return (f"tool_results: call {call_id} was to '{pending[call_id]}', not "
                        f"{result['name'][:70]!r}")
    return ''


def _parameters_problem(text: str, name: str) -> str:
    if not text:
        return ''
    try:
        schema = json.loads(text)
    except ValueError as error:
        return f"tool '{name}': parameters_json is not JSON: {error}"
    except RecursionError:
        return f"tool '{name}': parameters_json is nested deeper than {DEPTH_NOTE}"
    if not isinstance(schema, dict) or schema.get('type', 'object') != 'object':
        return (f"tool '{name}': parameters_json must be a JSON Schema of type object "
                '({"type": "object", "properties": {...}})')
    return schema_problem(schema, f"tool '{name}': parameters_json")


def ollama_tools(tools: List[Dict[str, str]]) -> List[Dict[str, Any]]:
    """The goal's tools as Ollama's `tools` (function definitions)."""
    return [{'type': 'function',
             'function': {'name': tool['name'], 'description': tool['description'],
                          'parameters': (json.loads(tool['parameters_json'])
                                         if tool['parameters_json']
                                         else {'type': 'object', 'properties': {}})}}
            for tool in tools]


def format_mismatch(text: str, fmt: Any, done_reason: str) -> str:
    """Why the final text does not satisfy the goal's format (None, 'json' or a schema), or
    ''. A text cut by max_tokens says so: it is the usual cause."""
    if fmt is None:
        return ''
    cut = (' (the answer was cut by max_tokens or the context: done_reason length)'
           if done_reason == DONE_LENGTH else '')
    try:
        document = json.loads(text)
    except ValueError as error:
        return f'the answer is not valid JSON: {error}{cut}'
    except RecursionError:
        return f'the answer is nested deeper than {DEPTH_NOTE}'
    if fmt == FORMAT_JSON:
        return ''
    mismatch = document_problem(fmt, document)
    return mismatch + cut if mismatch.startswith('the answer does not match') else mismatch


def ollama_options(request: ChatRequest, settings: ChatSettings) -> Dict[str, Any]:
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
        rest, self.pending = self.pending, ''
        return ('', rest) if self.state == self.INSIDE else (rest, '')


def _partial_suffix(text: str, tag: str) -> int:
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


FeedbackSink = Callable[[int, str, str], None]   # (seq, delta, thinking_delta)


class FeedbackBatch:
    """Turns streamed text into feedback messages, at most one per `min_interval` seconds.

    Text that arrives after a quiet interval goes out at once, so the first token and a slow
    model's tokens are never delayed. Text that follows a message within the interval is held
    and joins the next one, which is due at most `min_interval` after the last: the caller
    flushes when due_in() says so, even if the model has paused. No text is ever dropped;
    min_interval 0 sends one message per piece of text.
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

    def add(self, answer: str, thinking: str) -> None:
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
        if self._answer or self._thinking:
            self.publish(self.sent, self._answer, self._thinking)
            self.sent += 1
            self._answer = self._thinking = ''
            self._last_sent = self.clock()


class ChatRun:
    """Streams one chat into feedback; cancel() (any thread) stops it at once."""

    def __init__(self, engine: OllamaEngine, model: str, request: ChatRequest,
                 settings: ChatSettings, sessions: SessionStore, context_length: int,
                 keep_alive: float, publish: FeedbackSink, accepted_at: float,
                 inline_think: bool = False, image_max_side: int = 1024) -> None:
        self.engine = engine
        self.model = model
        self.request = request
        self.settings = settings
        self.sessions = sessions
        self.context_length = context_length
        self.keep_alive = keep_alive
        self.publish = publish
        self.accepted_at = accepted_at
        self.inline_think = inline_think      # the model thinks: parse a leading <think> block
        self.image_max_side = image_max_side
        self._stream: Optional[ChatStream] = None
        self._cancel_reason = ''
        self._cancel_code = ErrorCode.NONE
        self._lock = threading.Lock()

    def cancel(self, reason: str, error_code: ErrorCode) -> None:
        """Close the stream now; the outcome carries error_code and the reason (the first
        cancel wins). Any thread."""
        with self._lock:
            if self._cancel_reason:
                return
            self._cancel_reason = reason
            self._cancel_code = error_code
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def run(self) -> ChatOutcome:
        request = self.request
        try:    # decoding and downscaling: here, in the goal's own thread, not at acceptance
            images = [prepare_image(image, name, self.image_max_side)
                      for name, image in request.named_images()]
        except ImageProblem as error:
            return ChatOutcome.unserved(ErrorCode.INVALID_GOAL, str(error))
        if request.reset_session:
            self.sessions.reset(request.session_id)
        # The history is trimmed to the model's context minus room for the answer.
        budget = context_budget(self.context_length,
                                request.max_tokens or self.settings.max_tokens_limit)
        sent = self.sessions.prompt(request.session_id, request.system_prompt, request.prompt,
                                    request.context, budget, request.tool_results)
        messages = sent.messages
        if images:  # on this turn's user message (validate() made sure there is a prompt)
            messages[-1] = dict(messages[-1], images=images)
        fmt = output_format(request.output_format)
        calls: List[Tuple[str, Dict[str, Any]]] = []
        think = {THINK_DEFAULT: None, THINK_ON: True, THINK_OFF: False}[request.think]
        outcome = ChatOutcome(error_code=ErrorCode.NONE)
        # Chunks that carried text: Ollama streams one token per chunk, so this is the number
        # of tokens generated when the stream ends without Ollama's final statistics.
        streamed = 0
        splitter = ThinkTagSplitter(self.inline_think)
        text: List[str] = []
        thinking: List[str] = []
        batch = FeedbackBatch(self.settings.feedback_min_interval, self.publish)

        def take(answer_part: str, thinking_part: str) -> None:
            text.append(answer_part)
            thinking.append(thinking_part)
            batch.add(answer_part, thinking_part)

        with self._lock:
            if self._cancel_reason:
                return self._canceled(outcome, text, thinking)
            self._stream = self.engine.chat(
                self.model, messages, think, ollama_options(request, self.settings),
                self.keep_alive, self.settings.stream_timeout, output_format=fmt,
                tools=ollama_tools(request.tools))
        try:
            while True:
                chunk = self._stream.read(batch.due_in())
                if chunk is None:       # held text is due and the model is quiet: send it
                    batch.flush()
                    continue
                if chunk.content or chunk.thinking:
                    streamed += 1
                answer_part, inline_thinking = splitter.feed(chunk.content)
                thinking_part = chunk.thinking + inline_thinking
                if (answer_part or thinking_part) and not outcome.time_to_first_token:
                    outcome.time_to_first_token = time.monotonic() - self.accepted_at
                take(answer_part, thinking_part)
                calls.extend(chunk.tool_calls)
                if chunk.done:
                    break
            take(*splitter.flush())
            batch.flush()
        except ChatCanceled:
            batch.flush()
            outcome.feedback_messages = batch.sent
            outcome.completion_tokens = streamed
            return self._canceled(outcome, text, thinking)
        except EngineError as error:
            batch.flush()
            outcome.completion_tokens = streamed
            outcome.text, outcome.thinking = ''.join(text), ''.join(thinking)
            outcome.error_message = str(error)
            outcome.error_code = (ErrorCode.TIMEOUT if isinstance(error, StreamTimeout)
                                  else ErrorCode.SERVER_FAILED)
            outcome.feedback_messages = batch.sent
            return outcome
        outcome.feedback_messages = batch.sent
        outcome.text, outcome.thinking = ''.join(text), ''.join(thinking)
        outcome.done_reason = DONE_LENGTH if chunk.done_reason == 'length' else DONE_STOP
        _fill_stats(outcome, chunk)
        if calls:   # the model asked for tools: there is no answer to check yet
            outcome.done_reason = DONE_TOOL_CALLS
            outcome.tool_calls = [
                ToolCall(f'call_{uuid.uuid4().hex[:8]}', name, json.dumps(arguments))
                for name, arguments in calls]   # Ollama's client drops Ollama's own ids
        else:
            mismatch = format_mismatch(outcome.text, fmt, outcome.done_reason)
            if mismatch:    # the session keeps no turn whose answer is unusable
                outcome.done_reason = DONE_ERROR
                outcome.error_code = ErrorCode.FORMAT_MISMATCH
                outcome.error_message = mismatch
                return outcome
        if request.session_id:
            if images:
                # The session keeps a note in place of the images (sent.request holds the
                # message without them): later turns know they were shown, and the context
                # is not filled with them.
                sent.request[-1] = dict(sent.request[-1],
                                        content=f'{request.prompt} {image_note(len(images))}')
            outcome.session_turns = self.sessions.commit(
                request.session_id, request.system_prompt, sent, outcome.text,
                [{'function': {'name': name, 'arguments': arguments}}
                 for name, arguments in calls],
                [call.call_id for call in outcome.tool_calls],
                # Ollama's counts include the images' tokens, which the stored turn does not
                # hold: such a turn is estimated from its text.
                0 if images else chunk.prompt_eval_count, 0 if images else chunk.eval_count)
        return outcome

    def _canceled(self, outcome: ChatOutcome, text: List[str],
                  thinking: List[str]) -> ChatOutcome:
        ended = ChatOutcome.unserved(self._cancel_code, self._cancel_reason)
        outcome.text, outcome.thinking = ''.join(text), ''.join(thinking)
        outcome.done_reason, outcome.error_code = ended.done_reason, ended.error_code
        outcome.error_message = ended.error_message
        return outcome


def _fill_stats(outcome: ChatOutcome, final: ChatChunk) -> None:
    outcome.prompt_tokens = final.prompt_eval_count
    outcome.completion_tokens = final.eval_count
    outcome.total_duration = final.total_duration / 1e9
    outcome.load_duration = final.load_duration / 1e9
    outcome.prompt_eval_duration = final.prompt_eval_duration / 1e9
    outcome.eval_duration = final.eval_duration / 1e9
    if final.eval_duration:
        outcome.tokens_per_second = final.eval_count / outcome.eval_duration
