import dataclasses
import math
import re

import pytest

from s100_llm.core.config import ChatSettings
from s100_llm.core.config import ConfigError
from s100_llm.core.config import DiagnosticsSettings
from s100_llm.core.config import ModelSettings
from s100_llm.core.config import parameter_name
from s100_llm.core.config import parse_host
from s100_llm.core.config import RANGES
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


@pytest.mark.parametrize('settings, message', [
    (DiagnosticsSettings(disk_warn_mb=math.nan), 'disk_warn_mb must be in 0..1e+09 (got nan)'),
    (DiagnosticsSettings(memory_warn_percent=math.inf, memory_error_percent=math.inf),
     'memory_warn_percent must be in 0..100 (got inf)'),
    (DiagnosticsSettings(temperature_error_c=math.nan), 'temperature_error_c must be in'),
    (DiagnosticsSettings(cpu_error_percent=500.0), 'cpu_error_percent must be in 0..100'),
    (DiagnosticsSettings(period=-math.inf), 'diagnostics_period must be in 0.1..60'),
    (ServerSettings(start_timeout='5'), "start_timeout must be a number (got '5')"),
    (ServerSettings(start_timeout=True), 'start_timeout must be a number (got True)'),
    (ServerSettings(num_parallel=2.0), 'num_parallel must be an integer (got 2.0)'),
    (ChatSettings(stream_timeout=math.inf), 'stream_timeout must be in 1..3600 (got inf)'),
])
def test_numbers_must_be_finite_of_their_type_and_in_range(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings.validate()


def test_float_settings_take_integers():
    ServerSettings(start_timeout=5, stop_timeout=1).validate()
    DiagnosticsSettings(cpu_warn_percent=95, cpu_error_percent=100, disk_error_mb=0).validate()


def test_every_numeric_setting_has_a_range():
    for settings_class in (ServerSettings, ModelSettings, SupervisionSettings, ChatSettings,
                           DiagnosticsSettings):
        for field in dataclasses.fields(settings_class):
            if isinstance(field.default, (int, float)) and not isinstance(field.default, bool):
                assert parameter_name(settings_class, field.name) in RANGES, field.name
