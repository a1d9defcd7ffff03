"""Issue: `make demo` runs the node end to end; this runs the same script the same way (with
the real `ros2` commands where ROS 2 is installed; its own client elsewhere)."""

import os
import pathlib
import shutil
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
    if shutil.which('ros2'):
        for typed in ('$ ros2 launch s100_llm llm.launch.py model:=smollm2:135m',
                      '$ ros2 run s100_llm chat', '$ ros2 topic echo /diagnostics --once',
                      '$ ros2 lifecycle set /llm deactivate'):
            assert typed in demo.stdout, demo.stdout
