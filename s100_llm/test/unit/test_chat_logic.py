import json
import math

import pytest

from s100_llm.core.chat.checks import check_format
from s100_llm.core.chat.checks import format_mismatch
from s100_llm.core.chat.checks import validate
from s100_llm.core.chat.request import ChatOutcome
from s100_llm.core.chat.request import ChatRequest
from s100_llm.core.chat.request import DONE_DEADLINE
from s100_llm.core.chat.request import ErrorCode
from s100_llm.core.chat.request import Refusal
from s100_llm.core.chat.request import THINK_DEFAULT
from s100_llm.core.chat.request import THINK_HIGH
from s100_llm.core.chat.request import THINK_LOW
from s100_llm.core.chat.request import THINK_MAX
from s100_llm.core.chat.request import THINK_MEDIUM
from s100_llm.core.chat.request import THINK_OFF
from s100_llm.core.chat.request import THINK_ON
from s100_llm.core.chat.stream import FeedbackBatch
from s100_llm.core.chat.stream import ollama_options
from s100_llm.core.chat.stream import ollama_think
from s100_llm.core.chat.stream import ThinkTagSplitter
from s100_llm.core.config import ChatSettings
from s100_llm.core.config import VisionSettings
from s100_llm.core.sessions import SessionStore

SETTINGS = ChatSettings(max_prompt_chars=100, max_tokens_limit=50)


def refused(check, *args, **kwargs):
    """The reason check(*args, **kwargs) refuses the goal for (INVALID_GOAL), or None when it
    passes."""
    try:
        check(*args, **kwargs)
    except Refusal as refusal:
        assert refusal.code == ErrorCode.INVALID_GOAL, refusal
        return refusal.reason
    return None


def reason(**fields):
    request = ChatRequest(**{'prompt': 'hello', **fields})
    return refused(validate, request, SETTINGS, SessionStore(5, 5), ['completion'],
                   'echo:latest')


@pytest.mark.parametrize('fields, fragment', [
    ({'prompt': '  '}, 'prompt is empty'),
    ({'prompt': 'x' * 101}, 'max_prompt_chars'),
    ({'think': THINK_ON}, 'cannot think'),
    ({'think': 7}, 'think must be'),
    ({'think': THINK_LOW}, 'cannot think'),
    ({'top_logprobs': 21}, 'top_logprobs 21 is out of range 0..20'),
    ({'deadline': -1.0}, 'deadline -1 is out of range'),
    ({'deadline': math.nan}, 'deadline nan is out of range'),
    ({'deadline': math.inf}, 'deadline inf is out of range'),
    ({'deadline': 86401.0}, 'deadline 86401 is out of range 0..86400 seconds'),
    ({'temperature': math.nan}, 'temperature is not a number'),
    ({'temperature': 3.0}, 'temperature 3 is out of range'),
    ({'top_p': 1.5}, 'top_p'),
    ({'top_k': 5000}, 'top_k'),
    ({'max_tokens': -3}, 'max_tokens'),
    ({'max_tokens': 51}, 'max_tokens'),
    ({'stop': ['']}, 'stop'),
    ({'reset_session': True}, 'needs a session_id'),
    ({'reset_session': True, 'session_id': 'nope'}, "unknown session 'nope'"),
    ({'session_id': 's', 'context': [{'role': 'user', 'content': 'x'}]}, 'single-turn'),
    ({'context': [{'role': 'root', 'content': 'x'}]}, "role 'root'"),
    ({'context': [{'role': 'r' * 10**6, 'content': 'x'}]}, "role 'rrrrrrrrrrrrrrrrrrrr' must"),
    ({'stop': ['x'] * 17}, 'stop takes 1..16'),
    ({'stop': ['x' * 257]}, 'of at most 256 characters'),
    ({'session_id': 's' * 129}, 'session_id has 129 characters; at most 128'),
    ({'session_id': 'a\nb'}, 'session_id must be printable'),
    ({'session_id': 'bell\x07'}, 'session_id must be printable'),
    ({'context': [{'role': 'user', 'content': ''}] * 1001}, 'context has 1001 messages'),
    ({'context': [{'role': 'assistant', 'content': 'x', 'thinking': 'y' * 100}]},
     'context (with its thinking) have 106 characters'),
])
def test_bad_goals_get_a_reason(fields, fragment):
    assert fragment in reason(**fields)


SCHEMA = {'type': 'object', 'properties': {'place': {'type': 'string'}},
          'required': ['place']}


@pytest.mark.parametrize('text, fmt, done_reason, fragment', [
    ('{"place": "hall"}', SCHEMA, 'stop', ''),
    ('{"place": 3}', SCHEMA, 'stop',
     "does not match the format schema: 3 is not of type 'string' (at place)"),
    ('{}', SCHEMA, 'stop', "'place' is a required property"),
    ('{"pla', SCHEMA, 'length', 'not valid JSON: Unterminated string'),
    ('{"pla', SCHEMA, 'length', 'cut by max_tokens'),
    ('[1]', 'json', 'stop', ''),
    ('free text', None, 'stop', ''),
])
def test_the_final_text_is_checked_against_the_format(text, fmt, done_reason, fragment):
    found = format_mismatch(text, fmt, done_reason)
    assert fragment in found and bool(found) == bool(fragment), found


def test_deep_or_huge_json_is_refused_with_a_bounded_reason():
    deep = '[' * 20000
    settings = ChatSettings(max_prompt_chars=100000)
    request = ChatRequest(prompt='x', output_format=deep)
    found = refused(validate, request, settings, SessionStore(5, 5), [], 'm')
    assert found.startswith('format is nested deeper than'), found
    # JSON that parses, but too deep for jsonschema's recursion.
    nested = '{"type": "object", "properties": {"a": ' * 600 + '{}' + '}}' * 600
    assert 'nested deeper' in refused(check_format, nested)
    assert 'nested deeper' in format_mismatch('[' * 20000 + ']' * 20000, 'json', 'stop')
    huge_enum = json.dumps({'type': 'string', 'enum': 'x' * 50000})
    assert len(refused(check_format, huge_enum)) < 400


@pytest.mark.parametrize('schema, reason', [
    ({'$schema': []}, 'format is not a usable JSON Schema'),
    ({'$ref': 'http://127.0.0.1:9/schema.json'}, 'format refers outside itself'),
    ({'properties': {'a': {'$ref': 'other.json#/x'}}}, 'format refers outside itself'),
])
def test_schemas_that_jsonschema_cannot_use_safely_are_refused(schema, reason):
    assert refused(check_format, json.dumps(schema)).startswith(reason)


@pytest.mark.parametrize('fmt, reason', [
    # jsonschema 3.2 (jammy) says "'objekt' is not one of [...]", newer ones "is not valid ...".
    ('{"type": "objekt"}', "format is not a valid JSON Schema: 'objekt' is not "),
    ('{"type": "object", "required": "place"}', 'format is not a valid JSON Schema'),
    ('{"type": ', 'format is neither "json" nor a JSON document'),
    ('[1, 2]', 'format must be "json" or a JSON Schema object'),
    ('yaml', 'format is neither "json" nor a JSON document'),
    ('{"$ref": "#"}', "format: $ref '#' (at #) is cyclic"),
])
def test_a_format_that_is_no_usable_schema_is_refused_with_its_reason(fmt, reason):
    assert reason in refused(check_format, fmt)


def test_a_schema_referring_within_itself_is_fine_and_a_dangling_one_is_refused():
    local = {'$defs': {'n': {'type': 'integer'}}, 'type': 'object',
             'properties': {'a': {'$ref': '#/$defs/n'}}}
    assert refused(check_format, json.dumps(local)) is None
    assert format_mismatch('{"a": "x"}', local, 'stop').startswith(
        'the answer does not match the format schema')
    dangling = {'type': 'object', 'properties': {'a': {'$ref': '#/nowhere'}}}
    assert refused(check_format, json.dumps(dangling)) == (
        "format: $ref '#/nowhere' (at #/properties/a) is dangling: the schema has nothing at "
        'that path')


def test_tools_need_the_capability_and_a_session_for_results():
    tool = {'name': 'say', 'description': '', 'parameters_json': ''}
    assert 'cannot call tools' in reason(tools=[tool])
    sessions = SessionStore(5, 5)
    request = ChatRequest(prompt='', tools=[tool], session_id='s', tool_results=[
        {'tool_call_id': 'call_1', 'name': 'say', 'content': 'ok'}])
    assert 'has no tool calls' in refused(validate, request, SETTINGS, sessions, ['tools'], 'm')
    sessions.commit('s', '', sessions.prompt('s', '', 'say hi'), '', tool_calls=[
        {'function': {'name': 'say', 'arguments': {}}}], call_ids=['call_1'])
    assert refused(validate, request, SETTINGS, sessions, ['tools'], 'm') is None
    request.tool_results[0]['name'] = 'jump'
    assert "call call_1 was to 'say', not 'jump'" in refused(
        validate, request, SETTINGS, sessions, ['tools'], 'm')
    request.tool_results[0].update(name='say', tool_call_id='call_9')
    assert "'call_9' is not a tool call of the last turn (its calls: call_1)" in refused(
        validate, request, SETTINGS, sessions, ['tools'], 'm')
    sent = sessions.prompt('s', '', '', tool_results=request.tool_results)
    sessions.commit('s', '', sent, 'done')   # answered: nothing pending
    request.tool_results[0]['tool_call_id'] = 'call_1'
    assert 'its last turn called no tool' in refused(validate, request, SETTINGS, sessions,
                                                     ['tools'], 'm')


@pytest.mark.parametrize('fields, fragment', [
    ({'tools': [{'name': 'drive now', 'description': '', 'parameters_json': ''}]},
     "tool name 'drive now' must be"),
    ({'tools': [{'name': 'say', 'description': '', 'parameters_json': ''}] * 2},
     "tool 'say' is offered twice"),
    ({'tools': [{'name': 't', 'description': '', 'parameters_json': '{"type": "string"}'}]},
     "tool 't': parameters_json must be a JSON Schema of type object"),
    ({'tool_results': [{'tool_call_id': 'call_1', 'name': 'say', 'content': 'ok'}]},
     'tool_results need the session'),
    ({'session_id': 'ghost',
      'tool_results': [{'tool_call_id': 'call_1', 'name': 'say', 'content': 'ok'}]},
     "session 'ghost' has no tool calls to answer"),
])
def test_bad_tool_fields_get_a_reason(fields, fragment):
    request = ChatRequest(prompt='x', **fields)
    assert fragment in refused(validate, request, SETTINGS, SessionStore(5, 5), ['tools'], 'm')


@pytest.mark.parametrize('fields, capabilities, fragment', [
    ({'robot_tools': ['fly']}, ['tools'], "robot tool 'fly' is not in the node's "
                                          'robot_tools_file (its tools: navigate, look)'),
    ({'robot_tools': ['look']}, ['completion'], "model 'm' cannot call tools"),
    ({'robot_tools': ['look', 'look']}, ['tools'], "robot tool 'look' is asked for twice"),
    ({'robot_tools': ['look'], 'tools': [{'name': 'look', 'description': '',
                                          'parameters_json': ''}]},
     ['tools'], "'look' is both a robot tool and one of the goal's tools"),
    ({'dry_run': True}, ['tools'], 'dry_run needs robot_tools'),
    ({'robot_tools': ['look'] * 65}, ['tools'], 'robot_tools take at most 64 entries'),
])
def test_robot_tools_must_be_the_nodes_and_the_model_must_call_tools(fields, capabilities,
                                                                     fragment):
    request = ChatRequest(prompt='x', **fields)
    assert fragment in refused(validate, request, SETTINGS, SessionStore(5, 5), capabilities,
                               'm', VisionSettings(), robot_tools=['navigate', 'look'])


def test_a_node_without_robot_tools_says_so():
    request = ChatRequest(prompt='x', robot_tools=['look'])
    assert 'the node has none: its robot_tools_file parameter is empty' in refused(
        validate, request, SETTINGS, SessionStore(5, 5), ['tools'], 'm')
    request.dry_run = True
    assert refused(validate, request, SETTINGS, SessionStore(5, 5), ['tools'], 'm',
                   VisionSettings(), robot_tools=['look']) is None


def test_a_tool_whose_parameters_refer_in_a_circle_or_nowhere_is_refused():
    def found(parameters):
        tool = {'name': 'go', 'description': '', 'parameters_json': json.dumps(parameters)}
        return refused(validate, ChatRequest(prompt='x', tools=[tool]), ChatSettings(),
                       SessionStore(5, 5), ['tools'], 'm')
    cyclic = {'type': 'object', 'definitions': {'p': {'allOf': [{'$ref': '#/definitions/p'}]}},
              'properties': {'place': {'$ref': '#/definitions/p'}}}
    assert found(cyclic).startswith(
        "tool 'go': parameters_json: $ref '#/definitions/p' (at #/definitions/p/allOf/0) is "
        'cyclic'), found(cyclic)
    dangling = {'type': 'object', 'properties': {'place': {'$ref': '#/definitions/none'}}}
    assert 'is dangling' in found(dangling)


def test_a_tool_call_answered_twice_is_refused_naming_it():
    tool = {'name': 'say', 'description': '', 'parameters_json': ''}
    sessions = SessionStore(5, 5)
    sessions.commit('s', '', sessions.prompt('s', '', 'say hi'), '', tool_calls=[
        {'function': {'name': 'say', 'arguments': {}}}] * 2, call_ids=['call_1', 'call_2'])
    answer = {'tool_call_id': 'call_1', 'name': 'say', 'content': 'ok'}
    request = ChatRequest(prompt='', tools=[tool], session_id='s', tool_results=[answer] * 3)
    assert refused(validate, request, SETTINGS, sessions, ['tools'], 'm') == (
        "tool_results: call 'call_1' is answered more than once")
    request.tool_results = [answer, dict(answer, tool_call_id='call_2')]
    assert refused(validate, request, SETTINGS, sessions, ['tools'], 'm') is None


def think_reason(think, capabilities, levels):
    return refused(validate, ChatRequest('hello', think=think), SETTINGS, SessionStore(5, 5),
                   capabilities, 'm', VisionSettings(), think_levels=levels)


@pytest.mark.parametrize('think', [THINK_LOW, THINK_MEDIUM, THINK_HIGH, THINK_MAX])
def test_a_level_needs_a_model_that_thinks_in_levels(think):
    assert think_reason(think, ['completion', 'thinking'], True) is None
    assert "model 'm' thinks on or off, not in levels" in think_reason(
        think, ['completion', 'thinking'], False)
    assert "model 'm' cannot think" in think_reason(think, ['completion'], True)


def test_on_off_and_default_need_no_levels():
    for think in (THINK_DEFAULT, THINK_ON, THINK_OFF):
        assert think_reason(think, ['completion', 'thinking'], False) is None


def test_a_goal_past_its_deadline_ends_with_its_own_done_reason():
    outcome = ChatOutcome.unserved(ErrorCode.DEADLINE, 'the deadline of 1 s passed')
    assert (outcome.done_reason, outcome.error_code) == (DONE_DEADLINE, ErrorCode.DEADLINE)
    assert ChatOutcome.unserved(ErrorCode.CANCELED, 'x').done_reason == 'canceled'


def test_think_reaches_ollama_as_it_expects():
    assert [ollama_think(t) for t in (THINK_DEFAULT, THINK_ON, THINK_OFF, THINK_LOW,
                                      THINK_MEDIUM, THINK_HIGH, THINK_MAX)] == [
        None, True, False, 'low', 'medium', 'high', 'max']


def test_confidence_and_deadline_at_their_limits_are_accepted():
    assert reason(logprobs=True, token_logprobs=True, top_logprobs=20, deadline=86400.0) is None
    assert reason(deadline=0.001) is None


def test_a_good_goal_has_no_reason():
    assert reason(temperature=0.0, top_p=0.9, top_k=40, max_tokens=50, seed=1, stop=['x']) is None


def test_goals_at_every_limit_are_accepted():
    assert reason(stop=['s' * 256] * 16, session_id='Zoë visitor-1 ' + 'x' * 114,
                  prompt='p' * 50) is None
    assert reason(context=[{'role': 'user', 'content': ''}] * 1000) is None


def test_options_leave_defaults_to_the_model_and_cap_tokens():
    assert ollama_options(ChatRequest(prompt='x'), SETTINGS) == {'num_predict': 50}
    assert ollama_options(ChatRequest(prompt='x', temperature=0.0, seed=3, max_tokens=7,
                                      stop=['.']), SETTINGS) == {
        'num_predict': 7, 'temperature': 0.0, 'seed': 3, 'stop': ['.']}


@pytest.mark.parametrize('chunks', [
    ['<think>plan</think>Paris'],
    ['<thi', 'nk>pl', 'an</th', 'ink>Par', 'is'],
    ['<think>', 'plan', '</think>', 'Paris'],
])
def test_inline_think_tags_never_reach_the_answer(chunks):
    splitter = ThinkTagSplitter()
    answer, thinking = '', ''
    for chunk in chunks:
        a, t = splitter.feed(chunk)
        answer, thinking = answer + a, thinking + t
    a, t = splitter.flush()
    assert (answer + a, thinking + t) == ('Paris', 'plan')


def test_text_without_tags_passes_through_at_once():
    splitter = ThinkTagSplitter()
    assert splitter.feed('a < b') == ('a < b', '')


def split(chunks, enabled=True):
    splitter = ThinkTagSplitter(enabled)
    parts = [splitter.feed(chunk) for chunk in chunks] + [splitter.flush()]
    return ''.join(a for a, _ in parts), ''.join(t for _, t in parts)


@pytest.mark.parametrize('chunks, expected', [
    # Only a block that opens the answer is reasoning; later tags are answer text.
    (['Use the ', '<think>', ' tag.'], ('Use the <think> tag.', '')),
    (['\n <think>plan</think>A <think>x</think>'], ('A <think>x</think>', 'plan')),
    (['<', 'b>bold</b>'], ('<b>bold</b>', '')),
    (['<think>never closed'], ('', 'never closed')),
    (['<thi'], ('<thi', '')),
])
def test_only_a_leading_think_block_is_reasoning(chunks, expected):
    assert split(chunks) == expected


def test_a_model_that_does_not_think_keeps_its_think_tags():
    assert split(['<think>plan</think>Paris']) == ('Paris', 'plan')
    assert split(['<think>plan</think>Paris'], enabled=False) == ('<think>plan</think>Paris', '')


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_feedback_batch_sends_at_once_after_a_quiet_interval_and_joins_faster_text():
    clock, sent = Clock(), []
    batch = FeedbackBatch(0.01, lambda *message: sent.append(message), clock)
    assert batch.due_in() is None
    batch.add('a', '')
    assert sent == [(0, 'a', '', ())]              # the first text never waits
    clock.now += 0.004
    batch.add('b', 't')
    batch.add('c', '')
    assert sent == [(0, 'a', '', ())]              # held: the interval has not passed
    assert batch.due_in() == pytest.approx(0.006)
    clock.now += 0.006
    assert batch.due_in() == 0.0                   # due even if nothing else arrives
    batch.flush()
    assert sent[1] == (1, 'bc', 't', ())
    clock.now += 1.0
    batch.add('d', '')                             # quiet interval: at once again
    assert sent[2] == (2, 'd', '', ()) and batch.sent == 3 and batch.due_in() is None


def test_feedback_batch_with_no_interval_sends_every_piece_and_skips_empty_ones():
    sent = []
    batch = FeedbackBatch(0.0, lambda *message: sent.append(message), Clock())
    for piece in ('x', '', 'y'):
        batch.add(piece, '')
    batch.flush()
    assert sent == [(0, 'x', '', ()), (1, 'y', '', ())]
