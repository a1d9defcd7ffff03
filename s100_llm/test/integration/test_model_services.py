"""Issue 27: the robot's models over ROS (~/list_models, ~/delete_model, ~/pull_model), driven
over DDS like an operator's tools; what is on disk is checked in models_dir itself, what is
loaded with /api/ps, and `chat --models` as the installed executable."""

import os
import pathlib
import re
import shlex
import subprocess
from typing import Any, List, Optional

from action_msgs.msg import GoalStatus
import pytest
from rclpy.action import ActionClient
import real_ollama
from s100_llm_msgs.action import Chat
from s100_llm_msgs.action import PullModel
from s100_llm_msgs.srv import DeleteModel
from s100_llm_msgs.srv import ListModels
import yaml

from harness import run_installed
from harness import wait_for
from s100_llm import model_services
from s100_llm.core.model_requests import PULL_ERRORS
from s100_llm.qos import FEEDBACK_QOS
from s100_llm.qos import SERVICE_QOS

EMBEDDER = 'embedder:latest'
# Bytes/s of the emulator's pulls in the tests that act while one runs: the 98 MB SmolLM2 GGUF
# takes 24 s.
SLOW = 4 << 20


def list_models(llm) -> ListModels.Response:
    return llm.client._call(ListModels, '/llm/list_models', ListModels.Request())


def delete_model(llm, name: str) -> DeleteModel.Response:
    return llm.client._call(DeleteModel, '/llm/delete_model', DeleteModel.Request(name=name))


def by_name(reply: ListModels.Response):
    return {model.name: model for model in reply.models}


def files(models_dir: str) -> List[str]:
    """Every file under models_dir (blobs, manifests, partial downloads), relative."""
    root = pathlib.Path(models_dir)
    return sorted(str(path.relative_to(root)) for path in root.rglob('*') if path.is_file())


class PullRun:
    """One ~/pull_model goal: its feedback, cancel and result."""

    def __init__(self, llm, **goal: Any) -> None:
        self.client = llm.client
        self.feedback: List[PullModel.Feedback] = []
        self.action = ActionClient(
            self.client.node, PullModel, '/llm/pull_model',
            feedback_sub_qos_profile=FEEDBACK_QOS, goal_service_qos_profile=SERVICE_QOS,
            cancel_service_qos_profile=SERVICE_QOS, result_service_qos_profile=SERVICE_QOS)
        assert self.action.wait_for_server(timeout_sec=30), 'no pull_model action server'
        future = self.client.on_executor(lambda: self.action.send_goal_async(
            PullModel.Goal(**goal), feedback_callback=self._on_feedback))
        wait_for(future.done, 'the pull goal response')
        self.handle = future.result()
        assert self.handle.accepted
        self.status: Optional[int] = None

    def _on_feedback(self, message: Any) -> None:
        self.feedback.append(message.feedback)

    def cancel(self) -> None:
        future = self.client.on_executor(self.handle.cancel_goal_async)
        wait_for(future.done, 'the cancel response')

    def result(self, timeout: float = 120.0) -> PullModel.Result:
        future = self.client.on_executor(self.handle.get_result_async)
        wait_for(future.done, 'the pull result', timeout)
        self.status = future.result().status
        return future.result().result


def pull(llm, **goal: Any) -> PullModel.Result:
    return PullRun(llm, **goal).result()


def test_not_serving_without_a_server_and_served_while_inactive(start_llm):
    llm = start_llm()
    expected = 'no Ollama server is running (state: unconfigured): configure starts one'
    listed = list_models(llm)
    assert (listed.error_code, listed.error_message) == (ListModels.Response.NOT_SERVING,
                                                         expected)
    deleted = delete_model(llm, 'echo:latest')
    assert (deleted.error_code, deleted.error_message) == (DeleteModel.Response.NOT_SERVING,
                                                           expected)
    run = PullRun(llm, model='echo:latest')
    result = run.result()
    assert (result.error_code, result.error_message) == (PullModel.Result.NOT_SERVING, expected)
    assert run.status == GoalStatus.STATUS_ABORTED
    assert files(llm.models_dir) == []
    assert llm.client.change_state('configure')      # inactive: the server runs, no model
    assert pull(llm, model='echo:latest').error_code == PullModel.Result.NONE
    listed = list_models(llm)
    assert listed.error_code == ListModels.Response.NONE, listed.error_message
    (echo,) = listed.models
    assert echo.name == 'echo:latest' and echo.served and not echo.loaded


def test_list_names_every_field_what_is_loaded_and_what_is_served(active):
    llm = active(embedding_model=EMBEDDER)
    assert pull(llm, model='tiny:latest').error_code == PullModel.Result.NONE
    reply = list_models(llm)
    assert reply.error_code == ListModels.Response.NONE, reply.error_message
    models = by_name(reply)
    assert sorted(models) == ['echo:latest', EMBEDDER, 'tiny:latest']
    echo, embedder, tiny = models['echo:latest'], models[EMBEDDER], models['tiny:latest']
    assert (echo.loaded, echo.served, echo.embedding) == (True, True, False)
    assert (embedder.loaded, embedder.served, embedder.embedding) == (True, True, True)
    assert (tiny.loaded, tiny.served, tiny.embedding) == (False, False, False)
    assert (echo.family, echo.parameter_size, echo.quantization) == ('emulated', '1M', 'F16')
    assert list(echo.capabilities) == ['completion']
    assert embedder.family == 'bert' and list(embedder.capabilities) == ['embedding']
    assert all(len(model.digest) >= 64 and model.size > 0 for model in models.values())
    blobs = pathlib.Path(llm.models_dir, 'blobs')
    assert reply.total_size == sum(path.stat().st_size for path in blobs.iterdir())
    assert reply.free_space > 0


def test_delete_frees_a_model_and_refuses_the_served_ones_and_unknown_names(active):
    llm = active(embedding_model=EMBEDDER)
    before = files(llm.models_dir)
    assert pull(llm, model='tiny:latest').error_code == PullModel.Result.NONE
    deleted = delete_model(llm, 'tiny')
    assert deleted.error_code == DeleteModel.Response.NONE, deleted.error_message
    # Its own blobs and manifest are gone; the blobs it shares (template, license) stay.
    assert files(llm.models_dir) == before
    assert 'tiny:latest' not in by_name(list_models(llm))
    for name, code, reason in [
            ('echo:latest', DeleteModel.Response.IN_USE,
             "'echo:latest' is the node's model: set model to another model and activate "
             'again first'),
            ('echo', DeleteModel.Response.IN_USE, "'echo' is the node's model"),
            # Other spellings Ollama resolves to the served model (it would delete it).
            ('ECHO', DeleteModel.Response.IN_USE, "'ECHO' is the node's model"),
            ('library/echo', DeleteModel.Response.IN_USE, "is the node's model"),
            ('registry.ollama.ai/library/echo:latest', DeleteModel.Response.IN_USE,
             "is the node's model"),
            (EMBEDDER, DeleteModel.Response.IN_USE,
             f"'{EMBEDDER}' is the node's embedding_model: set embedding_model to another "
             'model and configure again first'),
            ('nosuch:latest', DeleteModel.Response.INVALID_REQUEST, 'nosuch'),
            ('', DeleteModel.Response.INVALID_REQUEST, 'name is empty')]:
        reply = delete_model(llm, name)
        assert reply.error_code == code and reason in reply.error_message, (
            name, reply.error_code, reply.error_message)
        assert reply.freed == 0
    assert files(llm.models_dir) == before
    assert llm.client.chat('still here?').result.error_code == Chat.Result.NONE


def test_registry_pull_reports_progress_and_the_stored_model(start_llm):
    llm = start_llm()
    assert llm.client.change_state('configure')
    run = PullRun(llm, model='smollm2:135m')
    result = run.result()
    assert result.error_code == PullModel.Result.NONE, result.error_message
    assert run.status == GoalStatus.STATUS_SUCCEEDED
    assert result.model == 'smollm2:135m' and result.duration > 0
    statuses = [feedback.status for feedback in run.feedback]
    assert statuses[0] == 'pulling manifest' and statuses[-1] == 'success'
    weights = real_ollama.smollm2_gguf().stat().st_size
    layer = [f for f in run.feedback if f.total == weights]
    assert layer and layer[-1].completed == weights
    assert all(f.completed <= f.total for f in run.feedback)
    listed = by_name(list_models(llm))['smollm2:135m']
    assert (result.digest, result.size) == (listed.digest, listed.size)
    assert listed.family == 'llama' and result.size > weights
    assert not [name for name in files(llm.models_dir) if name.endswith('-partial')]


def test_pull_refusals_name_the_cause(start_llm, tmp_path):
    llm = start_llm()
    assert llm.client.change_state('configure')
    os.mkfifo(tmp_path / 'fifo')    # opened, it would block the pull slot until a writer came
    for goal, code, reason in [
            ({'model': ''}, PullModel.Result.INVALID_GOAL, 'model is empty'),
            ({'model': 'echo:latest', 'quantize': 'q4_K_M'}, PullModel.Result.INVALID_GOAL,
             'quantize needs a source'),
            ({'model': 'nosuch:latest'}, PullModel.Result.REFUSED, 'file does not exist'),
            ({'model': 'mine:latest', 'source': '/nonexistent/model.gguf'},
             PullModel.Result.INVALID_GOAL, '/nonexistent/model.gguf'),
            ({'model': 'mine:latest', 'source': 'models/model.gguf'},
             PullModel.Result.INVALID_GOAL, "source 'models/model.gguf' is a relative path"),
            ({'model': 'mine:latest', 'source': str(tmp_path / 'fifo')},
             PullModel.Result.INVALID_GOAL, 'neither a regular file nor a directory')]:
        run = PullRun(llm, **goal)
        result = run.result()
        assert result.error_code == code and reason in result.error_message, (
            goal, result.error_code, result.error_message)
        assert run.status == GoalStatus.STATUS_ABORTED
    assert files(llm.models_dir) == []


def test_a_pull_may_not_replace_the_model_the_node_serves(active):
    llm = active()
    result = pull(llm, model='ECHO')    # Ollama's spelling rules: the served echo:latest
    assert (result.error_code, result.error_message) == (
        PullModel.Result.INVALID_GOAL,
        "'ECHO' is the model the node serves now: store the new one under another name and set "
        'model to it, or deactivate first')
    assert llm.client.change_state('deactivate')     # activate reads the model again
    assert pull(llm, model='echo').error_code == PullModel.Result.NONE


def test_cancel_mid_pull_removes_what_it_wrote_and_one_pull_runs_at_a_time(start_llm):
    llm = start_llm(env={'OLLAMA_EMULATOR_PULL_RATE': str(SLOW)})
    assert llm.client.change_state('configure')
    before = files(llm.models_dir)
    run = PullRun(llm, model='smollm2:135m')
    wait_for(lambda: any(0 < f.completed < f.total for f in run.feedback), 'the pull to run')
    second = PullRun(llm, model='tiny:latest')
    refused = second.result()
    assert (refused.error_code, refused.error_message) == (
        PullModel.Result.INVALID_GOAL,
        "a pull of 'smollm2:135m' is running (one at a time): send this goal again when it "
        'has ended')
    assert second.status == GoalStatus.STATUS_ABORTED
    run.cancel()
    result = run.result()
    assert result.error_code == PullModel.Result.CANCELED, result.error_message
    assert run.status == GoalStatus.STATUS_CANCELED
    assert files(llm.models_dir) == before      # no partial blob left
    assert by_name(list_models(llm)) == {}
    llm.client.wait_log("pull_model: pull 'smollm2:135m': canceled, what it wrote is removed")


def test_cleanup_during_a_pull_ends_it_and_removes_what_it_wrote(start_llm):
    llm = start_llm(env={'OLLAMA_EMULATOR_PULL_RATE': str(SLOW)})
    assert llm.client.change_state('configure')
    before = files(llm.models_dir)
    run = PullRun(llm, model='smollm2:135m')
    wait_for(lambda: any(0 < f.completed < f.total for f in run.feedback), 'the pull to run')
    assert llm.client.change_state('cleanup')
    result = run.result()
    assert (result.error_code, result.error_message) == (
        PullModel.Result.NOT_SERVING, 'the node is cleaning up (its Ollama server stops)')
    assert run.status == GoalStatus.STATUS_ABORTED
    assert files(llm.models_dir) == before


def test_a_full_disk_fails_the_pull_with_the_cause_and_leaves_models_dir_as_it_was(start_llm):
    llm = start_llm(env={'OLLAMA_EMULATOR_DISK_FREE': str(8 << 20)})
    assert llm.client.change_state('configure')
    before = files(llm.models_dir)
    result = pull(llm, model='smollm2:135m')
    assert result.error_code == PullModel.Result.NO_SPACE, result.error_message
    assert 'no space left on device' in result.error_message
    assert files(llm.models_dir) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB file system (tmpfs) for models_dir; skipped where mounting is not allowed
    (it needs root)."""
    path = tmp_path / 'small'
    path.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip('cannot mount a tmpfs here (needs root)')
    yield str(path)
    subprocess.run(['umount', '-l', str(path)], check=True)


def test_the_storage_guard_refuses_a_pull_naming_both_figures(start_llm, small_disk):
    models_dir = f'{small_disk}/models'
    llm = start_llm(models_dir=models_dir)
    assert llm.client.change_state('configure')
    before = files(models_dir)
    result = pull(llm, model='smollm2:135m')
    assert result.error_code == PullModel.Result.NO_SPACE, result.error_message
    # What is still to write of the SmolLM2 GGUF (93.8 MiB) when its layer starts, and what
    # the 64 MiB file system has free.
    figures = re.fullmatch(rf"pulling 'smollm2:135m' needs (\d+\.\d) MiB and models_dir "
                           rf"'{models_dir}' has only (\d+\.\d) MiB free",
                           result.error_message)
    assert figures, result.error_message
    needed, free = (float(figure) for figure in figures.groups())
    assert 64 < needed <= 93.8 and free <= 64
    assert files(models_dir) == before


def test_import_of_the_real_smollm2_gguf_then_switch_to_it(active):
    llm = active()
    gguf = real_ollama.smollm2_gguf()
    run = PullRun(llm, model='robot-model:latest', source=str(gguf))
    result = run.result()
    assert result.error_code == PullModel.Result.NONE, result.error_message
    assert run.feedback and result.size >= gguf.stat().st_size
    imported = by_name(list_models(llm))['robot-model:latest']
    assert (imported.family, imported.loaded, imported.served) == ('llama', False, False)
    # The operator's switch: the model parameter, then deactivate + activate.
    llm.client.set_parameters(model='robot-model:latest')
    assert llm.client.change_state('deactivate') and llm.client.change_state('activate')
    assert by_name(list_models(llm))['robot-model:latest'].served
    answer = llm.client.chat('Hi', max_tokens=4).result
    assert answer.error_code == Chat.Result.NONE and answer.text, answer.error_message


def test_the_services_answer_while_a_chat_streams(active):
    # 50 tokens/s: the chat streams for minutes, the services answer meanwhile.
    llm = active(model='endless:latest', env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    chat = llm.client.send_chat(Chat.Goal(prompt='go on', max_tokens=8192))
    assert chat.wait_accepted()
    wait_for(lambda: chat.streamed_text, 'the chat to stream')
    assert list_models(llm).error_code == ListModels.Response.NONE
    assert pull(llm, model='tiny:latest').error_code == PullModel.Result.NONE
    assert delete_model(llm, 'tiny:latest').error_code == DeleteModel.Response.NONE
    chat.cancel()       # it was still streaming: ended by the cancel, not by itself
    assert chat.wait_result().error_code == Chat.Result.CANCELED


def test_chat_models_lists_them(active, domain_id):
    llm = active(embedding_model=EMBEDDER)
    code, out, err = run_installed(domain_id, 'chat', '--models')
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ['NAME', 'SIZE', 'QUANTIZATION', 'LOADED', 'SERVED']
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows['echo:latest'][-3:] == ['F16', 'yes', 'model']
    assert rows[EMBEDDER][-2:] == ['yes', 'embedding']
    assert lines[-1].startswith('2 model(s), ') and lines[-1].endswith(' free')
    assert llm.client.change_state('deactivate') and llm.client.change_state('cleanup')
    code, out, err = run_installed(domain_id, 'chat', '--models')
    assert code == 1 and err.startswith('NOT_SERVING: no Ollama server is running'), err


def test_every_class_of_pull_failure_has_its_result_code():
    assert set(model_services.PULL_CODES) == set(PULL_ERRORS)
    assert len(set(model_services.PULL_CODES.values())) == len(PULL_ERRORS)


def test_the_docs_model_commands_name_real_interfaces_and_fields():
    """Every `ros2 action send_goal` / `ros2 service call` of the model interfaces in the docs
    (README.md, docs/models.md) names the node's interface, its type, and fields it has (the
    `ros2` CLI fills the message from that YAML the same way)."""
    repository = pathlib.Path(__file__).resolve().parents[3]
    lines = [line for doc in (repository / 'README.md', repository / 'docs' / 'models.md')
             for line in doc.read_text().splitlines()
             if re.match(r'ros2 (action send_goal|service call) /llm/\w+_model', line)]
    assert len(lines) >= 5, lines
    kinds = {'/llm/pull_model': PullModel.Goal, '/llm/list_models': ListModels.Request,
             '/llm/delete_model': DeleteModel.Request}
    for line in lines:
        words = shlex.split(line)
        name, type_name = words[3], words[4]
        package, kind, interface = type_name.split('/')
        message = kinds[name]
        assert (package, kind) == ('s100_llm_msgs', 'action' if 'send_goal' in line else 'srv')
        assert message.__qualname__.startswith(f'{interface}_'), (line, message)
        fields = yaml.safe_load(words[5]) if len(words) > 5 and words[5] != '--feedback' else {}
        message(**fields)   # raises for a field the interface does not have
