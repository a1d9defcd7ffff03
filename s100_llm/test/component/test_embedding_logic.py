"""Embeddings without ROS: the request checks, the memory guard with two models, the Embedding
model status, and Serving + Supervisor with an embedding model next to the chat model against
the emulator binary (real processes: each runner attributed to its model by its weights)."""

import dataclasses
import os
import signal
from typing import List, Tuple

import psutil
import pytest

from s100_llm.core.config import EmbeddingSettings
from s100_llm.core.config import ModelSettings
from s100_llm.core.config import ServerSettings
from s100_llm.core.config import SupervisionSettings
from s100_llm.core.embedding import embed
from s100_llm.core.embedding import EmbedErrorCode
from s100_llm.core.embedding import refusal
from s100_llm.core.engine import LoadedModel
from s100_llm.core.resources import ProcessSample
from s100_llm.core.server import model_blob
from s100_llm.core.server import ServerStatus
from s100_llm.core.serving import memory_refusal
from s100_llm.core.serving import Serving
from s100_llm.core.serving import ServingError
from s100_llm.core.serving import ServingState
from s100_llm.core.status import embedding_status
from s100_llm.core.status import Level
from s100_llm.core.status import OllamaProcesses
from s100_llm.core.status import server_status
from s100_llm.core.status import ServerProbe
from s100_llm.core.supervision import Supervisor
from support import free_port
from support import RecordedLog
from support import wait_for

MiB = 1024 ** 2
GiB = 1024 * MiB
EMULATOR = 's100-ollama-emulator'
EMBEDDER = 'embedder:latest'


# ---- request checks ------------------------------------------------------------------------
@pytest.mark.parametrize('texts, reason', [
    ([], 'texts is empty: give at least one text to embed'),
    (['a'] * 4, '4 texts exceed max_embed_texts 3: send them in several requests'),
    (['', 'a', ''], 'texts[0, 2] are empty'),
    (['', 'a'], 'texts[0] is empty'),
    (['12345', '123456'], 'the texts hold 11 characters in all, more than max_embed_chars 10: '
                          'send them in several requests'),
])
def test_a_request_out_of_bounds_is_refused_naming_the_bound(texts, reason):
    assert refusal(texts, EmbeddingSettings(max_embed_texts=3, max_embed_chars=10)) == reason


def test_a_request_within_bounds_is_taken():
    settings = EmbeddingSettings(max_embed_texts=3, max_embed_chars=11)
    assert refusal(['12345', '12345', ' '], settings) == ''


def test_not_served_without_an_embedding_model_inactive_or_while_it_reloads():
    loaded = ServingState(model_loaded=True, embedding_model=EMBEDDER, embedding_loaded=True)
    assert loaded.in_lifecycle('active').embedding_not_serving_reason == ''
    assert ServingState(model_loaded=True).in_lifecycle('active').embedding_not_serving_reason \
        == ('the node serves no embeddings: no embedding_model was set at the last configure '
            '(a change applies at the next configure)')
    assert loaded.in_lifecycle('inactive').embedding_not_serving_reason == \
        'the node is not active (state: inactive)'
    # Before the first configure embedding_model has not been read yet: not "none was set".
    assert ServingState().in_lifecycle('unconfigured').embedding_not_serving_reason == \
        'the node is not active (state: unconfigured)'
    reloading = dataclasses.replace(loaded, embedding_loaded=False,
                                    embedding_recovering='its runner exited; reloading')
    assert reloading.in_lifecycle('active').embedding_not_serving_reason == \
        'the node is recovering (state: active): its runner exited; reloading'
    outcome = embed(lambda: reloading.in_lifecycle('active'), ['a'], True, 0,
                    EmbeddingSettings())
    assert outcome.error_code == EmbedErrorCode.NOT_SERVING and outcome.vectors == []


# ---- the memory guard ----------------------------------------------------------------------
def test_where_one_model_fits_but_not_both_the_refusal_names_both_sizes():
    sizes = [('qwen3:0.6b', GiB), ('nomic-embed-text:latest', GiB // 2)]
    available = int(2.2 * GiB)        # the chat model + the 1 GiB margin fit, both do not
    assert memory_refusal(sizes[:1], 1024, available) == ''
    assert memory_refusal(sizes, 1024, available, 'nomic-embed-text:latest') == (
        "not enough memory for 'qwen3:0.6b' (1.00 GiB) and embedding_model "
        "'nomic-embed-text:latest' (0.50 GiB): they need 1.50 GiB plus memory_margin_mb 1024, "
        'and only 2.20 GiB is available; free memory, pick a smaller quantization or lower '
        'memory_margin_mb')
    assert memory_refusal(sizes, 512, available, 'nomic-embed-text:latest') == ''


# ---- the Embedding model status ------------------------------------------------------------
EMBEDDING_LOADED = LoadedModel(name=EMBEDDER, size=300 * MiB, context_length=512,
                               expires_at='2318-01-01T00:00:00Z')
PROCESSES = OllamaProcesses(
    server=ProcessSample(100, 50 * MiB, 1.0, (0, 1), 10),
    runners=(ProcessSample(101, 600 * MiB, 50.0, (0, 1), 10),),
    embedding_runners=(ProcessSample(102, 200 * MiB, 25.0, (0, 1), 10),))


def state(lifecycle='active', **changes) -> ServingState:
    return ServingState(lifecycle=lifecycle, model='qwen3:0.6b', embedding_model=EMBEDDER,
                        embedding_capabilities=('embedding',), **changes)


def test_a_loaded_embedding_model_is_ok_with_its_figures():
    report = embedding_status(state(), ServerProbe(True, None, EMBEDDING_LOADED), PROCESSES)
    assert (report.task, report.level, report.message) == (
        'Embedding model', Level.OK, f'{EMBEDDER} loaded (0.29 GiB)')
    assert report.values == (
        ('model', EMBEDDER), ('loaded', 'True'), ('size (MiB)', '300'),
        ('runner RSS (MiB)', '200'), ('context length', '512'), ('capabilities', 'embedding'),
        ('expires at', 'never'))


def test_no_embedding_model_is_ok():
    report = embedding_status(ServingState(lifecycle='active'), ServerProbe(True),
                              OllamaProcesses())
    assert (report.level, report.message) == (
        Level.OK, 'none: no embedding_model at the last configure')
    assert dict(report.values)['loaded'] == 'False'


@pytest.mark.parametrize('lifecycle, changes, level, message', [
    ('active', {}, Level.ERROR, f'{EMBEDDER} should be loaded and is not'),
    ('inactive', {}, Level.OK, f'{EMBEDDER} not loaded (inactive)'),
    ('active', {'embedding_recovering': 'its runner exited; reloading'}, Level.WARN,
     'recovering: its runner exited; reloading'),
    ('inactive', {'embedding_recovering': 'stale'}, Level.OK, f'{EMBEDDER} not loaded '
     '(inactive)'),
    ('unconfigured', {}, Level.OK, 'not configured'),
    ('active', {'model_error': 'activate failed: x'}, Level.ERROR, 'activate failed: x'),
    ('inactive', {'model_error': 'activate failed: x'}, Level.WARN, 'activate failed: x'),
])
def test_the_embedding_model_not_loaded(lifecycle, changes, level, message):
    report = embedding_status(state(lifecycle, **changes), ServerProbe(True), OllamaProcesses())
    assert (report.level, report.message) == (level, message)


def test_the_server_status_counts_both_models_runners():
    running = ServerStatus(base_url='http://127.0.0.1:11434', managed=True, pid=100,
                           running=True, exit_code=None, started_at=0.0, restarts=0)
    report = server_status(state(server=running), ServerProbe(True), PROCESSES, now=0.0)
    values = dict(report.values)
    assert (values['runners'], values['runner RSS (MiB)'], values['runner CPU (%)']) == (
        '2', '800', '75.0')


# ---- Serving and Supervisor with two models (emulator) -------------------------------------
@pytest.fixture
def two_models(tmp_path):
    made = []

    def make(model: str = 'echo:latest', embedding_model: str = EMBEDDER, **changes):
        log = RecordedLog()
        aborted: List[Tuple[str, ServingState]] = []
        serving = Serving(log)
        supervisor = Supervisor(serving, lambda: SupervisionSettings(restart_backoff=0.0),
                                lambda reason: aborted.append((reason, serving.state)),
                                lambda cause, epoch: None, log)
        made.append(serving)
        with serving.transition('configure'):
            serving.start(ServerSettings(host=f'127.0.0.1:{free_port()}', ollama_bin=EMULATOR,
                                         start_timeout=30, stop_timeout=2),
                          str(tmp_path / 'models'),
                          ModelSettings(**{'model': model, 'memory_margin_mb': 0, **changes}),
                          embedding_model)
        with serving.transition('activate', about_model=True):
            serving.activate()
        return serving, supervisor, log, aborted

    yield make
    for serving in made:
        serving.release()


def test_each_runner_is_attributed_to_its_model_by_its_weights(two_models, tmp_path):
    serving, _, log, _ = two_models()
    loaded = serving.state
    assert loaded.model_loaded and loaded.embedding_loaded
    assert loaded.embedding_capabilities == ('embedding',)
    (chat_runner,) = loaded.runner_pids
    (embed_runner,) = loaded.embedding_runner_pids
    models_dir = str(tmp_path / 'models')
    for pid, model in ((chat_runner, 'echo:latest'), (embed_runner, EMBEDDER)):
        blob = model_blob(models_dir, model)
        assert blob and blob.startswith('sha256-')
        assert os.path.join(models_dir, 'blobs', blob) in psutil.Process(pid).cmdline()
    assert model_blob(models_dir, 'echo') == model_blob(models_dir, 'echo:latest')
    assert model_blob(models_dir, 'no-such-model') is None
    assert f"embedding_model '{EMBEDDER}' loaded next to it" in log.text()
    assert 'OLLAMA_MAX_LOADED_MODELS 2 (max_loaded_models 1 raised)' in log.text()
    with serving.transition('deactivate', about_model=True):
        serving.unload()
    state = serving.state
    assert not state.model_loaded and not state.embedding_loaded
    assert (state.runner_pids, state.embedding_runner_pids) == ((), ())
    for pid in (chat_runner, embed_runner):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == \
            psutil.STATUS_ZOMBIE


def test_the_embedders_lost_runner_is_reloaded_and_no_chat_is_ended(two_models):
    serving, supervisor, log, aborted = two_models()
    (chat_runner,) = serving.state.runner_pids
    (embed_runner,) = serving.state.embedding_runner_pids
    os.kill(embed_runner, signal.SIGKILL)
    failure = wait_for(lambda: supervisor.check(), 'the lost runner')
    assert (failure.model, failure.embedding, failure.model_only) == (EMBEDDER, True, True)
    assert failure.problem == f"the runner of '{EMBEDDER}' (pid {embed_runner}) exited"
    supervisor.step()
    state = serving.state
    assert aborted == []            # the chat model's chats were never told anything
    assert state.runner_pids == (chat_runner,) and state.model_loaded
    (reloaded,) = state.embedding_runner_pids
    assert reloaded != embed_runner and state.embedding_loaded
    assert (state.recovering, state.embedding_recovering) == ('', '')
    assert f"recovered: model '{EMBEDDER}' reloaded" in log.text()


def test_the_chat_models_lost_runner_ends_the_chats_and_spares_the_embedder(two_models):
    serving, supervisor, log, aborted = two_models()
    (chat_runner,) = serving.state.runner_pids
    (embed_runner,) = serving.state.embedding_runner_pids
    os.kill(chat_runner, signal.SIGKILL)
    failure = wait_for(lambda: supervisor.check(), 'the lost runner')
    assert (failure.model, failure.embedding) == ('echo:latest', False)
    supervisor.step()
    ((reason, when_aborted),) = aborted
    assert reason == f"the runner of 'echo:latest' (pid {chat_runner}) exited"
    assert not when_aborted.model_loaded and when_aborted.embedding_loaded
    assert serving.state.embedding_runner_pids == (embed_runner,)
    assert serving.state.model_loaded and serving.state.runner_pids != (chat_runner,)


def test_an_embedding_model_without_the_capability_fails_before_anything_loads(two_models):
    with pytest.raises(ServingError, match=r"embedding_model 'thinker:latest' cannot embed: it "
                                           r'lacks the embedding capability \(capabilities: '
                                           r'completion, thinking\)'):
        two_models(embedding_model='thinker:latest')


def test_keep_alive_inactive_keeps_both_models(two_models):
    serving, _, log, _ = two_models(keep_alive_inactive=600)
    with serving.transition('deactivate', about_model=True):
        serving.unload()
    names = sorted(m.name for m in serving.state.engine.loaded())
    assert names == ['echo:latest', EMBEDDER]
    assert f"'echo:latest' and '{EMBEDDER}' stay loaded for 600 s" in log.text()
