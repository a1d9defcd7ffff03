"""Conformance of the emulator's HTTP API, through the official client and raw HTTP."""

import json
import pathlib

import httpx
import ollama
import psutil
import pytest

from emulator_fixtures import runners_of
from emulator_fixtures import wait


def test_health_and_version(emulator):
    assert httpx.get(emulator.url).text == 'Ollama is running'
    assert httpx.head(emulator.url).status_code == 200
    assert httpx.get(emulator.url + '/api/version').json()['version']


def test_models_directory_layout_and_tags(emulator):
    models = pathlib.Path(emulator.models)
    manifest_path = models / 'manifests/registry.ollama.ai/library/echo/latest'
    manifest = json.loads(manifest_path.read_text())
    assert manifest['schemaVersion'] == 2
    media = [layer['mediaType'] for layer in manifest['layers']]
    assert 'application/vnd.ollama.image.model' in media
    for layer in manifest['layers'] + [manifest['config']]:
        blob = models / 'blobs' / layer['digest'].replace(':', '-')
        assert blob.stat().st_size == layer['size']
    tags = {m.model: m for m in emulator.client.list().models}
    assert set(tags) == {'echo:latest', 'thinker:latest', 'endless:latest', 'tiny:latest'}
    assert tags['echo:latest'].size == sum(layer['size'] for layer in manifest['layers'])


def test_pull_progress_lines(start_emulator):
    emulator = start_emulator()
    lines = [json.loads(line) for line in httpx.post(
        emulator.url + '/api/pull', json={'model': 'echo'}).text.splitlines()]
    statuses = [line['status'] for line in lines]
    assert statuses[0] == 'pulling manifest'
    assert statuses[-3:] == ['verifying sha256 digest', 'writing manifest', 'success']
    layer_lines = [line for line in lines if 'digest' in line]
    assert layer_lines and all(line['completed'] <= line['total'] for line in layer_lines)
    assert all(line['status'] == f"pulling {line['digest'][7:19]}" for line in layer_lines)


def test_pull_of_an_unknown_model_fails_like_ollama(start_emulator):
    emulator = start_emulator()
    reply = httpx.post(emulator.url + '/api/pull', json={'model': 'nosuchmodel'})
    assert reply.status_code == 200
    assert reply.text.splitlines()[-1] == '{"error":"pull model manifest: file does not exist"}'
    with pytest.raises(ollama.ResponseError, match='file does not exist'):
        for _ in emulator.client.pull('nosuchmodel', stream=True):
            pass


@pytest.mark.parametrize('name', [';rm -rf /', '../../etc', 'a b', '../library/tiny',
                                  '.../library/tiny'])
def test_hostile_names_are_invalid(emulator, name):
    reply = httpx.post(emulator.url + '/api/pull', json={'model': name})
    assert (reply.status_code, reply.json()) == (400, {'error': 'invalid model name'})


def test_show_and_delete(emulator):
    shown = emulator.client.show('thinker')
    assert 'thinking' in shown.capabilities
    assert shown.modelinfo['qwen2.context_length'] == 4096
    emulator.client.delete('tiny')
    assert 'tiny:latest' not in {m.model for m in emulator.client.list().models}
    with pytest.raises(ollama.ResponseError) as error:
        emulator.client.delete('tiny')
    assert error.value.status_code == 404
    assert error.value.error == "model 'tiny:latest' not found"


def test_streamed_chat_chunks_and_final_stats(emulator):
    parts = list(emulator.client.chat('echo', [{'role': 'system', 'content': 'be brief'},
                                               {'role': 'user', 'content': 'hi there'}],
                                      stream=True))
    assert [p.done for p in parts[:-1]] == [False] * (len(parts) - 1)
    text = ''.join(p.message.content for p in parts)
    assert text == 'system: be brief\nuser: hi there\n'
    final = parts[-1]
    assert final.done and final.done_reason == 'stop'
    assert final.eval_count == len(parts) - 1
    assert final.prompt_eval_count > 0
    assert final.total_duration >= final.eval_duration > 0


def test_an_opt_in_request_log_keeps_each_chat_body_as_it_arrived(start_emulator, tmp_path):
    log = tmp_path / 'requests.jsonl'
    emulator = start_emulator(OLLAMA_EMULATOR_REQUEST_LOG=str(log))
    emulator.pull('echo')
    raw = b'{"model": "echo", "messages": [{"role": "user", "content": "hi \\u2713"}]}'
    httpx.post(emulator.url + '/api/chat', content=raw, timeout=30)
    emulator.client.chat('echo', [{'role': 'user', 'content': 'again'}])
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry['path'] for entry in entries] == ['/api/chat', '/api/chat']
    assert entries[0]['body'].encode() == raw
    assert json.loads(entries[1]['body'])['messages'] == [{'role': 'user', 'content': 'again'}]


@pytest.mark.parametrize('value, said', [
    ('1', 'level=INFO source=emulator msg="cloud features disabled (OLLAMA_NO_CLOUD)"'),
    (None, 'level=INFO source=emulator msg="cloud features enabled'),
])
def test_ollama_no_cloud_is_accepted_and_said(start_emulator, value, said):
    emulator = start_emulator(**({} if value is None else {'OLLAMA_NO_CLOUD': value}))
    wait(lambda: said in pathlib.Path(emulator.log_path).read_text(), 'the cloud line')
    assert emulator.client.list().models == []


def test_raw_ndjson_stream_and_stream_false(emulator):
    with httpx.stream('POST', emulator.url + '/api/chat', json={
            'model': 'echo', 'messages': [{'role': 'user', 'content': 'a b'}]}) as reply:
        assert reply.headers['content-type'] == 'application/x-ndjson'
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert lines[0]['message'] == {'role': 'assistant', 'content': 'user:'}
    assert lines[0]['created_at'].endswith('Z')
    whole = emulator.client.chat('echo', [{'role': 'user', 'content': 'a b'}], stream=False)
    assert whole.message.content == 'user: a b\n' and whole.done_reason == 'stop'


def test_generate_endpoint(emulator):
    reply = emulator.client.generate('echo', 'hello', system='sys')
    assert reply.response == 'system: sys\nuser: hello\n'


def test_thinking_chunks_and_think_false(emulator):
    parts = list(emulator.client.chat('thinker', [{'role': 'user', 'content': 'why'}],
                                      think=True, stream=True))
    thinking = ''.join(p.message.thinking or '' for p in parts)
    content = ''.join(p.message.content for p in parts)
    assert (thinking, content) == ('Thinking about: why', 'Answer: why')
    plain = emulator.client.chat('thinker', [{'role': 'user', 'content': 'why'}], think=False)
    assert (plain.message.thinking, plain.message.content) == (None, 'Answer: why')


def test_think_on_a_model_that_cannot(emulator):
    with pytest.raises(ollama.ResponseError) as error:
        emulator.client.chat('echo', [{'role': 'user', 'content': 'x'}], think=True)
    assert (error.value.status_code, error.value.error) == (400,
                                                            '"echo" does not support thinking')


@pytest.mark.parametrize('body, status, message', [
    ({'messages': []}, 400, 'model is required'),
    ({'model': 'ghost', 'messages': []}, 404, "model 'ghost:latest' not found"),
    ({'model': 'echo', 'keep_alive': '10'}, 400, 'time: missing unit in duration "10"'),
])
def test_error_table(emulator, body, status, message):
    reply = httpx.post(emulator.url + '/api/chat', json=body)
    assert (reply.status_code, reply.json()) == (status, {'error': message})


def test_preload_keep_alive_and_unload(emulator):
    loaded = emulator.client.generate('echo', keep_alive='-1m')
    assert loaded.done_reason == 'load'
    (model,) = emulator.client.ps().models
    assert model.model == 'echo:latest' and model.expires_at.year == 2318
    assert model.size_vram == 0 and model.context_length == 4096
    # keep_alive sticks: a request without it keeps "forever".
    emulator.client.chat('echo', [{'role': 'user', 'content': 'x'}])
    assert emulator.client.ps().models[0].expires_at.year == 2318
    emulator.client.chat('echo', [{'role': 'user', 'content': 'x'}], keep_alive=600)
    assert emulator.client.ps().models[0].expires_at.year < 2318
    unloaded = emulator.client.generate('echo', keep_alive=0)
    assert unloaded.done_reason == 'unload'
    # Unloading a model that is not loaded is fine; one that does not exist is 404.
    assert emulator.client.chat('tiny', [], keep_alive=0).done_reason == 'unload'
    with pytest.raises(ollama.ResponseError):
        emulator.client.generate('ghost', keep_alive=0)


def test_keep_alive_expiry_unloads_and_ends_the_runner(emulator):
    emulator.client.generate('echo', keep_alive='200ms')
    (runner,) = runners_of(emulator)
    wait(lambda: not emulator.client.ps().models, 'the model to expire')
    wait(lambda: not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE,
         'the runner to exit')


def test_num_predict_and_stop(emulator):
    reply = emulator.client.chat('endless', [{'role': 'user', 'content': 'go'}],
                                 options={'num_predict': 5})
    assert reply.done_reason == 'length' and reply.eval_count == 5
    assert reply.message.content == 'tok0 tok1 tok2 tok3 tok4 '
    stopped = emulator.client.chat('endless', [{'role': 'user', 'content': 'go'}],
                                   options={'stop': ['tok3']})
    assert stopped.message.content == 'tok0 tok1 tok2 ' and stopped.done_reason == 'stop'


def test_tiny_context_truncates_old_turns(emulator):
    messages = [{'role': 'system', 'content': 'sys'}]
    for index in range(20):
        messages += [{'role': 'user', 'content': f'question {index} ' * 3},
                     {'role': 'assistant', 'content': f'answer {index}'}]
    messages.append({'role': 'user', 'content': 'last'})
    reply = emulator.client.chat('tiny', messages, options={'num_predict': 500})
    # The system prompt is kept, the oldest turns are dropped, and what is left of the
    # context after the prompt bounds the answer.
    assert reply.message.content.startswith('system: sys\nassistant: answer')
    assert 'question 0 ' not in reply.message.content
    assert reply.prompt_eval_count <= 64
    assert reply.done_reason == 'length'
