"""The s100_llm node, its chat CLI, launch file and configuration (ament_python)."""

from glob import glob

from setuptools import find_packages
from setuptools import setup

PACKAGE = 's100_llm'

setup(
    name=PACKAGE,
    version='0.2.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml')),
    ],
    # The node's dependencies are declared in package.xml (rosdep installs them).
    zip_safe=True,
    maintainer='s100_llm developers',
    maintainer_email='dev@s100-llm.invalid',
    description='A lifecycle node that owns a local Ollama server and model on the robot.',
    license='Apache-2.0',
    # colcon runs pytest for packages that declare it as a test requirement.
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            # `ros2 run s100_llm llm_node` / `ros2 run s100_llm chat` (installed to lib/s100_llm).
            'llm_node = s100_llm.node:main',
            'chat = s100_llm.chat_cli:main',
            # The speech chain bridge (docs/tts-bridge.md; launch argument tts_bridge:=true).
            'tts_bridge = s100_llm.tts_bridge:main',
            # The pretend robot of the robot tools example (docs/robot-tools.md).
            'robot_demo = s100_llm.examples.robot_demo:main',
            # The embeddings example (docs/embeddings.md).
            'remember_recall = s100_llm.examples.remember_recall:main',
        ],
    },
)
