"""The two runner generations (OLLAMA_EMULATOR_RUNNER) and what both share with Ollama:
/api/show's fields, /api/embed for any model, one runner per weights file, and importing a
GGUF through /api/blobs and /api/create."""

import math
import re

import httpx
import ollama
import psutil
import pytest

from emulator_fixtures import runners_of
from emulator_fixtures import wait

SMOLLM2_TEMPLATE = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                    '{{ end }}<|im_start|>assistant\n')


def test_ollama_runner_generation_runs_the_servers_own_program(start_emulator):
    """Ollama 0.2x: `ollama runner --model <blob> --port N`, the server's own program, threads
    in the load request; a discovery runner without --model at every start."""
    emulator = start_emulator(OLLAMA_EMULATOR_RUNNER='ollama-runner')
    discovery = int(wait(lambda: re.search(r'discovering devices: runner pid=(\d+)',
                                           emulator.output()), 'the discovery runner')[1])
    emulator.pull('echo')
    emulator.client.generate('echo', options={'num_thread': 1})
    (runner,) = runners_of(emulator)
    server = psutil.Process(emulator.process.pid)
    command = runner.cmdline()
    blob = command[command.index('--model') + 1]
    assert command == server.cmdline()[:-1] + ['runner', '--model', blob, '--port',
                                               command[-1]]
    assert runner.name() == server.name() and runner.pid != discovery
    assert blob.startswith(emulator.models + '/blobs/sha256-')
    assert re.search(r'msg=load request=.*NumThreads:1 ', emulator.output())


def test_llama_server_generation_takes_threads_on_its_command_line(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_RUNNER='llama-server')
    emulator.pull('echo')
    emulator.client.generate('echo', options={'num_thread': 3})
    (runner,) = runners_of(emulator)
    command = runner.cmdline()
    assert command[command.index('-t') + 1] == '3'
    assert 'discovering devices' not in emulator.output()


def test_an_unknown_generation_is_refused_at_start(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_RUNNER='llamafile', wait=False)
    assert emulator.process.wait(30) == 1
    assert 'OLLAMA_EMULATOR_RUNNER' in emulator.output()


@pytest.mark.parametrize('generation, grows', [('llama-server', False),
                                               ('ollama-runner', True)])
def test_prompt_eval_count_with_a_reused_cache(start_emulator, generation, grows):
    """Ollama 0.2x reports the whole prompt even when it reused the cache; llama-server
    (0.30+) the tokens it evaluated."""
    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='2', OLLAMA_EMULATOR_RUNNER=generation)
    emulator.pull('smollm2:135m')
    options = {'temperature': 0, 'num_predict': 8}
    history = [{'role': 'system', 'content': 'You are a helpful robot. ' * 20},
               {'role': 'user', 'content': 'What is the capital of France?'}]
    first = emulator.client.chat('smollm2:135m', history, options=options)
    history += [first.message, {'role': 'user', 'content': 'And of Spain?'}]
    second = emulator.client.chat('smollm2:135m', history, options=options)
    assert first.prompt_eval_count > 100
    if grows:
        assert second.prompt_eval_count > first.prompt_eval_count + first.eval_count
    else:
        assert 0 < second.prompt_eval_count < 40


def test_show_has_ollamas_field_set(emulator):
    shown = httpx.post(emulator.url + '/api/show', json={'model': 'echo'}).json()
    assert 'license' not in shown
    assert {'modelfile', 'parameters', 'template', 'system', 'details', 'model_info',
            'tensors', 'capabilities', 'modified_at'} <= set(shown)
    assert shown['parameters'] == 'stop' + ' ' * 27 + '"<|im_end|>"'
    assert shown['details']['parent_model'].startswith(emulator.models + '/blobs/sha256-')


@pytest.mark.parametrize('model, width', [('echo', 64), ('smollm2:135m', 576)])
def test_a_completion_only_model_embeds(emulator, model, width):
    emulator.pull(model)
    assert 'embedding' not in emulator.client.show(model).capabilities
    (vector,) = emulator.client.embed(model, 'The kitchen is clean.').embeddings
    assert len(vector) == width
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize('generation', ['llama-server', 'ollama-runner'])
def test_two_names_of_one_blob_share_one_runner(start_emulator, generation):
    """Loading the second name replaces the first one's runner, as in Ollama."""
    emulator = start_emulator(OLLAMA_EMULATOR_RUNNER=generation)
    emulator.pull('echo')
    emulator.client.create('alias', from_='echo')
    emulator.client.generate('echo')
    (first,) = runners_of(emulator)
    emulator.client.generate('alias')
    (second,) = wait(lambda: [r for r in runners_of(emulator) if r.pid != first.pid],
                     'the runner of the second name')
    wait(lambda: runners_of(emulator) == [second], "the first name's runner to exit")
    assert [m.model for m in emulator.client.ps().models] == ['alias:latest']


def test_a_gguf_is_imported_through_blobs_and_create(start_emulator, tmp_path):
    """What `ollama create -f Modelfile` with `FROM ./file.gguf` does, through the client."""
    from ollama_emulator import catalog

    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='2')
    gguf = catalog.MODELS['smollm2:135m'].gguf_path()
    digest = emulator.client.create_blob(gguf)
    assert httpx.head(f'{emulator.url}/api/blobs/{digest}').status_code == 200
    assert httpx.head(f'{emulator.url}/api/blobs/sha256:{"0" * 64}').status_code == 404
    emulator.client.create('robot', files={gguf.name: digest}, template=SMOLLM2_TEMPLATE,
                           parameters={'stop': ['<|im_end|>']})
    shown = emulator.client.show('robot')
    assert shown.template == SMOLLM2_TEMPLATE and 'completion' in shown.capabilities
    reply = emulator.client.chat('robot', [{'role': 'user', 'content': 'Say hello.'}],
                                 options={'temperature': 0, 'num_predict': 8})
    assert reply.message.content and reply.eval_count > 0
    with pytest.raises(ollama.ResponseError) as error:
        emulator.client.chat('robot', [{'role': 'user', 'content': 'x'}],
                             tools=[{'type': 'function', 'function': {'name': 'f'}}])
    assert 'does not support tools' in error.value.error
