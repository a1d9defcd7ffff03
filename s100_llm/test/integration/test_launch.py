"""Issue: `ros2 launch s100_llm llm.launch.py`: config/llm.yaml against the declared parameters
and a params file read by the node. The launch file itself runs for real, through `ros2 launch`,
in s100_llm/test/cli (autostart's transitions: test_lifecycle_cli.py)."""


import httpx
import yaml

from harness import install_prefix
from s100_llm.core.config import PARAMETERS

SHARE = install_prefix() / 'share' / 's100_llm'


def test_the_installed_llm_yaml_lists_every_parameter_with_its_default():
    document = yaml.safe_load((SHARE / 'config' / 'llm.yaml').read_text())
    assert document['/**']['ros__parameters'] == {p.name: p.default for p in PARAMETERS}


def test_the_node_reads_a_params_file(start_llm, tmp_path, ollama_port, models_dir):
    document = yaml.safe_load((SHARE / 'config' / 'llm.yaml').read_text())
    settings = document['/**']['ros__parameters']
    settings.update(model='thinker:latest', ollama_bin='s100-ollama-emulator',
                    host=f'127.0.0.1:{ollama_port}', models_dir=models_dir)
    params_file = tmp_path / 'robot.yaml'
    params_file.write_text(yaml.safe_dump(document))
    llm = start_llm(params_file=str(params_file))
    llm.activate()
    assert httpx.get(llm.base_url + '/api/ps').json()['models'][0]['name'] == 'thinker:latest'
