"""Import at activate over DDS (issue 27): a node without network (the emulator's registry off,
models_dir empty) activates from the real SmolLM2 GGUF given as model_source and answers; a
changed source is imported again at the next activate; a corrupt GGUF and a full disk fail the
activate with the cause in the log and leave models_dir as it was."""

import pathlib
import shutil

from action_msgs.msg import GoalStatus
import pytest
from real_ollama import smollm2_gguf

from harness import wait_for

OFFLINE = 'OLLAMA_EMULATOR_OFFLINE=1'
MODEL = 'robot-brain:latest'


def files(models_dir):
    root = pathlib.Path(models_dir)
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob('*') if p.is_file()}


@pytest.mark.real_model
def test_an_offline_node_imports_its_model_answers_and_reimports_a_changed_source(
        start_llm, tmp_path):
    shutil.copy(smollm2_gguf(), tmp_path / 'weights.gguf')
    modelfile = tmp_path / 'Modelfile'
    modelfile.write_text('FROM ./weights.gguf\nPARAMETER temperature 0\n')
    llm = start_llm(model=MODEL, model_source=str(modelfile), ollama_env=OFFLINE, num_thread=2)
    assert files(llm.models_dir) == {}
    llm.activate()
    assert f"model '{MODEL}' is not in models_dir: importing it" in llm.client.wait_log(
        'importing it from model_source')
    llm.client.wait_log(f"imported '{MODEL}'")
    run = llm.client.chat('What is the capital of France?', max_tokens=20)
    assert run.status == GoalStatus.STATUS_SUCCEEDED and run.result.text
    storage = llm.client.fresh_statuses(
        lambda s: 'GiB' in getattr(s.get('llm: Storage'), 'message', ''), 'Storage status')
    assert 'the models take 0.09 GiB' in storage['llm: Storage'].message

    assert llm.client.change_state('deactivate')
    modelfile.write_text('FROM ./weights.gguf\nPARAMETER temperature 0\nSYSTEM Be brief.\n')
    assert llm.client.change_state('activate'), llm.node.output()
    llm.client.wait_log('was created from other content: importing it')
    run = llm.client.chat('Hello', max_tokens=8)
    assert run.status == GoalStatus.STATUS_SUCCEEDED


@pytest.mark.emulator_only
@pytest.mark.parametrize('env, corrupt, cause', [
    (OFFLINE, True, 'exceeds file size'),
    (OFFLINE + ' OLLAMA_EMULATOR_DISK_FREE=1048576', False, 'no space left on device'),
])
def test_a_failed_import_fails_activate_with_the_cause_and_leaves_models_dir(
        start_llm, tmp_path, env, corrupt, cause):
    data = smollm2_gguf().read_bytes()
    source = tmp_path / 'weights.gguf'
    source.write_bytes(data[:len(data) // 2] if corrupt else data)
    llm = start_llm(model=MODEL, model_source=str(source), ollama_env=env)
    assert llm.client.change_state('configure')
    before = files(llm.models_dir)
    assert not llm.client.change_state('activate')
    assert llm.client.state() == 'inactive'
    failure = llm.client.wait_log('activate failed')
    assert f"importing '{MODEL}' from model_source '{source}' failed" in failure
    assert cause in failure
    assert files(llm.models_dir) == before
    wait_for(lambda: cause in getattr(llm.client.statuses().get('llm: Model'), 'message', ''),
             'the cause on the Model status')
