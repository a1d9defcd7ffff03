import math

import pytest

from s100_llm.core.config import ChatSettings
from s100_llm.core.config import ConfigError
from s100_llm.core.config import DiagnosticsSettings
from s100_llm.core.config import ModelSettings
from s100_llm.core.config import parse_host
from s100_llm.core.config import ServerSettings
from s100_llm.core.config import SupervisionSettings
from s100_llm.core.config import validate_model_name


@pytest.mark.parametrize('text, expected', [
    ('127.0.0.1:11434', ('127.0.0.1', 11434)),
    ('localhost', ('localhost', 11434)),
    ('http://127.0.0.1:8080/', ('127.0.0.1', 8080)),
    ('[::1]:9000', ('::1', 9000)),
])
def test_parse_host(text, expected):
    assert parse_host(text) == expected


@pytest.mark.parametrize('text', [':11434', '127.0.0.1:99999', 'a:b:c', ''])
def test_parse_host_rejects(text):
    with pytest.raises(ConfigError):
        parse_host(text)


@pytest.mark.parametrize('name', [
    'deepseek-r1:1.5b', 'echo', 'library/qwen2.5:0.5b-instruct-q4_K_M',
    'registry.ollama.ai/library/smollm2:135m'])
def test_valid_model_names(name):
    assert validate_model_name(name) == name


@pytest.mark.parametrize('name', [';rm -rf /', '../../etc', 'a b', '', 'x:', '/abs', 'a/../b'])
def test_hostile_model_names_are_rejected_with_the_parameter_named(name):
    with pytest.raises(ConfigError, match='model'):
        validate_model_name(name)


def test_managed_server_on_a_network_address_needs_allow_remote():
    with pytest.raises(ConfigError, match='allow_remote'):
        ServerSettings(host='0.0.0.0:11434').validate()
    ServerSettings(host='0.0.0.0:11434', allow_remote=True).validate()
    # Someone else's server may be anywhere.
    ServerSettings(host='192.0.2.1:11434', manage_server=False).validate()


@pytest.mark.parametrize('settings', [
    ServerSettings(start_timeout=0), ServerSettings(num_parallel=0),
    ServerSettings(stop_timeout=math.nan), ServerSettings(ollama_bin=' '),
    ModelSettings(load_timeout=-1), ModelSettings(keep_alive_inactive=math.nan),
    SupervisionSettings(max_restarts=-1), ChatSettings(concurrency='fifo'),
    ChatSettings(feedback_min_interval=-1), DiagnosticsSettings(cpu_warn_percent=99,
                                                                cpu_error_percent=90),
])
def test_invalid_values_name_their_parameter(settings):
    with pytest.raises(ConfigError) as error:
        settings.validate()
    field_names = list(vars(settings)) + ['diagnostics_period', 'cpu', 'memory']
    assert any(name in str(error.value) for name in field_names)


def test_defaults_are_valid():
    for settings in (ServerSettings(), ModelSettings(), SupervisionSettings(), ChatSettings(),
                     DiagnosticsSettings()):
        settings.validate()
