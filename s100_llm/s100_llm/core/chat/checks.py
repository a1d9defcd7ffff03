"""The checks of a chat goal, ROS-free: validate() raises Refusal with the code and reason a
goal that cannot be served ends with (every field bounded, values in range, what the model can
do, images, format, tools and tool results, the camera frame); and format_mismatch(), the
check of the final answer against the goal's format.
"""

import json
import math
from typing import Any, Collection, List

from .request import ChatRequest
from .request import DONE_LENGTH
from .request import ErrorCode
from .request import FORMAT_JSON
from .request import Refusal
from .request import THINK_DEFAULT
from .request import THINK_LEVELS
from .request import THINK_OFF
from .request import THINK_ON
from ..config import ChatSettings
from ..config import VisionSettings
from ..images import problem as image_problem
from ..robot_tools import MAX_TOOLS
from ..robot_tools import TOOL_NAME
from ..schema import DEPTH_NOTE
from ..schema import document_problem
from ..schema import schema_problem
from ..sessions import SessionStore

ROLES = ('system', 'user', 'assistant')
# Limits of the goal fields that max_prompt_chars does not cover: every field of a goal is
# bounded, so what the node holds per goal (and in a session) is bounded whatever clients send.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256            # per stop string
MAX_SESSION_ID_CHARS = 128
MAX_CONTEXT_MESSAGES = 1000     # context[] entries (their text counts in max_prompt_chars)
# tools[], tool_results[] and robot_tools[] take MAX_TOOLS entries each (their text counts too).
MAX_TOP_LOGPROBS = 20           # Ollama refuses more (400 "top_logprobs must be between 0 and 20")
# The longest deadline accepted (a day): a longer one is a unit mistake (e.g. milliseconds).
MAX_DEADLINE = 86400.0


def invalid(reason: str) -> Refusal:
    """The refusal of a goal that is at fault itself (INVALID_GOAL)."""
    return Refusal(ErrorCode.INVALID_GOAL, reason)


def validate(request: ChatRequest, settings: ChatSettings, sessions: SessionStore,
             capabilities: List[str], model: str,
             vision: VisionSettings = VisionSettings(), *, think_levels: bool = False,
             robot_tools: Collection[str] = ()) -> None:
    """Raise Refusal when the goal cannot be served: INVALID_GOAL, or NO_IMAGE for the camera.
    think_levels: the model thinks in levels (engine.thinks_in_levels()).

    Sizes are checked first, so that no reason quotes an unbounded field; the camera frame
    last, so that a goal's own faults are named before the view it asked for. robot_tools:
    the names of the node's robot tools.
    """
    check_sizes(request, settings, vision)
    check_fields(request, settings, sessions, capabilities, model)
    check_think(request.think, capabilities, model, think_levels)
    check_confidence_and_deadline(request)
    check_images(request, capabilities, model, vision)
    check_format(request.output_format)
    check_tools(request, sessions, capabilities, model)
    check_robot_tools(request, robot_tools, capabilities, model)
    check_camera(request, vision)


def check_sizes(request: ChatRequest, settings: ChatSettings, vision: VisionSettings) -> None:
    """The counts and lengths of the goal's fields."""
    if request.image_count > vision.max_images:
        raise invalid(f'the goal has {request.image_count} images (camera included); the '
                      f'limit (max_images) is {vision.max_images}')
    if len(request.context) > MAX_CONTEXT_MESSAGES:
        raise invalid(f'context has {len(request.context)} messages; at most '
                      f'{MAX_CONTEXT_MESSAGES} are accepted')
    if max(len(request.tools), len(request.tool_results), len(request.robot_tools)) > MAX_TOOLS:
        raise invalid(f'tools, tool_results and robot_tools take at most {MAX_TOOLS} entries '
                      'each')
    size = (len(request.prompt) + len(request.system_prompt) + len(request.output_format)
            + sum(len(m.get('content', '')) + len(m.get('thinking', ''))
                  for m in request.context)
            + sum(len(value) for entry in request.tools + request.tool_results
                  for value in entry.values()))
    if size > settings.max_prompt_chars:
        raise invalid(f'prompt, system prompt, format, tools, tool results and context (with '
                      f'its thinking) have {size} characters; the limit (max_prompt_chars) is '
                      f'{settings.max_prompt_chars}')
    if len(request.session_id) > MAX_SESSION_ID_CHARS:
        raise invalid(f'session_id has {len(request.session_id)} characters; at most '
                      f'{MAX_SESSION_ID_CHARS} are accepted')


def check_fields(request: ChatRequest, settings: ChatSettings, sessions: SessionStore,
                 capabilities: List[str], model: str) -> None:
    """The values of the goal's fields, and how they go together."""
    if not request.session_id.isprintable():
        raise invalid('session_id must be printable text (no control characters or line '
                      'breaks)')
    if len(request.stop) > MAX_STOP_STRINGS or any(
            not 0 < len(s) <= MAX_STOP_CHARS for s in request.stop):
        raise invalid(f'stop takes 1..{MAX_STOP_STRINGS} non-empty strings of at most '
                      f'{MAX_STOP_CHARS} characters')
    for message in request.context:
        if message.get('role') not in ROLES:
            raise invalid(f"context role {message.get('role', '')[:20]!r} must be one of "
                          f"{', '.join(ROLES)}")
    if not request.prompt.strip() and not request.tool_results:
        raise invalid('prompt is empty (it may be empty only with tool_results)')
    for name, value, high in (('temperature', request.temperature, 2.0),
                              ('top_p', request.top_p, 1.0)):
        if math.isnan(value) or math.isinf(value):
            raise invalid(f'{name} is not a number')
        if value > high:
            raise invalid(f'{name} {value:g} is out of range 0..{high:g} (negative: model '
                          'default)')
    if request.top_k > 1000:
        raise invalid(f'top_k {request.top_k} is out of range 1..1000 (0 or negative: model '
                      'default)')
    if request.max_tokens < 0 or request.max_tokens > settings.max_tokens_limit:
        raise invalid(f'max_tokens {request.max_tokens} is out of range '
                      f'0..{settings.max_tokens_limit} (0: up to max_tokens_limit)')
    if request.reset_session and not request.session_id:
        raise invalid('reset_session needs a session_id')
    if request.reset_session and request.session_id not in sessions:
        raise invalid(f"reset_session: unknown session '{request.session_id}'")
    if request.context and request.session_id:
        raise invalid('context is for single-turn goals; a session keeps its own history')


def check_think(think: int, capabilities: List[str], model: str, think_levels: bool) -> None:
    """think: one of THINK_*; THINK_ON for a model that thinks, a level for one that thinks
    in levels."""
    if think not in (THINK_DEFAULT, THINK_ON, THINK_OFF) and think not in THINK_LEVELS:
        raise invalid('think must be THINK_DEFAULT (0), THINK_ON (1), THINK_OFF (2) or a level '
                      f'THINK_LOW (3) .. THINK_MAX (6), not {think}')
    if think in (THINK_DEFAULT, THINK_OFF):
        return
    if 'thinking' not in capabilities:
        raise invalid(f"model '{model}' cannot think (capabilities: "
                      f"{', '.join(capabilities)}); use THINK_DEFAULT or THINK_OFF")
    if think in THINK_LEVELS and not think_levels:
        raise invalid(f"model '{model}' thinks on or off, not in levels (its chat template "
                      f'does not use a reasoning level): use THINK_ON, THINK_OFF or '
                      f'THINK_DEFAULT, not {THINK_LEVELS[think]!r}')


def check_confidence_and_deadline(request: ChatRequest) -> None:
    """top_logprobs within Ollama's range; a deadline that is a usable number of seconds."""
    if request.top_logprobs > MAX_TOP_LOGPROBS:
        raise invalid(f'top_logprobs {request.top_logprobs} is out of range '
                      f'0..{MAX_TOP_LOGPROBS}')
    deadline = request.deadline
    if math.isnan(deadline) or not 0.0 <= deadline <= MAX_DEADLINE:
        raise invalid(f'deadline {deadline:g} is out of range 0..{MAX_DEADLINE:g} seconds '
                      '(0: no deadline)')


def check_images(request: ChatRequest, capabilities: List[str], model: str,
                 vision: VisionSettings) -> None:
    """The goal's own images (checks that need no decoding); the camera has check_camera()."""
    if not request.image_count:
        return
    if 'vision' not in capabilities:
        raise invalid(f"model '{model}' cannot see images (capabilities: "
                      f"{', '.join(capabilities)}); send no images or use a model with the "
                      '"vision" capability')
    if not request.prompt.strip():
        raise invalid('images need a prompt (they are shown with the prompt, saying what to '
                      'do)')
    for name, image in request.goal_images():
        reason = image_problem(image, name, vision.max_image_bytes)
        if reason:
            raise invalid(reason)


def check_format(text: str) -> None:
    """The goal's format: '', 'json' or a usable JSON Schema object."""
    if text in ('', FORMAT_JSON):
        return
    try:
        schema = json.loads(text)
    except ValueError as error:
        raise invalid(f'format is neither "json" nor a JSON document (a JSON Schema): {error}')
    except RecursionError:
        raise invalid(f'format is nested deeper than {DEPTH_NOTE}')
    if not isinstance(schema, dict):
        raise invalid('format must be "json" or a JSON Schema object ({...})')
    reason = schema_problem(schema, 'format')
    if reason:
        raise invalid(reason)


def check_tools(request: ChatRequest, sessions: SessionStore, capabilities: List[str],
                model: str) -> None:
    """The goal's tools, and its tool results against the calls its session waits for."""
    if request.tools and 'tools' not in capabilities:
        raise invalid(f"model '{model}' cannot call tools (capabilities: "
                      f"{', '.join(capabilities)}); send no tools or use a model with the "
                      '"tools" capability')
    names = set()
    for tool in request.tools:
        name = tool['name']
        if not TOOL_NAME.fullmatch(name):
            raise invalid(f'tool name {name[:70]!r} must be 1..64 letters, digits, "_" or "-"')
        if name in names:
            raise invalid(f"tool '{name}' is offered twice")
        names.add(name)
        _check_parameters(tool['parameters_json'], name)
    if not request.tool_results:
        return
    if not request.session_id:
        raise invalid('tool_results need the session_id of the turn whose tool calls they '
                      'answer')
    pending = {} if request.reset_session else sessions.pending_calls(request.session_id)
    if not pending:
        raise invalid(f"tool_results: session '{request.session_id}' has no tool calls to "
                      'answer (unknown, reset, or its last turn called no tool)')
    answered = set()
    for result in request.tool_results:
        call_id = result['tool_call_id']
        if call_id in answered:     # the session would store (and send) it twice
            raise invalid(f'tool_results: call {call_id[:70]!r} is answered more than once')
        answered.add(call_id)
        if call_id not in pending:
            raise invalid(f'tool_results: {call_id[:70]!r} is not a tool call of the last '
                          f"turn (its calls: {', '.join(sorted(pending))})")
        if result['name'] != pending[call_id]:
            raise invalid(f"tool_results: call {call_id} was to '{pending[call_id]}', not "
                          f"{result['name'][:70]!r}")


def check_robot_tools(request: ChatRequest, available: Collection[str],
                      capabilities: List[str], model: str) -> None:
    """The goal's robot tools: the node's, each asked for once, beside the goal's own."""
    if request.dry_run and not request.robot_tools:
        raise invalid('dry_run needs robot_tools (it plans their calls)')
    if not request.robot_tools:
        return
    if 'tools' not in capabilities:
        raise invalid(f"model '{model}' cannot call tools (capabilities: "
                      f"{', '.join(capabilities)}); send no robot_tools or use a model with the "
                      '"tools" capability')
    own = {tool['name'] for tool in request.tools}
    seen = set()
    for name in request.robot_tools:
        if name not in available:
            raise invalid(f"robot tool {name[:70]!r} is not in the node's robot_tools_file ("
                          + (f"its tools: {', '.join(available)})" if available
                             else 'the node has none: its robot_tools_file parameter is empty)'))
        if name in seen:
            raise invalid(f"robot tool '{name}' is asked for twice")
        if name in own:
            raise invalid(f"'{name}' is both a robot tool and one of the goal's tools")
        seen.add(name)


def _check_parameters(text: str, name: str) -> None:
    if not text:
        return
    try:
        schema = json.loads(text)
    except ValueError as error:
        raise invalid(f"tool '{name}': parameters_json is not JSON: {error}")
    except RecursionError:
        raise invalid(f"tool '{name}': parameters_json is nested deeper than {DEPTH_NOTE}")
    if not isinstance(schema, dict) or schema.get('type', 'object') != 'object':
        raise invalid(f"tool '{name}': parameters_json must be a JSON Schema of type object "
                      '({"type": "object", "properties": {...}})')
    reason = schema_problem(schema, f"tool '{name}': parameters_json")
    if reason:
        raise invalid(reason)


def check_camera(request: ChatRequest, vision: VisionSettings) -> None:
    """The frame a use_camera goal sees: NO_IMAGE when there is none or it cannot be used."""
    if request.camera_missing is not None:
        raise Refusal(ErrorCode.NO_IMAGE, request.camera_missing)
    if request.camera_image is not None:
        reason = image_problem(request.camera_image, request.camera_name,
                               vision.max_image_bytes)
        if reason:
            raise Refusal(ErrorCode.NO_IMAGE, reason)


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
