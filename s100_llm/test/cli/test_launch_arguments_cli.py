"""Issue 13: the launch file's arguments as a user sets them: autostart:=false,
namespace:=robot1, params_file:= a user file, tts_bridge:=true with `ros2 topic pub/echo` (and
with namespace:=robot1, issue 25)."""

import importlib.util
import re
import signal

import yaml

from cli.cli_harness import Ros2
from cli.cli_harness import stop_process
from harness import api_ps
from harness import install_prefix
from harness import runners
from harness import servers
from harness import wait_for
from s100_llm.core.config import PARAMETERS

SHARE = install_prefix() / 'share' / 's100_llm'


def test_autostart_false_leaves_the_node_unconfigured_to_the_user(launch, ros2: Ros2):
    llm = launch('autostart:=false')
    llm.wait_output('ready (unconfigured)')
    assert ros2.lifecycle_state() == 'unconfigured' and servers(llm) == []
    assert ros2('lifecycle', 'set', '/llm', 'configure').stdout.strip() == \
        'Transitioning successful'
    # Nothing drives it further: it stays where the user put it.
    assert ros2.lifecycle_state() == 'inactive'
    assert len(servers(llm)) == 1 and runners(llm) == []


def test_namespace_puts_services_action_and_diagnostics_under_it(launch, ros2: Ros2):
    llm = launch('namespace:=robot1')
    llm.wait_state('active', '/robot1/llm')
    assert ros2.lifecycle_state('/robot1/llm') == 'active'
    assert ros2('lifecycle', 'nodes').stdout.split() == ['/robot1/llm']
    assert '/robot1/llm/chat [s100_llm_msgs/action/Chat]' in \
        ros2('action', 'list', '-t').stdout.splitlines()
    services = ros2('service', 'list').stdout.split()
    assert '/robot1/llm/change_state' in services and '/llm/change_state' not in services
    echoed = ros2('topic', 'echo', '/diagnostics', '--once').stdout
    names = [s['name'] for s in yaml.safe_load(echoed.split('---')[0])['status']]
    assert names and all(name.startswith('robot1/llm: ') for name in names), names
    sent = ros2('action', 'send_goal', '/robot1/llm/chat', 's100_llm_msgs/action/Chat',
                "{prompt: 'Hi'}").stdout
    assert 'Goal finished with status: SUCCEEDED' in sent, sent


def test_params_file_is_a_users_copy_of_llm_yaml(launch, ros2: Ros2, tmp_path, ollama_port,
                                                 models_dir):
    document = yaml.safe_load((SHARE / 'config' / 'llm.yaml').read_text())
    document['/**']['ros__parameters'].update(
        model='thinker:latest', ollama_bin='s100-ollama-emulator',
        host=f'127.0.0.1:{ollama_port}', models_dir=models_dir, max_tokens_limit=64,
        diagnostics_period=0.5)
    params_file = tmp_path / 'robot.yaml'
    params_file.write_text(yaml.safe_dump(document))
    # Only the file: the launch arguments the user did not give must not override it.
    llm = launch(f'params_file:={params_file}', emulator_arguments=False)
    llm.wait_state('active')
    assert [m['name'] for m in api_ps(llm)] == ['thinker:latest']
    assert ros2('param', 'get', '/llm', 'max_tokens_limit').stdout.strip() == \
        'Integer value is: 64'
    # An argument given overrides the file.
    llm.stop()
    llm.close()
    llm = launch(f'params_file:={params_file}', 'model:=echo:latest', emulator_arguments=False)
    llm.wait_state('active')
    assert [m['name'] for m in api_ps(llm)] == ['echo:latest']


def spoken_through_the_bridge(ros2: Ros2, tmp_path, namespace: str = '') -> str:
    """What `ros2 topic echo <ns>/tts_text` printed after `ros2 topic pub <ns>/prompt_text`."""
    spoken_log = tmp_path / 'echo.log'
    echo = ros2.start('topic', 'echo', f'{namespace}/tts_text', 'std_msgs/msg/String', '--once',
                      log_path=spoken_log)
    try:
        wait_for(lambda: 'Subscription count: 1' in ros2('topic', 'info', f'{namespace}/tts_text',
                                                         check=False).stdout,
                 'ros2 topic echo to subscribe')
        # -w 1: publish once the bridge listens.
        ros2('topic', 'pub', '--once', '-w', '1', f'{namespace}/prompt_text',
             'std_msgs/msg/String', "{data: 'Hello robot'}")
        wait_for(lambda: echo.poll() is not None, 'ros2 topic echo --once to get a sentence')
    finally:
        stop_process(echo, signal.SIGINT)
    return spoken_log.read_text()


def test_tts_bridge_speaks_what_prompt_text_asked(launch, ros2: Ros2, tmp_path):
    llm = launch('tts_bridge:=true')
    llm.wait_state('active')
    spoken = spoken_through_the_bridge(ros2, tmp_path)
    assert re.search(r"^data: '?user: Hello robot'?$", spoken, re.MULTILINE), spoken


def test_tts_bridge_follows_the_namespace(launch, ros2: Ros2, tmp_path):
    """Issue 25: the bridge is its own node, its topics and action relative to namespace:=."""
    llm = launch('tts_bridge:=true', 'namespace:=robot1')
    llm.wait_state('active', '/robot1/llm')
    assert '/robot1/tts_bridge' in ros2('node', 'list').stdout.split()
    spoken = spoken_through_the_bridge(ros2, tmp_path, '/robot1')
    assert re.search(r"^data: '?user: Hello robot'?$", spoken, re.MULTILINE), spoken
    topics = ros2('topic', 'list').stdout.split()
    assert '/prompt_text' not in topics and '/tts_text' not in topics, topics


def test_launch_arguments_name_the_defaults_of_the_parameters_they_override():
    """The launch file is loaded as `ros2 launch` loads it (it needs launch_ros, hence here)."""
    spec = importlib.util.spec_from_file_location('llm_launch', SHARE / 'launch' / 'llm.launch.py')
    launch_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_file)
    defaults = {p.name: p.default for p in PARAMETERS}
    for name in launch_file.OVERRIDING_ARGUMENTS:
        description = launch_file.ARGUMENTS[name][1]
        # "...; empty: params_file's (<its default> in llm.yaml)."
        said = re.search(r"params_file's \((.*)\)", description).group(1)
        default = defaults[name]
        # An empty default is Ollama's own (models_dir) or nothing (robot_tools_file: no tools).
        shown = ({'models_dir': "Ollama's default"}.get(name, 'none') if default == '' else
                 str(default).lower() if isinstance(default, bool) else default)
        assert re.search(rf'(^|[ (]){re.escape(shown)}([ ,]|$)', said), (name, description)
