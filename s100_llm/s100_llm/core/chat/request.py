"""A chat goal and its end, ROS-free: the goal's fields as plain values (ChatRequest), the
constants and error codes Chat.action defines, Refusal (a goal that will not be served, with
its code and reason) and what a served or ended goal gives back (ChatOutcome, ToolCall).
"""

import dataclasses
import enum
from typing import Dict, List, Optional, Tuple

from .confidence import Confidence
from ..images import AnyImage
from ..images import CompressedImage
from ..images import RawImage
from ..robot_tools import RobotCall

# The values of Chat.Goal.think, Chat.Result.done_reason and Chat.Result.error_code, defined by
# s100_llm_msgs/action/Chat.action; the core is ROS-free, so test_chat_logic ties these to it.
THINK_DEFAULT, THINK_ON, THINK_OFF = 0, 1, 2
THINK_LOW, THINK_MEDIUM, THINK_HIGH, THINK_MAX = 3, 4, 5, 6
# The reasoning effort each level asks Ollama for (its `think` string).
THINK_LEVELS = {THINK_LOW: 'low', THINK_MEDIUM: 'medium', THINK_HIGH: 'high', THINK_MAX: 'max'}
DONE_STOP, DONE_LENGTH, DONE_CANCELED, DONE_ERROR = 'stop', 'length', 'canceled', 'error'
DONE_TOOL_CALLS = 'tool_calls'
DONE_DEADLINE = 'deadline'
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
    DEADLINE = 11
    TOOL_STEPS = 12


class Refusal(Exception):
    """A goal that will not be served: the code and the reason its result carries."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


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
    # Token log-probabilities: a summary (logprobs), each token's value too (token_logprobs),
    # with top_logprobs alternatives per token (either of those implies logprobs).
    logprobs: bool = False
    token_logprobs: bool = False
    top_logprobs: int = 0
    # Seconds from acceptance by which the answer must be complete; 0: none.
    deadline: float = 0.0
    # The camera frame a use_camera goal sees, taken by the node when it accepted the goal
    # (before the checks, which check it), and what to call it in a reason (e.g. 'the camera
    # frame from /camera/image_raw'); or why the node has no frame to give it.
    camera_image: Optional[AnyImage] = None
    camera_name: str = 'the camera frame'
    camera_missing: Optional[str] = None
    # Names of the node's robot tools the model may use; dry_run: plan them, execute nothing.
    robot_tools: List[str] = dataclasses.field(default_factory=list)
    dry_run: bool = False

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.token_logprobs or self.top_logprobs > 0

    @property
    def image_count(self) -> int:
        """The images the goal shows the model (the camera frame included)."""
        return len(self.images) + len(self.compressed_images) + int(self.use_camera)

    def goal_images(self) -> List[Tuple[str, AnyImage]]:
        """(name for reasons, image) of the images the goal carries, in the order sent."""
        named: List[Tuple[str, AnyImage]] = [
            (f'images[{index}]', image) for index, image in enumerate(self.images)]
        return named + [(f'compressed_images[{index}]', image)
                        for index, image in enumerate(self.compressed_images)]

    def named_images(self) -> List[Tuple[str, AnyImage]]:
        """(name for reasons, image), in the order the model sees them (the camera last)."""
        named = self.goal_images()
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
    """What one goal ends with: Chat.Result's fields, as plain values."""

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
    # How sure the model was of its answer, when the goal asked for logprobs.
    confidence: Optional[Confidence] = None
    # Every robot tool call the model asked for, in order, with its outcome.
    robot_calls: List[RobotCall] = dataclasses.field(default_factory=list)

    @classmethod
    def unserved(cls, error_code: ErrorCode, error_message: str) -> 'ChatOutcome':
        """The outcome of a goal that ends for error_code (a preempted or canceled goal's
        done_reason is DONE_CANCELED, a goal past its deadline's DONE_DEADLINE, any other's
        DONE_ERROR)."""
        canceled = error_code in (ErrorCode.CANCELED, ErrorCode.PREEMPTED)
        done_reason = (DONE_CANCELED if canceled else DONE_DEADLINE
                       if error_code == ErrorCode.DEADLINE else DONE_ERROR)
        return cls(done_reason=done_reason, error_code=error_code, error_message=error_message)
