"""Issue: `make demo` runs the node end to end; this runs the same script the same way."""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_demo_streams_an_answer_and_leaves_nothing_running(domain_id):
    demo = subprocess.run(['python', str(ROOT / 'scripts' / 'demo.py')], capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert 'Paris' in demo.stdout
    for expected in ('-> active', 'llm: Memory', 'llm: Ollama server', '-> finalized',
                     'nothing left running: True'):
        assert expected in demo.stdout
