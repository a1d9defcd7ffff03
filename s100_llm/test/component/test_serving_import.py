"""Serving with model_source against the emulator without a registry: the model is imported at
activate when missing or changed, never pulled, and a failed import leaves models_dir as it
was."""

import hashlib
import os
import pathlib
import shutil

import pytest

from real_ollama import smollm2_gguf

from s100_llm.core.config import ModelSettings
from s100_llm.core.config import ServerSettings
from s100_llm.core.serving import Serving
from s100_llm.core.serving import ServingError
from support import free_port
from support import RecordedLog

MODEL = 'robot-brain:latest'


class Setup:
    def __init__(self, tmp_path: pathlib.Path, ollama_env: str = '') -> None:
        self.log = RecordedLog()
        self.serving = Serving(self.log)
        self.server = ServerSettings(host=f'127.0.0.1:{free_port()}',
                                     ollama_bin='s100-ollama-emulator', start_timeout=30,
                                     stop_timeout=2,
                                     ollama_env='OLLAMA_EMULATOR_OFFLINE=1 ' + ollama_env)
        self.models_dir = str(tmp_path / 'models')

    def start(self, source: str) -> None:
        with self.serving.transition('configure'):
            self.serving.start(self.server, self.models_dir, self.settings(source))

    def settings(self, source: str) -> ModelSettings:
        return ModelSettings(model=MODEL, model_source=source, memory_margin_mb=0,
                             load_timeout=120)

    def activate(self, source: str) -> None:
        self.serving.use_model(self.settings(source))
        with self.serving.transition('activate', about_model=True):
            self.serving.activate()

    def deactivate(self) -> None:
        with self.serving.transition('deactivate', about_model=True):
            self.serving.unload()

    def files(self):
        """Every file under models_dir with its size."""
        root = pathlib.Path(self.models_dir)
        return {str(p.relative_to(root)): p.stat().st_size
                for p in root.rglob('*') if p.is_file()}


@pytest.fixture
def setup(tmp_path):
    made = []

    def make(ollama_env: str = '') -> Setup:
        made.append(Setup(tmp_path, ollama_env))
        return made[-1]
    yield make
    for each in made:
        each.serving.release()


def imports(log: RecordedLog) -> int:
    return sum(1 for _, line in log if 'importing it from model_source' in line)


def test_a_missing_model_is_imported_once_and_again_when_its_source_changes(setup, tmp_path):
    gguf = tmp_path / 'weights.gguf'
    shutil.copy(smollm2_gguf(), gguf)
    modelfile = tmp_path / 'Modelfile'
    modelfile.write_text('FROM ./weights.gguf\nSYSTEM You are a robot.\n')
    llm = setup()
    llm.start(str(modelfile))
    llm.activate(str(modelfile))
    assert llm.serving.state.model_loaded
    assert imports(llm.log) == 1 and 'is not in models_dir' in llm.log.text()
    assert 'pulling' not in llm.log.text()
    llm.deactivate()
    llm.activate(str(modelfile))            # unchanged: not imported again
    assert imports(llm.log) == 1
    llm.deactivate()
    modelfile.write_text('FROM ./weights.gguf\nSYSTEM You are a careful robot.\n')
    llm.activate(str(modelfile))
    assert imports(llm.log) == 2 and 'was created from other content' in llm.log.text()
    assert llm.serving.state.model_loaded


@pytest.mark.parametrize('env, cause', [
    ('', 'invalid'),
    ('OLLAMA_EMULATOR_DISK_FREE=1048576', 'no_space'),
])
def test_a_failed_import_names_the_cause_and_leaves_models_dir_as_it_was(
        setup, tmp_path, env, cause):
    source = tmp_path / 'weights.gguf'
    data = smollm2_gguf().read_bytes()
    # Corrupt: the tensor data cut short; for the full disk the whole file.
    source.write_bytes(data[:len(data) // 2] if cause == 'invalid' else data)
    llm = setup(env)
    llm.start(str(source))
    before = llm.files()
    with pytest.raises(ServingError) as caught:
        llm.activate(str(source))
    message = str(caught.value)
    assert f"importing '{MODEL}' from model_source '{source}' failed ({cause})" in message
    assert ('exceeds file size' if cause == 'invalid' else 'no space left on device') in message
    assert llm.serving.state.model_error == message
    assert llm.files() == before
    assert not os.path.exists(os.path.join(llm.models_dir, 's100_llm'))


def test_an_unreadable_source_is_named(setup, tmp_path):
    llm = setup()
    llm.start(str(tmp_path / 'nowhere.gguf'))
    with pytest.raises(ServingError, match="model_source '.*nowhere.gguf' cannot be read: "
                                           'No such file or directory'):
        llm.activate(str(tmp_path / 'nowhere.gguf'))


def test_the_nodes_exit_stops_reading_a_big_source(setup, tmp_path, monkeypatch):
    # The first activate hashes the source (minutes for a multi-GB GGUF on the robot): an exit
    # meanwhile (Serving.exiting) stops it, and the source's hash is not recorded.
    llm = setup()
    source = tmp_path / 'big.gguf'
    source.write_bytes(b'GGUF' + b'\0' * (3 << 20))
    llm.start(str(source))
    real_sha256 = hashlib.sha256
    pieces = []

    class ExitWhileReading:
        def __init__(self, data: bytes = b'') -> None:
            self.inner = real_sha256(data)

        def update(self, data: bytes) -> None:
            pieces.append(len(data))
            llm.serving.exiting.set()
            self.inner.update(data)

        def hexdigest(self) -> str:
            return self.inner.hexdigest()
    monkeypatch.setattr(hashlib, 'sha256', ExitWhileReading)
    with pytest.raises(ServingError, match=r"reading model_source '.*big.gguf' stopped "
                                           r'\(the node is exiting\)'):
        llm.activate(str(source))
    monkeypatch.undo()
    assert pieces == [1 << 20]      # the first MiB only
    assert not [path for path in llm.files() if path.startswith('s100_llm')]
