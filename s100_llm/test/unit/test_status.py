"""The diagnostics statuses as pure functions: levels, messages and values, without ROS."""

import dataclasses

import pytest

from s100_llm.core.config import DiagnosticsSettings
from s100_llm.core.engine import LoadedModel
from s100_llm.core.resources import ProcessSample
from s100_llm.core.resources import ResourceSampler
from s100_llm.core.resources import SystemSample
from s100_llm.core.server import ServerStatus
from s100_llm.core.serving import ServingState
from s100_llm.core.status import ChatFigures
from s100_llm.core.status import cpu_share
from s100_llm.core.status import cpu_status
from s100_llm.core.status import format_cores
from s100_llm.core.status import Level
from s100_llm.core.status import memory_status
from s100_llm.core.status import model_status
from s100_llm.core.status import OllamaProcesses
from s100_llm.core.status import server_status
from s100_llm.core.status import ServerProbe
from s100_llm.core.status import storage_status
from s100_llm.core.status import temperature_status

MiB = 1024 ** 2
GiB = 1024 * MiB
THRESHOLDS = DiagnosticsSettings()      # cpu 90/98 %, memory 90/95 %, 85/95 C, disk 2048/512 MiB
SYSTEM = SystemSample(
    cpu_percent=25.0, per_core_percent=(20.0, 30.0), load_average=(0.5, 0.25, 0.125),
    cpu_frequency_mhz=1500.0, memory_total=8 * GiB, memory_available=6 * GiB,
    memory_used=2 * GiB, swap_total=2 * GiB, swap_used=0, temperatures=(),
    disk_path='/models', disk_free=10 * GiB, disk_total=100 * GiB)
URL = 'http://127.0.0.1:11434'
RUNNING = ServerStatus(base_url=URL, managed=True, pid=100, running=True, exit_code=None,
                       started_at=1000.0, restarts=0)
LOADED = LoadedModel(name='qwen3:0.6b', size=GiB // 2, context_length=4096,
                     expires_at='2318-01-01T00:00:00Z')
# A 6-core S100 with the model on cores 2-5 at nice 10.
PROCESSES = OllamaProcesses(server=ProcessSample(100, 50 * MiB, 1.5, (2, 3, 4, 5), 10),
                            runners=(ProcessSample(101, 600 * MiB, 350.0, (2, 3, 4, 5), 10),))
PER_CORE = (5.0, 15.0, 90.0, 92.0, 88.0, 94.0)


def system(**changes) -> SystemSample:
    return dataclasses.replace(SYSTEM, **changes)


def serving(lifecycle='active', server=RUNNING, **changes) -> ServingState:
    return ServingState(lifecycle=lifecycle, model='qwen3:0.6b', models_dir='/models',
                        server=server, **changes)


def values(report):
    return dict(report.values)


def model(state, probe=ServerProbe(True, LOADED), chat=ChatFigures()):
    return model_status(state, 'qwen3:0.6b', probe, PROCESSES, chat)


# ---- System CPU ----------------------------------------------------------------------------
@pytest.mark.parametrize('percent, level', [(89.9, Level.OK), (90.0, Level.WARN),
                                            (97.9, Level.WARN), (98.0, Level.ERROR)])
def test_cpu_level_follows_the_thresholds(percent, level):
    report = cpu_status(system(cpu_percent=percent), THRESHOLDS, 0.0)
    assert report.level == level
    assert report.message.endswith(' - the board is CPU bound') == (level != Level.OK)


def test_cpu_message_and_values():
    report = cpu_status(SYSTEM, THRESHOLDS, sampling_cpu_seconds=0.00325)
    assert (report.task, report.message) == ('System CPU', '25 % of 2 cores')
    assert report.values == (
        ('usage (%)', '25.0'), ('core 0 (%)', '20.0'), ('core 1 (%)', '30.0'),
        ('load average (1/5/15 min)', '0.50 0.25 0.12'), ('frequency (MHz)', '1500'),
        ('diagnostics sampling CPU (ms)', '3.25'))


def test_cpu_frequency_that_cannot_be_read():
    report = cpu_status(system(cpu_frequency_mhz=None), THRESHOLDS, 0.0)
    assert values(report)['frequency (MHz)'] == 'not readable'


# ---- Memory --------------------------------------------------------------------------------
@pytest.mark.parametrize('available_percent, level', [(11, Level.OK), (10, Level.WARN),
                                                      (5, Level.ERROR)])
def test_memory_level_follows_the_thresholds(available_percent, level):
    available = 8 * GiB * available_percent // 100
    report = memory_status(system(memory_available=available), THRESHOLDS, model_loaded=False)
    assert report.level == level


def test_memory_message_and_values():
    report = memory_status(SYSTEM, THRESHOLDS, model_loaded=True)
    assert (report.task, report.level) == ('Memory', Level.OK)
    assert report.message == '25 % used, 6.0 GiB available'
    assert values(report) == {'total (MiB)': '8192', 'available (MiB)': '6144',
                              'used (MiB)': '2048', 'used (%)': '25.0',
                              'swap total (MiB)': '2048', 'swap used (MiB)': '0'}


def test_swap_in_use_with_a_model_loaded_is_a_warning():
    swapping = system(swap_used=300 * MiB)
    report = memory_status(swapping, THRESHOLDS, model_loaded=True)
    assert report.level == Level.WARN
    assert report.message == '25 % used, 6.0 GiB available; 300 MiB swapped with a model loaded'
    # Without a model, swap is the system's business.
    assert memory_status(swapping, THRESHOLDS, model_loaded=False).level == Level.OK


def test_swap_does_not_lower_a_memory_error():
    report = memory_status(system(memory_available=GiB // 4, swap_used=MiB), THRESHOLDS, True)
    assert report.level == Level.ERROR


# ---- Temperature ---------------------------------------------------------------------------
def test_no_sensor_is_ok():
    report = temperature_status(SYSTEM, THRESHOLDS)
    assert (report.task, report.level, report.message) == ('Temperature', Level.OK, 'no sensor')
    assert report.values == (('sensors', '0'),)


@pytest.mark.parametrize('degrees, level, message', [
    (84.9, Level.OK, 'hottest 85 C (soc/1)'),
    (85.0, Level.WARN, 'hottest 85 C (soc/1)'),
    (95.0, Level.ERROR, 'hottest 95 C (soc/1) - CPU will throttle')])
def test_the_hottest_sensor_sets_the_level(degrees, level, message):
    report = temperature_status(system(temperatures=(('soc/0', 40.0), ('soc/1', degrees))),
                                THRESHOLDS)
    assert (report.level, report.message) == (level, message)
    assert values(report) == {'hottest (C)': f'{degrees:.1f}', 'hottest sensor': 'soc/1',
                              'sensors': '2', 'soc/0 (C)': '40.0', 'soc/1 (C)': f'{degrees:.1f}'}


# ---- Storage -------------------------------------------------------------------------------
@pytest.mark.parametrize('free_mib, level, message', [
    (2048, Level.OK, '2.0 GiB free for models; the models take 0.00 GiB'),
    (2047, Level.WARN, '2.0 GiB free for models; the models take 0.00 GiB - pulls and imports '
     'may fail'),
    (511, Level.ERROR, '0.5 GiB free for models; the models take 0.00 GiB - pulls and imports '
     'may fail')])
def test_storage_level_follows_the_thresholds(free_mib, level, message):
    report = storage_status(system(disk_free=free_mib * MiB), THRESHOLDS)
    assert (report.task, report.level, report.message) == ('Storage', level, message)
    assert report.values == (('path', '/models'), ('free (MiB)', str(free_mib)),
                             ('total (MiB)', '102400'), ('models (MiB)', '0'))


def test_storage_shows_what_the_models_take():
    report = storage_status(system(models_size=1536 * MiB), THRESHOLDS)
    assert report.message.endswith('the models take 1.50 GiB')
    assert values(report)['models (MiB)'] == '1536'


def test_the_sampler_measures_the_models_blobs(tmp_path):
    blobs = tmp_path / 'blobs'
    blobs.mkdir()
    (blobs / ('sha256-' + 'a' * 64)).write_bytes(b'x' * 1000)
    (blobs / ('sha256-' + 'b' * 64 + '-partial')).write_bytes(b'x' * 24)
    assert ResourceSampler(str(tmp_path)).system().models_size == 1024
    assert ResourceSampler(str(tmp_path / 'none')).system().models_size == 0


def test_a_storage_path_that_cannot_be_read_is_a_warning():
    report = storage_status(system(disk_free=None, disk_total=None), THRESHOLDS)
    assert (report.level, report.message) == (Level.WARN, '/models is not readable')
    assert report.values == (('path', '/models'),)


def test_storage_is_where_models_go_before_configure():
    # The sample's path is the snapshot's models_dir, which the node fills from the parameter
    # before the first configure (issue 12 item 18): the status reports that path.
    before_configure = ServingState(models_dir='/home/robot/.ollama/models')
    report = storage_status(system(disk_path=before_configure.models_dir), THRESHOLDS)
    assert values(report)['path'] == '/home/robot/.ollama/models'


# ---- Ollama server -------------------------------------------------------------------------
def test_a_running_server_that_answers_is_ok():
    report = server_status(dataclasses.replace(serving(), num_thread=4),
                           ServerProbe(True, LOADED), PROCESSES, now=1042.4,
                           per_core_percent=PER_CORE)
    assert (report.task, report.level) == ('Ollama server', Level.OK)
    assert report.message == ('managed server running (active); model share: 4 threads on '
                              'cores 2-5 at nice 10, using 3.5 cores')
    assert report.values == (
        ('lifecycle state', 'active'), ('managed', 'True'), ('url', URL), ('pid', '100'),
        ('running', 'True'), ('reachable', 'True'), ('uptime (s)', '42'), ('restarts', '0'),
        ('server RSS (MiB)', '50'), ('server CPU (%)', '1.5'), ('runners', '1'),
        ('runner RSS (MiB)', '600'), ('runner CPU (%)', '350.0'),
        ('model threads (num_thread)', '4'), ('model cores', '2-5 (4 of 6)'),
        ('model nice', '10'), ('server + runners CPU (% of one core)', '351.5'),
        ('its cores busy (%)', '91.0'), ('core 2 busy (%)', '90.0'),
        ('core 3 busy (%)', '92.0'), ('core 4 busy (%)', '88.0'), ('core 5 busy (%)', '94.0'))


def test_the_share_says_how_the_threads_were_chosen_and_every_core_when_not_restricted():
    everywhere = OllamaProcesses(server=ProcessSample(100, 0, 0.0, (0, 1), 0))
    summary, shown = cpu_share(2, everywhere, (50.0, 30.0),
                               'automatic: 2 usable cores: affinity 0-1')
    assert summary == 'model share: 2 threads on cores 0-1 at nice 0, using 0.0 cores'
    assert dict(shown)['model cores'] == '0-1 (2 of 2)'
    assert [value for value in shown if value[0].startswith('model threads')] == [
        ('model threads (num_thread)', 2),
        ('model threads chosen', 'automatic: 2 usable cores: affinity 0-1')]
    assert cpu_share(4, OllamaProcesses(), (50.0, 30.0)) == ('', [])
    assert format_cores((0, 1, 2, 4, 6, 7)) == '0-2,4,6-7'
    assert format_cores(()) == ''


def test_an_adopted_server_says_so():
    adopted = dataclasses.replace(RUNNING, managed=False, pid=None, started_at=None)
    report = server_status(serving('inactive', adopted), ServerProbe(True), OllamaProcesses(),
                           now=5.0)
    assert (report.level, report.message) == (Level.OK, 'adopted server running (inactive)')
    assert values(report)['pid'] == '' and values(report)['uptime (s)'] == '0'
    assert values(report)['server RSS (MiB)'] == '0' and values(report)['runners'] == '0'


@pytest.mark.parametrize('lifecycle', ['unconfigured', 'finalized'])
def test_no_server_is_ok_outside_the_states_that_run_one(lifecycle):
    report = server_status(serving(lifecycle, None), ServerProbe(), OllamaProcesses(), 0.0)
    assert (report.level, report.message) == (Level.OK, f'not running ({lifecycle})')
    assert report.values == (('lifecycle state', lifecycle), ('running', 'False'),
                             ('reachable', 'False'))


def test_a_failed_configure_shows_on_the_server_status():
    state = serving('unconfigured', None, server_error='port 11434 is taken by another program')
    report = server_status(state, ServerProbe(), OllamaProcesses(), 0.0)
    assert (report.level, report.message) == (Level.WARN,
                                              'port 11434 is taken by another program')


def test_a_server_that_exited_is_an_error_naming_the_exit():
    dead = dataclasses.replace(RUNNING, running=False, exit_code=-9)
    report = server_status(serving('active', dead), ServerProbe(False), OllamaProcesses(), 0.0)
    assert report.level == Level.ERROR
    assert report.message == 'the Ollama server (pid 100) exited with code -9'
    assert values(report)['running'] == 'False' and values(report)['reachable'] == 'False'


@pytest.mark.parametrize('lifecycle', ['inactive', 'active', 'activating', 'deactivating'])
def test_a_server_that_does_not_answer_is_an_error_where_it_should_run(lifecycle):
    report = server_status(serving(lifecycle), ServerProbe(False), PROCESSES, 0.0)
    assert report.level == Level.ERROR
    assert report.message == f'the Ollama server at {URL} does not answer'


def test_a_server_not_answering_while_shutting_down_is_not_an_error():
    report = server_status(serving('shuttingdown'), ServerProbe(False), PROCESSES, 0.0)
    assert report.level == Level.OK


def test_the_node_s_cause_names_a_server_error():
    state = serving(server_error='the server does not answer HTTP (hung); restarting')
    report = server_status(state, ServerProbe(False), PROCESSES, 0.0)
    assert (report.level, report.message) == (
        Level.ERROR, 'the server does not answer HTTP (hung); restarting')


def test_a_server_problem_while_it_runs_is_a_warning():
    state = serving(server_error='server exited with code -9; restarting the server')
    report = server_status(state, ServerProbe(True, LOADED), PROCESSES, 0.0)
    assert (report.level, report.message) == (
        Level.WARN, 'server exited with code -9; restarting the server')


def test_the_server_error_clears_after_recovery():
    # Issue 12 item 18: once the node has recovered it clears server_error, and the status is
    # OK again with the restart counted.
    restarted = dataclasses.replace(RUNNING, restarts=1)
    report = server_status(serving(server=restarted, server_error=''), ServerProbe(True, LOADED),
                           PROCESSES, 1001.0)
    assert report.level == Level.OK
    assert report.message.startswith('managed server running (active); model share')
    assert values(report)['restarts'] == '1'


# ---- Model ---------------------------------------------------------------------------------
def test_a_loaded_model_is_ok_with_its_figures():
    chat = ChatFigures(served=3, failed=1, canceled=2, last_tokens_per_second=12.345,
                       last_time_to_first_token=0.1234, goals_running=1, goals_queued=2,
                       robot_tools=('navigate', 'look'))
    report = model(serving(model_loaded=True, capabilities=('completion', 'tools')), chat=chat)
    assert (report.task, report.level) == ('Model', Level.OK)
    assert report.message == 'qwen3:0.6b loaded (0.50 GiB)'
    assert report.values == (
        ('model', 'qwen3:0.6b'), ('loaded', 'True'), ('size (MiB)', '512'),
        ('runner RSS (MiB)', '600'), ('context length', '4096'),
        ('capabilities', 'completion, tools'),
        ('expires at', 'never'), ('pull progress (%)', ''),
        ('last tokens/s', '12.3'), ('last time to first token (s)', '0.123'),
        ('chats served', '3'), ('chats failed', '1'), ('chats canceled', '2'),
        ('goals running', '1'), ('goals queued', '2'), ('robot tools', 'navigate, look'))


@pytest.mark.parametrize('expires_at, shown', [
    ('2318-03-04T05:06:07.123456+00:00', 'never'),      # keep_alive -1
    ('2026-12-06T21:05:00+00:00', '2026-12-06T21:05:00+00:00'),
    ('', ''),
])
def test_the_model_shows_when_ollama_unloads_it(expires_at, shown):
    loaded = LoadedModel(name='qwen3:0.6b', size=GiB, context_length=8192, expires_at=expires_at)
    report = model(serving(model_loaded=True), ServerProbe(True, loaded))
    assert values(report)['expires at'] == shown
    assert values(report)['context length'] == '8192'


def test_active_without_the_model_is_an_error():
    report = model(serving(), ServerProbe(True, None))
    assert (report.level, report.message) == (Level.ERROR,
                                              'qwen3:0.6b should be loaded and is not')
    assert values(report)['loaded'] == 'False' and values(report)['size (MiB)'] == '0'


@pytest.mark.parametrize('lifecycle', ['unconfigured', 'inactive', 'activating'])
def test_not_loaded_outside_active_is_ok(lifecycle):
    report = model(serving(lifecycle), ServerProbe(True, None))
    assert (report.level, report.message) == (Level.OK, f'qwen3:0.6b not loaded ({lifecycle})')


def test_a_pull_in_progress_shows_its_progress():
    report = model(serving('activating', pull_progress=0.426), ServerProbe(True, None))
    assert (report.level, report.message) == (Level.OK, 'pulling qwen3:0.6b: 43 %')
    assert values(report)['pull progress (%)'] == '43'


def test_an_import_in_progress_shows_its_progress():
    report = model(serving('activating', pull_progress=0.5, progress_verb='importing'),
                   ServerProbe(True, None))
    assert (report.level, report.message) == (Level.OK, 'importing qwen3:0.6b: 50 %')


def test_a_model_that_failed_to_load_shows_on_the_model_status():
    # Issue 12 item 18: a failed activate (a bad name, out of memory) is reported on Model,
    # not on the server, as a WARN once the node is back in inactive.
    cause = "activate failed: model 'nosuch:latest' not found"
    report = model(serving('inactive', model_error=cause), ServerProbe(True, None))
    assert (report.level, report.message) == (Level.WARN, cause)
    server = server_status(serving('inactive', model_error=cause), ServerProbe(True, None),
                           PROCESSES, 0.0)
    assert server.level == Level.OK


def test_a_model_error_while_active_without_the_model_is_an_error():
    report = model(serving(model_error='the runner was killed'), ServerProbe(True, None))
    assert (report.level, report.message) == (Level.ERROR, 'the runner was killed')


def test_a_model_error_with_the_model_still_loaded_is_a_warning():
    # An unload that did not take: the model is still in memory.
    cause = "'qwen3:0.6b' is still loaded 10 s after the unload"
    report = model(serving('inactive', model_error=cause))
    assert (report.level, report.message) == (Level.WARN, cause)


def test_recovering_while_active_is_a_warning():
    cause = 'the runner exited; reloading the model'
    report = model(serving(recovering=cause, model_error='an older failure'),
                   ServerProbe(True, None))
    assert (report.level, report.message) == (Level.WARN, f'recovering: {cause}')


def test_recovering_counts_only_while_active():
    # A recovery cut short by a deactivate: the model status reports the state, not the recovery.
    report = model(serving('inactive', recovering='the runner exited; reloading the model'),
                   ServerProbe(True, None))
    assert (report.level, report.message) == (Level.OK, 'qwen3:0.6b not loaded (inactive)')


def test_the_model_error_clears_after_recovery():
    report = model(serving(model_loaded=True, recovering='', model_error=''))
    assert (report.level, report.message) == (Level.OK, 'qwen3:0.6b loaded (0.50 GiB)')


def test_the_model_name_is_the_one_given():
    # Before the first configure the snapshot names no model: the caller passes the parameter.
    report = model_status(ServingState(), 'llama3.2:1b', ServerProbe(), OllamaProcesses(),
                          ChatFigures())
    assert (report.level, report.message) == (Level.OK, 'llama3.2:1b not loaded (unconfigured)')
    assert values(report)['model'] == 'llama3.2:1b'
