"""One goal's run, ROS-free: ChatRun prepares the goal's images, sends the session's messages
to Ollama, streams the reply into feedback, stops at once when canceled from any thread, and
ends in the goal's outcome (statistics, tool calls, the answer checked against the format, the
turn kept in its session). A goal with robot tools takes several model turns: the robot calls
of each (tool_loop) are executed and their results sent back, until the model answers, calls
one of the goal's own tools, or has taken max_tool_steps turns.
"""

import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
import uuid

from .checks import format_mismatch
from .confidence import summarize
from .confidence import TokenLogprob
from .request import ChatOutcome
from .request import ChatRequest
from .request import DONE_ERROR
from .request import DONE_LENGTH
from .request import DONE_STOP
from .request import DONE_TOOL_CALLS
from .request import ErrorCode
from .request import image_note
from .request import ToolCall
from .stream import FeedbackBatch
from .stream import FeedbackSink
from .stream import ollama_options
from .stream import ollama_think
from .stream import ollama_tools
from .stream import output_format
from .stream import ThinkTagSplitter
from .tool_loop import assistant_message
from .tool_loop import Message
from .tool_loop import RobotTools
from ..config import ChatSettings
from ..engine import ChatCanceled
from ..engine import ChatChunk
from ..engine import ChatStream
from ..engine import EngineError
from ..engine import OllamaEngine
from ..engine import StreamTimeout
from ..images import ImageProblem
from ..images import prepare as prepare_image
from ..robot_tools import RobotToolbox
from ..sessions import context_budget
from ..sessions import Prompt
from ..sessions import SessionStore
from ..warmup import Warmer


class _Reply:
    """What the stream has given so far: the answer and the reasoning (each piece also sent
    as feedback), the tool calls, and the chunks that carried text."""

    def __init__(self, inline_think: bool, batch: FeedbackBatch, request: ChatRequest) -> None:
        self.splitter = ThinkTagSplitter(inline_think)
        self.batch = batch
        # The answer's token log-probabilities (None: the goal did not ask for them).
        self.logprobs: Optional[List[TokenLogprob]] = [] if request.wants_logprobs else None
        self.keep_tokens = request.token_logprobs
        self.text: List[str] = []
        self.thinking: List[str] = []
        self.calls: List[Tuple[str, Dict[str, Any]]] = []
        # Ollama streams one token per chunk, so this is the number of tokens generated when
        # the stream ends without Ollama's final statistics.
        self.streamed = 0

    def take(self, answer: str, thinking: str) -> None:
        self.text.append(answer)
        self.thinking.append(thinking)
        self.batch.add(answer, thinking)

    def end(self, outcome: ChatOutcome) -> None:
        """Send what is held and put the text so far in the outcome."""
        self.batch.flush()
        outcome.feedback_messages = self.batch.sent
        outcome.text, outcome.thinking = ''.join(self.text), ''.join(self.thinking)
        if self.logprobs is not None:
            outcome.confidence = summarize(self.logprobs, self.keep_tokens)

    def take_logprobs(self, chunk: ChatChunk, answer: str, thinking: str) -> None:
        """Keep the chunk's log-probabilities when its tokens are the answer's (Ollama streams
        one token per chunk; reasoning tokens are not the answer's confidence)."""
        if self.logprobs is not None and answer and not thinking:
            self.logprobs.extend(chunk.logprobs)


class ChatRun:
    """Streams one chat into feedback; cancel() (any thread) stops it at once."""

    def __init__(self, engine: OllamaEngine, model: str, request: ChatRequest,
                 settings: ChatSettings, sessions: SessionStore, context_length: int,
                 keep_alive: float, publish: FeedbackSink, accepted_at: float,
                 inline_think: bool = False, image_max_side: int = 1024,
                 toolbox: Optional[RobotToolbox] = None,
                 log: Callable[[str], None] = lambda line: None,
                 warmer: Optional[Warmer] = None) -> None:
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
        self.toolbox = toolbox      # the node's robot tools (None: it has none)
        self.log = log              # one line per robot call
        self.warmer = warmer    # the cache's warm-ups (core/warmup.py); None: none
        self._stream: Optional[ChatStream] = None
        self._cancel_reason = ''
        self._cancel_code = ErrorCode.NONE
        self._lock = threading.Lock()
        self._canceled = threading.Event()     # a robot call in progress stops when set

    def cancel(self, reason: str, error_code: ErrorCode) -> None:
        """Close the stream now; the outcome carries error_code and the reason (the first
        cancel wins). Any thread."""
        with self._lock:
            if self._cancel_reason:
                return
            self._cancel_reason = reason
            self._cancel_code = error_code
            stream = self._stream
        self._canceled.set()
        if stream is not None:
            stream.cancel()
        if self.warmer is not None:     # a warm-up this goal waits for
            self.warmer.stop_waiting()

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
        outcome = ChatOutcome(error_code=ErrorCode.NONE)
        batch = FeedbackBatch(self.settings.feedback_min_interval, self.publish)
        robot = (RobotTools(self.toolbox, request.robot_tools, batch.send_calls, self.log,
                            self.settings.feedback_min_interval)
                 if request.robot_tools and self.toolbox is not None else None)
        if self.warmer is not None:     # a warm-up of this session's history first
            self.warmer.yield_to(request.session_id, lambda: bool(self._cancel_reason))
        ended = self._converse(messages, fmt, batch, robot, outcome)
        if ended is None:
            return outcome
        reply, final, exchange = ended
        own_calls = [call for call in reply.calls
                     if robot is None or call[0] in {tool['name'] for tool in request.tools}]
        beside = [call for call in reply.calls if call not in own_calls]
        if robot is not None and beside and request.dry_run:
            robot.plan(0, beside)
        elif robot is not None and beside:
            # Robot calls beside the behaviour's: executed now; the behaviour answers its own.
            exchange.append(assistant_message('', beside))
            exchange.extend(robot.execute(robot.steps, beside, self._canceled))
            if self._canceled.is_set():
                return self._canceled_outcome(outcome)
        if own_calls:     # the model asked for tools: there is no answer to check yet
            outcome.done_reason = DONE_TOOL_CALLS
            outcome.tool_calls = [
                ToolCall(f'call_{uuid.uuid4().hex[:8]}', name, json.dumps(arguments))
                for name, arguments in own_calls]     # Ollama's client drops Ollama's ids
            if request.dry_run:
                return outcome      # a plan, not a turn: the session stays as it was
        else:
            mismatch = format_mismatch(outcome.text, fmt, outcome.done_reason)
            if mismatch:    # the session keeps no turn whose answer is unusable
                outcome.done_reason = DONE_ERROR
                outcome.error_code = ErrorCode.FORMAT_MISMATCH
                outcome.error_message = mismatch
                return outcome
            if fmt is not None and reply.logprobs is not None:     # name the least sure field
                outcome.confidence = summarize(reply.logprobs, reply.keep_tokens, outcome.text)
        if request.session_id:
            outcome.session_turns = self._commit(sent, exchange, outcome, own_calls, final,
                                                 len(images))
            if self.warmer is not None:
                self._warm(sent, budget, robot)
        return outcome

    def _converse(self, messages: List[Message], fmt: Any, batch: FeedbackBatch,
                  robot: Optional[RobotTools], outcome: ChatOutcome
                  ) -> Optional[Tuple['_Reply', ChatChunk, List[Message]]]:
        """Model turns until one answers or calls one of the goal's own tools: the robot calls
        of the others executed and their results sent back. Returns that last turn, its final
        chunk and the exchange before it (the turns with robot calls and their results); None
        when the goal ended (canceled, failed, dry_run planned, max_tool_steps reached)."""
        request = self.request
        tools = ollama_tools(request.tools) + (robot.offers() if robot else [])
        own = {tool['name'] for tool in request.tools}
        exchange: List[Message] = []
        thinking: List[str] = []
        while True:
            reply = _Reply(self.inline_think, batch, request)
            final = self._turn(messages + exchange, fmt, tools, reply, outcome)
            thinking.append(''.join(reply.thinking))
            outcome.thinking = ''.join(thinking)   # every turn's reasoning
            if robot is not None:
                outcome.robot_calls = robot.calls
            if final is None:
                return None
            calls = [call for call in reply.calls if call[0] not in own]
            if robot is None or not calls or len(calls) < len(reply.calls):
                return reply, final, exchange   # an answer, or calls for the behaviour
            if request.dry_run:
                robot.plan(0, calls)
                outcome.done_reason = DONE_TOOL_CALLS
                return None         # a plan, not a turn: the session stays as it was
            if robot.steps + 1 >= self.settings.max_tool_steps:
                outcome.error_message = (
                    f'the model still called tools after {robot.steps + 1} model turns '
                    '(max_tool_steps); not executed')
                robot.refuse(robot.steps, calls, outcome.error_message)
                outcome.done_reason = DONE_ERROR
                outcome.error_code = ErrorCode.TOOL_STEPS
                return None
            exchange.append(assistant_message(outcome.text, calls))
            exchange.extend(robot.execute(robot.steps, calls, self._canceled))
            if self._canceled.is_set():
                self._canceled_outcome(outcome)
                return None
            robot.steps += 1

    def _turn(self, messages: List[Message], fmt: Any, tools: List[Dict[str, Any]],
              reply: '_Reply', outcome: ChatOutcome) -> Optional[ChatChunk]:
        """One model turn, streamed into feedback; its text in the outcome and its statistics
        added. None when the goal ends here (canceled, or the server failed)."""
        request = self.request
        with self._lock:
            if self._cancel_reason:
                reply.end(outcome)
                self._canceled_outcome(outcome)
                return None
            self._stream = stream = self.engine.chat(
                self.model, messages, ollama_think(request.think),
                ollama_options(request, self.settings), self.keep_alive,
                self.settings.stream_timeout, output_format=fmt, tools=tools,
                logprobs=request.wants_logprobs, top_logprobs=request.top_logprobs)
        try:
            final = self._read(stream, reply, outcome)
        except ChatCanceled:
            reply.end(outcome)
            outcome.completion_tokens += reply.streamed
            self._canceled_outcome(outcome)
            return None
        except EngineError as error:
            reply.end(outcome)
            outcome.completion_tokens += reply.streamed
            outcome.error_message = str(error)
            outcome.error_code = (ErrorCode.TIMEOUT if isinstance(error, StreamTimeout)
                                  else ErrorCode.SERVER_FAILED)
            outcome.done_reason = DONE_ERROR
            return None
        reply.end(outcome)
        outcome.done_reason = DONE_LENGTH if final.done_reason == 'length' else DONE_STOP
        _add_stats(outcome, final)
        return final

    def _read(self, stream: ChatStream, reply: _Reply, outcome: ChatOutcome) -> ChatChunk:
        """Stream the reply into feedback; returns the final chunk (Ollama's statistics)."""
        while True:
            chunk = stream.read(reply.batch.due_in())
            if chunk is None:       # held text is due and the model is quiet: send it
                reply.batch.flush()
                continue
            if chunk.content or chunk.thinking:
                reply.streamed += 1
            answer_part, inline_thinking = reply.splitter.feed(chunk.content)
            thinking_part = chunk.thinking + inline_thinking
            if (answer_part or thinking_part) and not outcome.time_to_first_token:
                outcome.time_to_first_token = time.monotonic() - self.accepted_at
            reply.take(answer_part, thinking_part)
            reply.take_logprobs(chunk, answer_part, thinking_part)
            reply.calls.extend(chunk.tool_calls)
            if chunk.done:
                reply.take(*reply.splitter.flush())
                return chunk

    def _commit(self, sent: Prompt, exchange: List[Message], outcome: ChatOutcome,
                calls: List[Tuple[str, Dict[str, Any]]], final: ChatChunk, images: int) -> int:
        """Keep the turn in its session (with its robot calls and their results, as they were
        sent); returns the session's number of turns."""
        request = self.request
        if images:
            # The session keeps a note in place of the images (sent.request holds the message
            # without them): later turns know they were shown, and the context is not filled
            # with them.
            sent.request[-1] = dict(sent.request[-1],
                                    content=f'{request.prompt} {image_note(images)}')
        sent.request.extend(exchange)
        return self.sessions.commit(
            request.session_id, request.system_prompt, sent, outcome.text,
            [{'function': {'name': name, 'arguments': arguments}} for name, arguments in calls],
            [call.call_id for call in outcome.tool_calls],
            # Ollama's counts (of the last model turn, which was sent the whole exchange)
            # include the images' tokens, which the stored turn does not hold: such a turn is
            # estimated from its text.
            0 if images else final.prompt_eval_count, 0 if images else final.eval_count)

    def _warm(self, sent: Prompt, budget: int, robot: Optional[RobotTools]) -> None:
        """When the session's next turn would not find its history in the cache, trim the
        session now and evaluate the kept history while the answer is spoken."""
        session_id = self.request.session_id
        messages = self.sessions.trim_ahead(session_id, sent, budget)
        if messages:
            assert self.warmer is not None
            # The template renders the tools into the prompt: this goal's, the next one's likely
            tools = ollama_tools(self.request.tools) + (robot.offers() if robot else [])
            self.warmer.start(self.engine, self.model, messages, self.keep_alive,
                              self.settings.stream_timeout, session_id, tools)

    def _canceled_outcome(self, outcome: ChatOutcome) -> ChatOutcome:
        ended = ChatOutcome.unserved(self._cancel_code, self._cancel_reason)
        outcome.done_reason, outcome.error_code = ended.done_reason, ended.error_code
        outcome.error_message = ended.error_message
        return outcome


def _add_stats(outcome: ChatOutcome, final: ChatChunk) -> None:
    """Add one model turn's statistics (a goal with robot tools takes several turns)."""
    outcome.prompt_tokens += final.prompt_eval_count
    outcome.completion_tokens += final.eval_count
    outcome.total_duration += final.total_duration / 1e9
    outcome.load_duration += final.load_duration / 1e9
    outcome.prompt_eval_duration += final.prompt_eval_duration / 1e9
    outcome.eval_duration += final.eval_duration / 1e9
    if outcome.eval_duration:
        outcome.tokens_per_second = outcome.completion_tokens / outcome.eval_duration
