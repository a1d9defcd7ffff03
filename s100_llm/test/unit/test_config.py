import dataclasses
import math
import os
import re
import tracemalloc

import pytest

from s100_llm.core.config import ChatSettings
from s100_llm.core.config import ConfigError
from s100_llm.core.config import DiagnosticsSettings
from s100_llm.core.config import EmbeddingSettings
from s100_llm.core.config import ModelSettings
from s100_llm.core.config import NodeSettings
from s100_llm.core.config import parameter_name
from s100_llm.core.config import PARAMETERS
from s100_llm.core.config import parse_cores
from s100_llm.core.config import parse_host
from s100_llm.core.config import parse_ollama_env
from s100_llm.core.config import ServerSettings
from s100_llm.core.config import settings_from
from s100_llm.core.config import SupervisionSettings
from s100_llm.core.config import validate_model_name
from s100_llm.core.config import VisionSettings
from s100_llm.core.params import setting
from s100_llm.core.params import TakesEffect


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
                     VisionSettings(), DiagnosticsSettings()):
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


SETTINGS_CLASSES = (ServerSettings, ModelSettings, SupervisionSettings, ChatSettings,
                    VisionSettings, EmbeddingSettings, DiagnosticsSettings)


def test_every_setting_is_one_parameter():
    fields = [(owner, field.name) for owner in SETTINGS_CLASSES
              for field in dataclasses.fields(owner)]
    assert [(p.owner, p.field) for p in PARAMETERS] == fields
    assert len({p.name for p in PARAMETERS}) == len(PARAMETERS)
    assert parameter_name(DiagnosticsSettings, 'period') == 'diagnostics_period'


def test_every_number_has_a_range_and_only_numbers_have_one():
    for parameter in PARAMETERS:
        numeric = parameter.value_type in (int, float)
        assert (parameter.bounds is not None) == numeric, parameter.name
    with pytest.raises(TypeError, match='every number needs them'):
        setting(5, TakesEffect.AT_ONCE, 'A number without a range.')
    with pytest.raises(TypeError, match='bounds are for numbers'):
        setting('x', TakesEffect.AT_ONCE, 'A string with a range.', bounds=(0, 1))


def defaults():
    return {parameter.name: parameter.default for parameter in PARAMETERS}


def test_settings_from_the_defaults_are_the_dataclass_defaults():
    assert settings_from(defaults()) == NodeSettings(
        ServerSettings(), ModelSettings(), SupervisionSettings(), ChatSettings(),
        VisionSettings(), EmbeddingSettings(), DiagnosticsSettings())


def test_settings_from_takes_integers_for_floats_as_floats():
    settings = settings_from({**defaults(), 'start_timeout': 5, 'diagnostics_period': 2})
    assert (settings.server.start_timeout, settings.diagnostics.period) == (5.0, 2.0)
    assert type(settings.server.start_timeout) is float


@pytest.mark.parametrize('name, value, message', [
    ('manage_server', 1, 'manage_server must be true or false (got 1)'),
    ('host', ['::1'], "host must be a string (got ['::1'])"),
    ('max_sessions', True, 'max_sessions must be an integer (got True)'),
    ('concurrency', 'fifo', "concurrency 'fifo' must be one of reject, queue, preempt"),
    ('diagnostics_period', 0, 'diagnostics_period must be in 0.1..60 (got 0)'),
])
def test_settings_from_refuses_a_value_naming_the_parameter(name, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings_from({**defaults(), name: value})


def test_a_number_or_bool_given_for_a_string_parameter_is_its_text():
    # Issue 22.11: YAML makes `-p cpu_cores:=0` an integer and `flash_attention:=true` a bool.
    assert settings_from({**defaults(), 'cpu_cores': 0}).server.cpu_cores == '0'
    assert settings_from({**defaults(), 'model': 7}).model.model == '7'
    with pytest.raises(ConfigError, match="flash_attention 'true' must be one of auto, "):
        settings_from({**defaults(), 'flash_attention': True})
    with pytest.raises(ConfigError, match="cpu_cores '2.5': '2.5' is not a core id"):
        settings_from({**defaults(), 'cpu_cores': 2.5})


def test_cpu_cores_are_parsed_and_cores_that_do_not_exist_refused():
    assert parse_cores('', 6) == frozenset()
    assert parse_cores('2-5', 6) == {2, 3, 4, 5}
    assert parse_cores(' 0, 2 - 3 ', 6) == {0, 2, 3}
    with pytest.raises(ConfigError, match=r'core\(s\) 6-7 do not exist \(this machine has 6 '
                                          r'cores: 0-5\)'):
        parse_cores('4-7', 6)
    with pytest.raises(ConfigError, match=r'core\(s\) 8, 6-9 do not exist'):
        parse_cores('8,1,3-9', 6)
    with pytest.raises(ConfigError, match="'two' is not a core id or range"):
        parse_cores('two', 6)
    with pytest.raises(ConfigError, match="the range '5-2' runs backwards"):
        parse_cores('5-2', 6)
    with pytest.raises(ConfigError, match='do not exist'):
        ServerSettings(cpu_cores=str(os.cpu_count())).validate()


def test_cpu_cores_work_and_reason_are_bounded_by_the_machines_core_count():
    # Issue 22.3: the parser built every id of the range, and the reason listed them all.
    with pytest.raises(ConfigError) as refused:
        parse_cores('0-3000000', 6)
    assert str(refused.value) == ("cpu_cores '0-3000000': core(s) 6-3000000 do not exist (this "
                                  'machine has 6 cores: 0-5)')
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match='6-100000000 do not exist'):
            parse_cores('0-100000000', 6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000
    many = ','.join(map(str, range(6, 20000)))
    with pytest.raises(ConfigError) as refused:
        parse_cores(many, 6)
    assert 'core(s) 6, 7, 8 and 19991 more do not exist' in str(refused.value)
    assert len(str(refused.value)) < 300
    with pytest.raises(ConfigError, match=re.escape(f"'{'9' * 60}...' is not a core id or range")):
        parse_cores('9' * 100_000, 6)


def test_ollama_env_takes_ollama_variables_and_refuses_the_rest_with_the_reason():
    assert parse_ollama_env("OLLAMA_DEBUG=1 OLLAMA_ORIGINS='a b'") == {
        'OLLAMA_DEBUG': '1', 'OLLAMA_ORIGINS': 'a b'}
    for text, reason in (('OLLAMA_DEBUG', "'OLLAMA_DEBUG' is not NAME=VALUE"),
                         ('PATH=/tmp', "'PATH' is not an Ollama variable"),
                         ('ollama_debug=1', "'ollama_debug' is not an Ollama variable"),
                         ('OLLAMA_KV_CACHE_TYPE=q4_0', 'use the parameter kv_cache_type'),
                         ('OLLAMA_HOST=0.0.0.0:1', 'use the parameter host'),
                         ('OLLAMA_NO_CLOUD=0', 'use the parameter allow_cloud'),
                         ("OLLAMA_DEBUG='1", 'cannot be split into words')):
        with pytest.raises(ConfigError, match=reason):
            ServerSettings(ollama_env=text).validate()


def test_nice_threads_and_server_choices_are_bounded():
    for field, value, reason in (('nice', 20, 'nice must be in 0..19'),
                                 ('nice', -1, 'nice must be in 0..19'),
                                 ('kv_cache_type', 'q5', 'must be one of'),
                                 ('flash_attention', 'yes', 'must be one of'),
                                 ('max_loaded_models', 0, 'must be in 1..64')):
        with pytest.raises(ConfigError, match=reason):
            ServerSettings(**{field: value}).validate()
    with pytest.raises(ConfigError, match='num_thread must be in 0..256'):
        ModelSettings(num_thread=-1).validate()
