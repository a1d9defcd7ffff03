"""Conformance of `format` (structured output) and `tools` (tool calls), as Ollama answers them."""

import json

import httpx
import jsonschema
import ollama
import pytest

SCHEMA = {'type': 'object', 'properties': {
    'answer': {'type': 'string'}, 'words': {'type': 'integer'},
    'sure': {'type': 'boolean'}, 'mood': {'enum': ['calm', 'happy']}},
    'required': ['answer', 'words', 'sure', 'mood']}
NAVIGATE = {'type': 'function', 'function': {
    'name': 'navigate_to', 'description': 'Drive to a named place.',
    'parameters': {'type': 'object', 'properties': {
        'place': {'type': 'string'}, 'speed': {'type': 'number'}}, 'required': ['place']}}}
BATTERY = {'type': 'function', 'function': {
    'name': 'report_battery', 'description': 'Battery level in percent.',
    'parameters': {'type': 'object', 'properties': {}}}}


@pytest.fixture
def tooler(emulator):
    emulator.pull('tooler')
    return emulator


def test_json_mode_streams_a_document_in_pieces(emulator):
    parts = list(emulator.client.chat('thinker', [{'role': 'user', 'content': 'door open?'}],
                                      format='json', think=True, stream=True))
    content = ''.join(p.message.content for p in parts)
    assert len([p for p in parts if p.message.content]) > 1
    assert json.loads(content) == {'response': 'Answer: door open?'}
    # The reasoning stays free text; only the answer is constrained.
    assert ''.join(p.message.thinking or '' for p in parts) == 'Thinking about: door open?'


def test_schema_output_is_an_instance_of_the_schema(emulator):
    reply = emulator.client.chat('echo', [{'role': 'user', 'content': 'is it raining'}],
                                 format=SCHEMA)
    document = json.loads(reply.message.content)
    jsonschema.validate(document, SCHEMA)
    assert document == {'answer': 'user: is it raining\n', 'words': 4, 'sure': True,
                        'mood': 'calm'}


@pytest.mark.parametrize('schema', [
    # Draft 7's tuple: a schema without "$schema" is Draft 7, as the node takes it.
    {'type': 'array', 'items': [{'type': 'string'}, {'type': 'integer'}]},
    {'$schema': 'https://json-schema.org/draft/2020-12/schema', 'type': 'array',
     'prefixItems': [{'type': 'string'}, {'type': 'integer'}], 'items': False},
])
def test_a_tuple_gets_one_item_per_position(emulator, schema):
    reply = emulator.client.chat('echo', [{'role': 'user', 'content': 'two words'}],
                                 format=schema)
    assert json.loads(reply.message.content) == ['user: two words\n', 3]


def strict(required: dict) -> dict:
    """An object schema whose properties are all required, none other allowed."""
    return {'type': 'object', 'properties': required, 'required': list(required),
            'additionalProperties': False}


NUMBER = {'type': 'number'}
POINT = strict({'x': NUMBER, 'y': NUMBER})
# The shape interface_schema.py derives for geometry_msgs/msg/PoseStamped (written out: the
# emulator does not depend on the node), with a bounded string and a fixed-size array.
POSE_STAMPED = strict({
    'header': strict({
        'stamp': strict({
            'sec': {'type': 'integer', 'minimum': -2 ** 31, 'maximum': 2 ** 31 - 1},
            'nanosec': {'type': 'integer', 'minimum': 0, 'maximum': 2 ** 32 - 1}}),
        'frame_id': {'type': 'string', 'maxLength': 8}}),
    'pose': strict({
        'position': POINT,
        'covariance': {'type': 'array', 'items': NUMBER, 'minItems': 4, 'maxItems': 4}})})


def test_a_message_shaped_schema_is_filled_from_key_value_words(emulator):
    prompt = 'Where is the dock? frame_id=map x=1.5 sec=-7 covariance=0.25'
    reply = emulator.client.chat('echo', [{'role': 'user', 'content': prompt}],
                                 format=POSE_STAMPED)
    document = json.loads(reply.message.content)
    jsonschema.validate(document, POSE_STAMPED)
    # nanosec and y are not given: the word count of the answer the model would have written.
    words = len(f'user: {prompt}'.split())
    assert document['header'] == {'stamp': {'sec': -7, 'nanosec': words}, 'frame_id': 'map'}
    assert document['pose'] == {'position': {'x': 1.5, 'y': words},
                                'covariance': [0.25] * 4}


@pytest.mark.parametrize('schema, expected', [
    # Numbers keep to no bound: the word count ('user: two words').
    ({'type': 'integer', 'maximum': 1}, 3),
    ({'type': 'string', 'maxLength': 4}, 'user'),
    ({'type': 'string', 'minLength': 1, 'maxLength': 1}, 'u'),
    ({'type': 'array', 'items': {'type': 'boolean'}, 'minItems': 3}, [True] * 3),
    ({'type': 'array', 'items': {'type': 'boolean'}, 'maxItems': 0}, []),
])
def test_strings_and_arrays_keep_to_their_lengths(emulator, schema, expected):
    reply = emulator.client.chat('echo', [{'role': 'user', 'content': 'two words'}],
                                 format=schema)
    assert json.loads(reply.message.content) == expected


def test_num_predict_cuts_the_document(emulator):
    reply = emulator.client.chat('echo', [{'role': 'user', 'content': 'x'}], format=SCHEMA,
                                 options={'num_predict': 3})
    assert reply.done_reason == 'length'
    with pytest.raises(ValueError):
        json.loads(reply.message.content)


@pytest.mark.parametrize('value, message', [
    ('xml', 'invalid format: "xml"; expected "json" or a valid JSON Schema object'),
    (['json'], 'invalid format: ["json"]; expected "json" or a valid JSON Schema object'),
    ({'type': 'bogus'}, "JSON schema error: 'bogus' is not valid under any of the given schemas"),
])
def test_invalid_formats_are_refused(emulator, value, message):
    reply = httpx.post(emulator.url + '/api/chat', json={
        'model': 'echo', 'messages': [{'role': 'user', 'content': 'x'}], 'format': value})
    assert (reply.status_code, reply.json()) == (500, {'error': message})


def test_tools_on_a_model_without_them(emulator):
    with pytest.raises(ollama.ResponseError) as error:
        emulator.client.chat('echo', [{'role': 'user', 'content': 'x'}], tools=[NAVIGATE])
    assert (error.value.status_code, error.value.error) == (
        400, 'registry.ollama.ai/library/echo:latest does not support tools')


def test_tool_calls_are_emitted_whole_in_a_chunk_of_their_own(tooler):
    lines = [json.loads(line) for line in httpx.post(tooler.url + '/api/chat', json={
        'model': 'tooler', 'tools': [NAVIGATE, BATTERY], 'messages': [{
            'role': 'user',
            'content': 'report_battery, then navigate_to place=kitchen speed=0.5'}]},
        timeout=30).text.splitlines()]
    calls = [line for line in lines if line['message'].get('tool_calls')]
    assert len(calls) == 1 and not calls[0]['done'] and calls[0]['message']['content'] == ''
    assert calls[0]['message']['tool_calls'] == [
        {'id': 'call_00000000', 'function': {'index': 0, 'name': 'report_battery',
                                             'arguments': {}}},
        {'id': 'call_00000001', 'function': {'index': 1, 'name': 'navigate_to',
                                             'arguments': {'place': 'kitchen', 'speed': 0.5}}}]
    assert lines[-1]['done'] and lines[-1]['done_reason'] == 'stop'
    assert lines[-1]['eval_count'] > 0


def test_a_tool_exchange_through_the_official_client(tooler):
    messages = [{'role': 'user', 'content': 'Please navigate_to the dock.'}]
    first = tooler.client.chat('tooler', messages, tools=[NAVIGATE])
    (call,) = first.message.tool_calls
    assert (call.function.name, dict(call.function.arguments)) == ('navigate_to', {'place': ''})
    messages += [first.message, {'role': 'tool', 'content': 'arrived', 'tool_name': 'navigate_to'}]
    final = tooler.client.chat('tooler', messages, tools=[NAVIGATE])
    assert (final.message.content, final.message.tool_calls) == ('navigate_to returned: arrived',
                                                                 None)


def test_no_tool_named_is_a_plain_answer(tooler):
    reply = tooler.client.chat('tooler', [{'role': 'user', 'content': 'hello'}], tools=[BATTERY])
    assert (reply.message.content, reply.message.tool_calls) == ('No tool for: hello', None)


LOOK = {'type': 'function', 'function': {
    'name': 'look', 'description': 'Say what the camera sees.',
    'parameters': {'type': 'object', 'properties': {}}}}


def test_steps_separated_by_semicolons_take_one_model_turn_each(tooler):
    """Ollama's multi-step exchange: each turn after tool results calls the next step's tools,
    and the last answers from every result since the question."""
    messages = [{'role': 'user', 'content': 'navigate_to place=kitchen; look'}]
    turns = []
    for result in ('arrived', 'a closed door'):
        reply = tooler.client.chat('tooler', messages, tools=[NAVIGATE, LOOK])
        (call,) = reply.message.tool_calls
        turns.append((call.function.name, dict(call.function.arguments)))
        messages += [reply.message, {'role': 'tool', 'content': result,
                                     'tool_name': call.function.name}]
    assert turns == [('navigate_to', {'place': 'kitchen'}), ('look', {})]
    final = tooler.client.chat('tooler', messages, tools=[NAVIGATE, LOOK])
    assert (final.message.content, final.message.tool_calls) == (
        'navigate_to returned: arrived; look returned: a closed door', None)


def test_a_value_ends_at_a_comma(tooler):
    reply = tooler.client.chat('tooler', [{'role': 'user', 'content':
                                           'navigate_to place=kitchen, speed=0.5, look'}],
                               tools=[NAVIGATE, LOOK])
    assert [(c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls] == [
        ('navigate_to', {'place': 'kitchen', 'speed': 0.5}), ('look', {})]


def test_a_model_can_invent_a_tool(tooler):
    reply = tooler.client.chat('tooler', [{'role': 'user', 'content': 'call:fly to=moon'}],
                               tools=[LOOK])
    (call,) = reply.message.tool_calls
    assert (call.function.name, dict(call.function.arguments)) == ('fly', {'to': 'moon'})
