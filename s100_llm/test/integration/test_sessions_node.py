"""Issue 17: sessions at the speed of the cache, kept in a file, as an interface."""

import json
import os
import signal

from action_msgs.msg import GoalStatus
import ollama
import psutil
import pytest
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import Tool
from s100_llm_msgs.msg import ToolResult
from s100_llm_msgs.srv import GetSession
from s100_llm_msgs.srv import ListSessions

from conftest import default_parameters
from harness import free_port
from harness import NodeProcess
from harness import RosClient
from harness import wait_for


def list_sessions(llm):
    return llm.client._call(ListSessions, '/llm/list_sessions', ListSessions.Request()).sessions


def get_session(llm, session_id):
    return llm.client._call(GetSession, '/llm/get_session',
                            GetSession.Request(session_id=session_id))


def file_turns(path):
    """session id -> turns in the sessions file (None when it does not exist)."""
    try:
        with open(path) as stream:
            document = json.load(stream)
    except FileNotFoundError:
        return None
    return {s['session_id']: len(s['turns']) for s in document['sessions']}


def test_the_services_list_and_return_a_sessions_turns(active):
    llm = active(model='tooler:latest')
    assert list_sessions(llm) == []     # configured, no session yet
    assert llm.client.chat('hello', session_id='a', system_prompt='be kind').result.text
    calls = llm.client.chat('say text=hi', session_id='b', tools=[_say_tool()]).result.tool_calls
    assert [c.name for c in calls] == ['say']
    llm.client.chat(session_id='b', tools=[_say_tool()], tool_results=[
        ToolResult(tool_call_id=calls[0].id, name='say', content='said hi')])
    listed = list_sessions(llm)
    assert [(s.session_id, s.turns, s.messages) for s in listed] == [('a', 1, 2), ('b', 2, 4)]
    assert all(s.context_tokens > 0 and s.updated.sec > 0 for s in listed)
    a = get_session(llm, 'a')
    assert a.found and a.system_prompt == 'be kind'
    assert [(m.role, m.content) for m in a.messages] == [
        ('user', 'hello'), ('assistant', 'No tool for: hello')]
    b = get_session(llm, 'b').messages
    assert [m.role for m in b] == ['user', 'assistant', 'tool', 'assistant']
    assert [(c.id, c.name, json.loads(c.arguments_json)) for c in b[1].tool_calls] == [
        (calls[0].id, 'say', {'text': 'hi'})]
    assert (b[2].tool_name, b[2].content) == ('say', 'said hi')
    assert b[3].content == 'say returned: said hi'
    missing = get_session(llm, 'nobody')
    assert not missing.found and not missing.messages


def _say_tool():
    return Tool(name='say', description='say a text', parameters_json=json.dumps({
        'type': 'object', 'properties': {'text': {'type': 'string'}}, 'required': ['text']}))


def test_sessions_survive_a_node_restart(start_llm, tmp_path):
    path = str(tmp_path / 'state' / 'sessions.json')
    llm = start_llm(sessions_file=path)
    llm.activate()
    llm.client.chat('my name is Ada', session_id='s1', system_prompt='be kind')
    llm.client.chat('I like tea', session_id='s1')
    wait_for(lambda: file_turns(path) == {'s1': 2}, 'the file to hold both turns')
    llm.client.close()
    assert llm.node.stop() == 0
    again = start_llm(sessions_file=path)
    assert list_sessions(again) == []       # unconfigured: the file is loaded at configure
    assert again.client.change_state('configure')
    assert [(s.session_id, s.turns) for s in list_sessions(again)] == [('s1', 2)]
    assert 'sessions file' in again.client.wait_log('1 session(s), 2 turn(s) loaded')
    assert again.client.change_state('activate')
    result = again.client.chat('what is my name', session_id='s1').result
    assert result.session_turns == 3
    assert result.text.startswith('system: be kind\nuser: my name is Ada\n')
    assert 'user: I like tea\n' in result.text and result.text.endswith(
        'user: what is my name\n')


def test_a_corrupt_file_is_moved_aside_and_the_node_starts_with_no_sessions(start_llm,
                                                                            tmp_path):
    path = tmp_path / 'sessions.json'
    path.write_text('{"version": 1, "sessions": [{"session_id": ')
    llm = start_llm(sessions_file=str(path))
    assert llm.client.change_state('configure'), llm.node.output()
    warning = llm.client.wait_log('moved to')
    assert 'is not JSON' in warning and 'starting with no sessions' in warning
    aside = [p for p in tmp_path.iterdir() if p.name.startswith('sessions.json.corrupt-')]
    assert len(aside) == 1 and str(aside[0]) in warning
    assert list_sessions(llm) == []
    assert llm.client.change_state('activate')
    llm.client.chat('fresh', session_id='new')
    wait_for(lambda: file_turns(str(path)) == {'new': 1}, 'a new, valid file')


def test_an_unwritable_sessions_directory_fails_configure_with_the_cause(start_llm, tmp_path):
    blocker = tmp_path / 'not-a-directory'
    blocker.write_text('')
    llm = start_llm(sessions_file=str(blocker / 'sessions.json'))
    assert not llm.client.change_state('configure')
    assert 'cannot create its directory' in llm.client.wait_log('sessions_file')
    assert llm.client.state() == 'unconfigured' and not llm.leftovers()


def test_a_kill_during_a_write_loses_at_most_that_turn(start_llm, tmp_path):
    """A large file (sessions of 400 KB) makes each write long enough to be caught while its
    temporary file exists; the node is SIGKILLed then. The file left is the old one or the
    new one, never torn, and a new node continues from it."""
    path = str(tmp_path / 'sessions.json')
    llm = start_llm(sessions_file=path, model='thinker:latest', max_prompt_chars=1_000_000,
                    max_sessions=200)
    llm.activate()
    node = psutil.Process(llm.node.pid)
    big = 'x' * 200_000     # one "word": the scripted model answers it at once
    caught = None
    for index in range(150):
        session_id = f's{index:03d}'
        assert llm.client.chat(big, session_id=session_id).status == \
            GoalStatus.STATUS_SUCCEEDED

        def written():
            return 'written' if session_id in (file_turns(path) or {}) else None
        state = wait_for(lambda: _temporary_open(node, tmp_path) or written(),
                         'the write of this turn to start or end')
        if state != 'written' and index > 0:   # a write in progress over an existing file
            node.suspend()      # stopped, then killed only if it is still writing
            if _temporary_open(node, tmp_path):
                node.send_signal(signal.SIGKILL)
                caught = index
                break
            node.resume()
        wait_for(written, 'the write of this turn')
    assert caught is not None, 'no write was caught in progress'
    llm.node.process.wait(30)
    kept = file_turns(path)        # parses: the old file or the new one
    assert set(kept) in ({f's{i:03d}' for i in range(caught)},
                         {f's{i:03d}' for i in range(caught + 1)})
    again = start_llm(sessions_file=path, model='thinker:latest', max_prompt_chars=1_000_000,
                      max_sessions=200)
    again.activate()
    assert len(list_sessions(again)) == len(kept)
    assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]   # removed at load
    assert again.client.chat('more', session_id='s000').result.session_turns == 2


def _temporary_open(node, directory):
    try:
        return next((f.path for f in node.open_files()
                     if f.path.startswith(str(directory)) and '.tmp-' in f.path), None)
    except psutil.Error:
        return None


def chat_bodies(log_path):
    """The messages array of each goal's /api/chat request, as the bytes that reached the
    server (the cache's warm-ups, num_predict 1, left out)."""
    bodies = []
    with open(log_path) as stream:
        for line in stream:
            body = json.loads(line)['body']
            if '"messages"' not in body or json.loads(body)['options'].get('num_predict') == 1:
                continue
            start = body.index('[', body.index('"messages"'))
            _, end = json.JSONDecoder().raw_decode(body[start:])
            messages = body[start:start + end]
            if messages != '[]':        # the load request
                bodies.append(messages)
    return bodies


def test_what_reaches_the_server_only_grows_at_the_end_except_at_rare_trim_points(
        active, tmp_path):
    log_path = tmp_path / 'requests.jsonl'
    max_turns = 6
    llm = active(model='thinker:latest', session_max_turns=max_turns,
                 env={'OLLAMA_EMULATOR_REQUEST_LOG': str(log_path)})
    for index in range(20):
        result = llm.client.chat(f'question number {index}', session_id='talk',
                                 system_prompt='be brief' if index == 0 else '').result
        assert result.error_code == Chat.Result.NONE
    bodies = chat_bodies(log_path)
    assert len(bodies) == 20
    trims = sum(not later.startswith(earlier[:-1]) for earlier, later in zip(bodies, bodies[1:]))
    assert 1 <= trims <= -(-20 // (max_turns // 2))
    assert all(body.startswith('[{"role":"system","content":"be brief"}') for body in bodies)


@pytest.mark.real_model
def test_the_sessions_token_count_matches_the_models_own(active):
    """The real model with its prefix cache: after turns that reused the cache and a block
    trim, the node's count of the history is what the model counts evaluating it whole.
    Whatever prompt_eval_count says of a reused cache: Ollama 0.2x counts the whole prompt,
    llama-server (0.30+) the tokens it evaluated."""
    llm = active(model='smollm2:135m', num_thread=1, session_max_turns=4)
    questions = ['Hello robot!', 'What can you carry?', 'Is the kitchen clean?',
                 'Where is the cat?', 'Open the door.', 'What time is it?']
    counts = []
    for index, question in enumerate(questions):
        result = llm.client.chat(question, session_id='count', max_tokens=16, temperature=0.0,
                                 system_prompt='You are a home robot.' if index == 0 else '')
        assert result.result.error_code == Chat.Result.NONE
        counts.append(result.result.stats.prompt_tokens)
    assert all(counts)
    node_count = next(s.context_tokens for s in list_sessions(llm) if s.session_id == 'count')
    stored = get_session(llm, 'count')
    history = [{'role': 'system', 'content': stored.system_prompt}] + [
        {'role': m.role, 'content': m.content} for m in stored.messages]
    direct = ollama.Client(host=llm.base_url, timeout=120)
    options = {'num_predict': 1, 'num_thread': 1}
    direct.chat('smollm2:135m', [{'role': 'user', 'content': 'Unrelated.'}], options=options,
                keep_alive=-1)      # takes the slot: the history is then evaluated whole
    model_count = direct.chat('smollm2:135m', history, options=options,
                              keep_alive=-1).prompt_eval_count
    # The model's count includes the 3 tokens that open the answer (<|im_start|>assistant\n).
    assert abs(node_count - model_count) <= 0.1 * model_count, (node_count, model_count)


def test_a_sessions_file_that_is_not_a_regular_file_fails_configure_and_stays(start_llm,
                                                                              tmp_path):
    """Issue 22 item 4: a FIFO (read, it would block configure for ever) and /dev/null (the
    node must not rename or replace it) are refused with the reason, and left as they were."""
    fifo = tmp_path / 'sessions.json'
    os.mkfifo(fifo)
    for path, kind in ((str(fifo), 'a FIFO'), ('/dev/null', 'a character device')):
        before = os.lstat(path)
        llm = start_llm(sessions_file=path)
        assert not llm.client.change_state('configure')
        reason = llm.client.wait_log('not a regular file')
        assert f'sessions_file {path} is {kind}' in reason
        assert llm.client.state() == 'unconfigured' and not llm.leftovers()
        after = os.lstat(path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
        llm.client.close()
        assert llm.node.stop() == 0
    assert not [name for name in os.listdir(tmp_path) if name.startswith('sessions.json.')]


def _session_entry(**fields):
    entry = {'session_id': 's', 'system_prompt': 'be kind', 'base_tokens': 3,
             'updated': 1700000000.5,
             'turns': [{'messages': [{'role': 'user', 'content': 'hi'},
                                     {'role': 'assistant', 'content': 'hello'}],
                        'call_ids': [], 'tokens': 9}]}
    entry.update(fields)
    return entry


@pytest.mark.parametrize('entry, cause', [
    (_session_entry(updated=float('inf')), 'Infinity is not a JSON number'),
    (_session_entry(base_tokens=float('inf')), 'Infinity is not a JSON number'),
    (_session_entry(system_prompt='\ud800'), 'system_prompt must be text'),
    (_session_entry(updated=1e12), 'updated must be a time in seconds'),
])
def test_values_a_message_cannot_carry_are_refused_at_load_and_the_node_stays_up(
        start_llm, tmp_path, entry, cause):
    """Issue 22 items 5 and 6: such a file used to end the node at the first list or get (or
    to send configure to ErrorProcessing); it is now corrupt: moved aside, no sessions."""
    path = tmp_path / 'sessions.json'
    good = _session_entry(session_id='good')
    path.write_text(json.dumps({'version': 1, 'sessions': [good, entry]}))
    llm = start_llm(sessions_file=str(path))
    assert llm.client.change_state('configure'), llm.node.output()
    warning = llm.client.wait_log('moved to')
    assert cause in warning and 'starting with no sessions' in warning
    assert list_sessions(llm) == []
    assert not get_session(llm, 's').found and not get_session(llm, 'good').found
    assert llm.client.state() == 'inactive' and llm.node.process.poll() is None


def test_two_nodes_on_one_sessions_file_the_second_is_refused(
        start_llm, tmp_path, module_domain_id):
    """Issue 22 item 7: the second node's configure fails naming the first; after the first
    cleans up, shuts down or exits, the second configures. (A domain each: both are /llm.)"""
    path = str(tmp_path / 'sessions.json')
    first = start_llm(sessions_file=path)
    assert first.client.change_state('configure'), first.node.output()
    second_node = NodeProcess(
        module_domain_id, tmp_path / 'second.log',
        dict(default_parameters(free_port(), str(tmp_path / 'models2')), sessions_file=path))
    second = RosClient(module_domain_id)
    try:
        wait_for(lambda: second.service_ready('get_state'), 'the second node to come up')
        second.wait_for_node()
        assert not second.change_state('configure')
        reason = second.wait_log('in use by another node')
        assert f'process {first.node.pid} holds {path}.lock' in reason
        assert second.state() == 'unconfigured'
        assert first.client.change_state('cleanup')
        assert second.change_state('configure'), second_node.output()
        assert second.change_state('cleanup')
        # Released at shutdown too, and when the process exits.
        assert first.client.change_state('configure')
        assert first.client.change_state('inactive_shutdown')
        assert second.change_state('configure'), second_node.output()
        assert second.change_state('cleanup')
        first.client.close()
        assert first.node.stop() == 0
        again = start_llm(sessions_file=path)
        assert again.client.change_state('configure')
        again.client.close()
        assert again.node.stop() == 0
        assert second.change_state('configure'), second_node.output()
    finally:
        second.close()
        second_node.stop()
