"""Issue 15: structured output (format) and tool calls through the chat action."""

import json

from action_msgs.msg import GoalStatus
from jsonschema.validators import validator_for
import pytest
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import Tool
from s100_llm_msgs.msg import ToolResult

from harness import assert_aborted
from harness import run_installed
from harness import wait_for

ROBOT_COMMAND = {
    'type': 'object',
    'properties': {
        'action': {'type': 'string', 'enum': ['navigate', 'say', 'wait']},
        'place': {'type': 'string'},
        'speed': {'type': 'integer', 'minimum': 1, 'maximum': 5},
    },
    'required': ['action', 'place', 'speed'],
}


@pytest.mark.real_model
def test_schema_constrained_output_of_the_real_model_parses_and_matches(active):
    llm = active(model='smollm2:135m', feedback_min_interval=0.0,
                 env={'OLLAMA_EMULATOR_THREADS': '2'})
    prompts = ['Send the robot to the kitchen, slowly.', 'Tell the hall the door is open.',
               'Wait in the garage.']
    for prompt, seed in zip(prompts, (1, 7, 42)):
        run = llm.client.chat(f'{prompt} Answer as JSON.', format=json.dumps(ROBOT_COMMAND),
                              temperature=0.7, seed=seed, max_tokens=200)
        assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
        document = json.loads(run.result.text)
        validator_for(ROBOT_COMMAND)(ROBOT_COMMAND).validate(document)
        # Feedback streamed the JSON text in pieces; only the whole text parses.
        wait_for(lambda: len(run.feedback) >= run.result.feedback_count, 'every feedback')
        assert run.streamed_text == run.result.text and len(run.feedback) > 1


def test_json_mode_of_a_scripted_model(active):
    llm = active()
    run = llm.client.chat('hello', format='json')
    assert run.status == GoalStatus.STATUS_SUCCEEDED
    assert json.loads(run.result.text) == {'response': 'user: hello\n'}


# Every format the checks refuse is a unit test (test_chat_logic); one follows it through the node.
@pytest.mark.parametrize('fmt, reason', [
    ('{"type": "objekt"}', "format is not a valid JSON Schema: 'objekt' is not valid"),
])
def test_an_invalid_format_ends_invalid_goal_with_its_reason(active, fmt, reason):
    llm = active()
    run = llm.client.send_chat(Chat.Goal(prompt='x', format=fmt))
    assert_aborted(run, Chat.Result.INVALID_GOAL, reason)
    assert reason in llm.client.wait_log('chat goal rejected')


def test_truncated_json_ends_format_mismatch_with_the_raw_text(active):
    llm = active()
    run = llm.client.send_chat(Chat.Goal(prompt='go to the kitchen',
                                         format=json.dumps(ROBOT_COMMAND), max_tokens=3))
    result = assert_aborted(run, Chat.Result.FORMAT_MISMATCH, 'the answer is not valid JSON')
    assert 'cut by max_tokens' in result.error_message
    assert result.text and result.text.startswith('{') and result.done_reason == 'error'
    assert 'FORMAT_MISMATCH' in llm.client.wait_log('chat aborted')


def test_a_whole_answer_that_breaks_the_schema_ends_format_mismatch(active):
    # Ollama's grammar compiler does not enforce every JSON Schema keyword; the scripted model
    # enforces none of the bounds (its integer is the word count of its answer, here 6), so its
    # whole, parsing answer breaks "maximum": the node's own check catches it.
    llm = active()
    run = llm.client.send_chat(Chat.Goal(prompt='go to the hall now', format=json.dumps(
        ROBOT_COMMAND)))
    result = assert_aborted(run, Chat.Result.FORMAT_MISMATCH,
                            'does not match the format schema: 6 is greater than the maximum '
                            'of 5 (at speed)')
    assert json.loads(result.text)['speed'] == 6


def test_a_pattern_that_backtracks_without_end_ends_format_mismatch_and_the_node_answers(
        active):
    # Issue 22: jsonschema ran the pattern with Python's re, which holds the GIL: the check of
    # this answer ("user: aaa...a!") never ended and no thread of the node ran meanwhile.
    llm = active()
    fmt = {'type': 'object', 'properties': {'said': {'type': 'string', 'pattern': '(a|aa)+$'}},
           'required': ['said']}
    run = llm.client.send_chat(Chat.Goal(prompt='a' * 60 + '!', format=json.dumps(fmt)))
    assert run.wait_accepted()
    ended = llm.client.on_executor(run.handle.get_result_async)
    while not ended.done():     # each call fails past the harness's liveness bound (WAIT)
        assert llm.client.state() == 'active'
    assert_aborted(run, Chat.Result.FORMAT_MISMATCH,
                   "checking the answer against pattern '(a|aa)+$' took longer than 1 s")


def test_a_cut_json_mode_answer_ends_format_mismatch(active):
    # (A complete answer that parses but breaks the schema cannot come from a constrained
    # model: test_chat_logic checks that case on the node's check itself.)
    llm = active()
    run = llm.client.send_chat(Chat.Goal(prompt='hello there robot', format='json',
                                         max_tokens=2))
    assert_aborted(run, Chat.Result.FORMAT_MISMATCH, 'not valid JSON')


PLACE = {'type': 'object', 'properties': {'place': {'type': 'string'}}, 'required': ['place']}
NAVIGATE = Tool(name='navigate_to', description='Drive the robot to a named place.',
                parameters_json=json.dumps({'type': 'object', 'properties': {
                    'place': {'type': 'string'}}, 'required': ['place']}))
SAY = Tool(name='say', description='Speak a sentence.', parameters_json=json.dumps(
    {'type': 'object', 'properties': {'text': {'type': 'string'}}, 'required': ['text']}))


def test_a_two_step_tool_exchange_in_a_session(active):
    llm = active(model='tooler:latest')
    first = llm.client.chat('please navigate_to place=kitchen', session_id='robot',
                            tools=[NAVIGATE, SAY])
    assert first.status == GoalStatus.STATUS_SUCCEEDED, first.result.error_message
    assert first.result.done_reason == Chat.Result.DONE_TOOL_CALLS
    [call] = first.result.tool_calls
    assert call.name == 'navigate_to' and json.loads(call.arguments_json) == {'place': 'kitchen'}
    assert call.id.startswith('call_') and first.result.session_turns == 1
    # The behaviour ran the tool; the model continues from its result, without a prompt.
    second = llm.client.chat('', session_id='robot', tools=[NAVIGATE, SAY], tool_results=[
        ToolResult(tool_call_id=call.id, name='navigate_to', content='arrived at kitchen')])
    assert second.status == GoalStatus.STATUS_SUCCEEDED, second.result.error_message
    assert second.result.done_reason == Chat.Result.DONE_STOP and not second.result.tool_calls
    assert second.result.text == 'navigate_to returned: arrived at kitchen'
    assert second.result.session_turns == 2
    # The session kept the whole exchange: a new tool call and its result work the same way.
    third = llm.client.chat('now say text=done', session_id='robot', tools=[NAVIGATE, SAY])
    [call] = third.result.tool_calls
    assert (call.name, json.loads(call.arguments_json)) == ('say', {'text': 'done'})
    # A result must answer a call of the last turn, by its id and tool.
    stale = llm.client.send_chat(Chat.Goal(session_id='robot', tool_results=[
        ToolResult(tool_call_id='call_0000', name='say', content='x')]))
    assert_aborted(stale, Chat.Result.INVALID_GOAL,
                   f"'call_0000' is not a tool call of the last turn (its calls: {call.id})")


def test_tools_on_a_model_without_the_capability_end_invalid_goal(active):
    llm = active()
    run = llm.client.send_chat(Chat.Goal(prompt='navigate_to place=x', tools=[NAVIGATE]))
    assert_aborted(run, Chat.Result.INVALID_GOAL, "model 'echo:latest' cannot call tools")


# Each tool check is a unit test (test_chat_logic); these follow the Tool and ToolResult
# messages through the node to a refusal.
@pytest.mark.parametrize('fields, reason', [
    ({'tools': [NAVIGATE, NAVIGATE]}, "tool 'navigate_to' is offered twice"),
    ({'tool_results': [ToolResult(name='say', content='ok')]}, 'tool_results need the session'),
])
def test_bad_tool_fields_end_invalid_goal_with_their_reason(active, fields, reason):
    llm = active(model='tooler:latest')
    run = llm.client.send_chat(Chat.Goal(prompt='x', **fields))
    assert_aborted(run, Chat.Result.INVALID_GOAL, reason)


def test_capabilities_are_in_the_model_status(active):
    llm = active(model='tooler:latest')
    statuses = llm.client.fresh_statuses(lambda s: 'llm: Model' in s, 'the Model status')
    capabilities = {kv.key: kv.value for kv in statuses['llm: Model'].values}['capabilities']
    assert set(capabilities.split(', ')) == {'completion', 'tools'}


def test_a_thinking_model_keeps_its_reasoning_out_of_the_json(active):
    llm = active(model='thinker:latest')
    run = llm.client.chat('the hall', format=json.dumps(ROBOT_COMMAND))
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert run.result.thinking.startswith('Thinking about')
    validator_for(ROBOT_COMMAND)(ROBOT_COMMAND).validate(json.loads(run.result.text))


def test_chat_cli_format_and_tools(active, domain_id, tmp_path):
    active(model='tooler:latest')
    schema = tmp_path / 'command.schema.json'
    schema.write_text(json.dumps(PLACE))
    code, out, err = run_installed(domain_id, 'chat', '--format', str(schema), 'go to the hall')
    assert code == 0, err
    validator_for(PLACE)(PLACE).validate(json.loads(out))
    tools = tmp_path / 'tools.json'
    tools.write_text(json.dumps([{'type': 'function', 'function': {
        'name': 'navigate_to', 'description': 'Drive somewhere.',
        'parameters': json.loads(NAVIGATE.parameters_json)}}]))
    code, out, err = run_installed(domain_id, 'chat', '--tools', str(tools),
                                   'navigate_to place=dock')
    assert code == 0, err
    assert out.startswith('tool call call_') and out.endswith(
        ': navigate_to {"place": "dock"}\n')
    assert '[tool_calls]' in err
    # Interactive: the user answers the call, the model continues from the result.
    code, out, err = run_installed(domain_id, 'chat', '--tools', str(tools),
                                   stdin='navigate_to place=dock\ndocked\n\n')
    assert code == 0, err
    assert 'navigate_to returned: docked' in out
    assert 'capabilities: completion, tools' in err


def test_chat_cli_info_and_unusable_files(active, domain_id, tmp_path):
    active(model='thinker:latest')
    code, out, err = run_installed(domain_id, 'chat', '--info')
    assert (code, out) == (0, 'model thinker:latest, capabilities: completion, thinking\n'), err
    bad = tmp_path / 'tools.json'
    bad.write_text('{"name": "x"}')
    code, out, err = run_installed(domain_id, 'chat', '--tools', str(bad), 'hi')
    assert code == 2 and 'must hold a JSON list of tool objects' in err
    code, out, err = run_installed(domain_id, 'chat', '--format',
                                   str(tmp_path / 'missing.json'), 'hi')
    assert code == 2 and 'cannot read' in err
