"""Issue 16 (embeddings): the ~/embed service with an embedding model loaded next to the chat
model, driven over DDS like a behaviour; what runs is checked from outside (/api/ps, psutil),
the chat CLI's --embed and the remember_recall example as the installed executables."""

import math
import os
import signal
import subprocess

from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticStatus
import ollama
import psutil
from s100_llm_msgs.action import Chat
from s100_llm_msgs.srv import Embed

from harness import api_ps
from harness import run_installed
from harness import runners
from harness import servers
from harness import wait_for
from s100_llm.core.server import model_blob
from s100_llm.core.server import PortOwner
from s100_llm.core.server import probe

EMBEDDER = 'embedder:latest'
FACTS = ['The charging dock is in the hall.',
         'The kitchen is at the end of the corridor.',
         'The red toolbox is on the workshop shelf.']
QUESTION = 'Where is the charging dock?'


def embed(llm, texts, **fields):
    return llm.client._call(Embed, '/llm/embed', Embed.Request(texts=texts, **fields))


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def runner_of(llm, model):
    """The runner process holding the model's weights (its blob in the command line)."""
    blob = model_blob(llm.models_dir, model)
    (runner,) = [p for p in runners(llm)
                 if any(os.path.basename(part) == blob for part in p.info['cmdline'])]
    return runner


def status_values(statuses, task):
    return {kv.key: kv.value for kv in statuses[f'llm: {task}'].values}


def test_texts_are_embedded_and_the_question_is_nearest_its_fact(active):
    llm = active(embedding_model=EMBEDDER)
    reply = embed(llm, FACTS + [QUESTION])
    assert reply.error_code == Embed.Response.NONE, reply.error_message
    assert reply.model == EMBEDDER and reply.prompt_tokens > 0 and reply.error_message == ''
    vectors = [list(e.vector) for e in reply.embeddings]
    assert len(vectors) == 4 and {len(v) for v in vectors} == {64}
    assert all(math.isclose(dot(v, v), 1.0, rel_tol=1e-5) for v in vectors)
    similarities = [dot(vectors[-1], fact) for fact in vectors[:-1]]
    assert max(range(3), key=lambda i: similarities[i]) == 0, similarities
    shortened = embed(llm, FACTS, dimensions=16)
    assert shortened.error_code == Embed.Response.NONE, shortened.error_message
    assert {len(e.vector) for e in shortened.embeddings} == {16}
    assert all(math.isclose(dot(e.vector, e.vector), 1.0, rel_tol=1e-5)
               for e in shortened.embeddings)


def test_an_over_long_text_without_truncate_is_refused_with_ollamas_reason(active):
    llm = active(embedding_model=EMBEDDER)
    long_text = ' '.join(f'word{i}' for i in range(600))    # the embedder's context is 512
    refused = embed(llm, [long_text], truncate=False)
    assert refused.error_code == Embed.Response.INVALID_REQUEST and not refused.embeddings
    assert 'the input length exceeds the context length' in refused.error_message
    assert 'embed request refused' in llm.client.wait_log('the input length exceeds')
    assert embed(llm, [long_text]).error_code == Embed.Response.NONE   # truncate: the default


def test_request_size_limits(active):
    llm = active(embedding_model=EMBEDDER, max_embed_texts=2, max_embed_chars=20)
    for texts, reason in [([], 'texts is empty'),
                          (['a', 'b', 'c'], '3 texts exceed max_embed_texts 2'),
                          (['a', ''], 'texts[1] is empty'),
                          (['0123456789', '0123456789a'],
                           'the texts hold 21 characters in all, more than max_embed_chars 20')]:
        reply = embed(llm, texts)
        assert reply.error_code == Embed.Response.INVALID_REQUEST and not reply.embeddings
        assert reply.error_message.startswith(reason), reply.error_message
        llm.client.wait_log(f'embed request refused: {reason}')
    assert embed(llm, ['0123456789', '0123456789']).error_code == Embed.Response.NONE


def test_not_serving_when_inactive_or_without_an_embedding_model(start_llm):
    llm = start_llm(embedding_model=EMBEDDER)
    assert llm.client.change_state('configure')
    reply = embed(llm, ['hello'])
    assert reply.error_code == Embed.Response.NOT_SERVING
    assert reply.error_message == 'the node is not active (state: inactive)'
    llm.client.wait_log('embed request refused: the node is not active')
    llm.node.stop()
    plain = start_llm()
    assert plain.client.change_state('configure')
    # Set after configure: it applies at the next configure (the server makes room for it).
    plain.client.set_parameters(embedding_model=EMBEDDER)
    assert plain.client.change_state('activate')
    reply = embed(plain, ['hello'])
    assert (reply.error_code, reply.error_message) == (
        Embed.Response.NOT_SERVING,
        'the node serves no embeddings: no embedding_model was set at the last configure (a '
        'change applies at the next configure)')
    statuses = plain.client.fresh_statuses(lambda s: 'llm: Embedding model' in s)
    assert statuses['llm: Embedding model'].level == DiagnosticStatus.OK
    assert statuses['llm: Embedding model'].message == \
        'none: no embedding_model at the last configure'
    assert api_ps(plain)[0]['name'] == 'echo:latest' and len(api_ps(plain)) == 1
    for transition in ('deactivate', 'cleanup', 'configure', 'activate'):
        assert plain.client.change_state(transition)
    assert embed(plain, ['hello']).error_code == Embed.Response.NONE


def test_an_embedding_model_that_cannot_embed_fails_activate(start_llm):
    llm = start_llm(embedding_model='thinker:latest')
    assert llm.client.change_state('configure')
    assert not llm.client.change_state('activate')
    assert llm.client.state() == 'inactive'
    assert ("embedding_model 'thinker:latest' cannot embed: it lacks the embedding capability "
            '(capabilities: completion, thinking)') in llm.client.wait_log('activate failed')
    assert api_ps(llm) == [] and not runners(llm)


def test_an_embedding_model_that_names_the_chat_models_weights_fails_activate(start_llm):
    """Issue 23.4: Ollama keeps one runner per weights file, so two names of one blob would
    swap runners (the emulator does as Ollama: loading one name unloads the other)."""
    llm = start_llm(embedding_model='embedding-alias')
    assert llm.client.change_state('configure')
    client = ollama.Client(host=llm.base_url, timeout=60)
    client.pull('echo:latest')
    client.create('embedding-alias', from_='echo:latest')     # what `ollama cp` makes
    assert not llm.client.change_state('activate')
    refusal = llm.client.wait_log('activate failed')
    blob = model_blob(llm.models_dir, 'echo:latest')
    assert ("model 'echo:latest' and embedding_model 'embedding-alias' are two names of one "
            f'weights file ({blob})') in refusal and 'use one name for both' in refusal
    assert api_ps(llm) == [] and not runners(llm)


def test_the_memory_guard_counts_both_models(start_llm):
    too_much = psutil.virtual_memory().total // 1024 ** 2 * 2
    llm = start_llm(embedding_model=EMBEDDER, memory_margin_mb=too_much)
    assert llm.client.change_state('configure')
    assert not llm.client.change_state('activate')
    refusal = llm.client.wait_log('activate failed')
    assert "not enough memory for 'echo:latest' (" in refusal
    assert f"GiB) and embedding_model '{EMBEDDER}' (" in refusal and 'they need' in refusal
    assert api_ps(llm) == [] and not runners(llm)


def test_both_models_are_loaded_while_active_and_unloaded_at_deactivate(start_llm):
    llm = start_llm(embedding_model=EMBEDDER)
    client = llm.client
    assert client.change_state('configure')
    (server,) = servers(llm)
    # max_loaded_models is 1 by default: raised so that the embedder never evicts the chat model
    assert server.environ()['OLLAMA_MAX_LOADED_MODELS'] == '2'
    assert client.change_state('activate')
    assert sorted(m['name'] for m in api_ps(llm)) == ['echo:latest', EMBEDDER]
    assert all(m['expires_at'].startswith('2318') for m in api_ps(llm))
    chat_runner, embed_runner = runner_of(llm, 'echo:latest'), runner_of(llm, EMBEDDER)
    assert chat_runner.pid != embed_runner.pid and len(runners(llm)) == 2
    # An embed and a chat in turn: neither model is unloaded for the other.
    assert embed(llm, ['hello']).error_code == Embed.Response.NONE
    assert client.chat('hi').result.text == 'user: hi\n'
    assert embed(llm, ['hello']).error_code == Embed.Response.NONE
    assert {p.pid for p in runners(llm)} == {chat_runner.pid, embed_runner.pid}
    statuses = client.fresh_statuses(
        lambda s: status_values(s, 'Embedding model')['loaded'] == 'True')
    embedding = status_values(statuses, 'Embedding model')
    assert statuses['llm: Embedding model'].level == DiagnosticStatus.OK
    assert (embedding['model'], embedding['capabilities']) == (EMBEDDER, 'embedding')
    assert embedding['context length'] == '512'
    assert status_values(statuses, 'Ollama server')['runners'] == '2'
    assert client.change_state('deactivate')
    assert api_ps(llm) == [] and not runners(llm)
    assert not chat_runner.is_running() and not embed_runner.is_running()
    assert 'their runners have exited' in client.wait_log(f"'echo:latest' and '{EMBEDDER}' "
                                                          'unloaded')


def test_an_adopted_server_that_keeps_one_model_fails_activate_saying_so(
        start_llm, ollama_port, models_dir):
    env = dict(os.environ, OLLAMA_HOST=f'127.0.0.1:{ollama_port}', OLLAMA_MODELS=models_dir,
               OLLAMA_MAX_LOADED_MODELS='1')
    other = subprocess.Popen(['s100-ollama-emulator', 'serve'], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_for(lambda: probe(f'http://127.0.0.1:{ollama_port}') is PortOwner.OLLAMA,
                 'the other server to answer')
        llm = start_llm(adopt_existing=True, embedding_model=EMBEDDER)
        assert llm.client.change_state('configure')
        assert not llm.client.change_state('activate')
        assert (f"loading embedding_model '{EMBEDDER}' unloaded 'echo:latest': the server keeps "
                'fewer than 2 models loaded (OLLAMA_MAX_LOADED_MODELS)') in \
            llm.client.wait_log('activate failed')
        assert llm.client.state() == 'inactive'
        wait_for(lambda: api_ps(llm) == [], 'what the failed activate loaded to be unloaded')
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


def test_the_embedders_runner_killed_is_reloaded_and_chats_go_on(start_llm):
    llm = start_llm(model='endless:latest', embedding_model=EMBEDDER,
                    env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    llm.activate()
    chat_runner, embed_runner = runner_of(llm, 'endless:latest'), runner_of(llm, EMBEDDER)
    run = llm.client.send_chat(Chat.Goal(prompt='go on'))
    assert run.wait_accepted()
    wait_for(lambda: run.feedback, 'the chat to stream')
    embed_runner.kill()
    llm.client.wait_log(f"recovered: model '{EMBEDDER}' reloaded")
    assert f"the runner of '{EMBEDDER}' (pid {embed_runner.pid}) exited while active" in \
        '\n'.join(llm.client.log_messages())
    streamed = len(run.feedback)
    wait_for(lambda: len(run.feedback) > streamed, 'the chat to stream on after the reload')
    run.cancel()
    assert run.wait_result().error_code == Chat.Result.CANCELED
    assert run.status == GoalStatus.STATUS_CANCELED
    assert chat_runner.is_running() and runner_of(llm, 'endless:latest').pid == chat_runner.pid
    assert runner_of(llm, EMBEDDER).pid != embed_runner.pid
    assert embed(llm, ['hello']).error_code == Embed.Response.NONE
    log = '\n'.join(llm.client.log_messages())
    assert 'restarting' not in log and "runner of 'endless:latest'" not in log


def test_a_server_that_does_not_answer_fails_the_request_naming_it(active):
    # load_timeout bounds every request to the server; 2 s is shorter than the 6 s after which
    # supervision takes a silent server for hung (and restarts it): the request sees it first.
    llm = active(embedding_model=EMBEDDER, load_timeout=2.0)
    (server,) = servers(llm)
    server.suspend()
    try:
        reply = embed(llm, ['hello'])
    finally:
        server.resume()
    assert reply.error_code == Embed.Response.SERVER_FAILED and not reply.embeddings
    assert reply.error_message == (f'embed 1 text(s) with {EMBEDDER}: the Ollama server did '
                                   'not answer in time')
    llm.client.wait_log(f'embed failed: {reply.error_message} (SERVER_FAILED)')
    assert embed(llm, ['hello']).error_code == Embed.Response.NONE


def test_chat_cli_embed_prints_the_size_and_the_similarities(active, domain_id):
    active(embedding_model=EMBEDDER)
    code, out, err = run_installed(domain_id, 'chat', '--embed', 'the red box', 'a red box',
                                   'the kitchen door')
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f'3 vector(s) of 64 dimensions (model {EMBEDDER}, ')
    assert lines[1:4] == ['[1] the red box', '[2] a red box', '[3] the kitchen door']
    similarity = {line.split(':')[0]: float(line.split(': ')[1]) for line in lines[4:]}
    assert list(similarity) == ['cosine similarity [1] [2]', 'cosine similarity [1] [3]',
                                'cosine similarity [2] [3]']
    assert similarity['cosine similarity [1] [2]'] > similarity['cosine similarity [2] [3]']
    code, out, err = run_installed(domain_id, 'chat', '--embed', 'a', '--dimensions', '8')
    assert code == 0 and out.startswith('1 vector(s) of 8 dimensions'), err
    code, out, err = run_installed(domain_id, 'chat', '--embed', '')
    assert code == 1 and err == 'INVALID_REQUEST: texts[0] is empty\n'


def test_the_remember_recall_example_puts_the_closest_fact_in_the_prompt(active, domain_id):
    active(embedding_model=EMBEDDER)    # echo: the answer is the prompt it got
    code, out, err = run_installed(domain_id, 'remember_recall', '--top', '1',
                                   'Where is the charging dock?')
    assert code == 0, err
    assert out == ('user: Answer from these facts only:\n'
                   '- The charging dock is in the hall, next to the front door.\n'
                   'Question: Where is the charging dock?\n\n')
    code, out, err = run_installed(domain_id, 'remember_recall', '--top', '1',
                                   'Which shelf holds the red toolbox?')
    assert code == 0, err
    assert '- The red toolbox is kept on the lowest shelf of the workshop.\n' in out
    assert out.count('\n- ') == 1


def test_the_remember_recall_example_says_why_there_are_no_embeddings(active, domain_id):
    active()
    code, out, err = run_installed(domain_id, 'remember_recall', 'Where is the dock?')
    assert code == 1 and out == ''
    assert 'embedding failed: the node serves no embeddings' in err
