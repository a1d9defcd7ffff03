"""The robot tools example: `ros2 launch s100_llm robot_tools.launch.py [model:=...]`.

Starts llm.launch.py (the node, configured and activated) with robot_tools_file set to
config/robot_tools.yaml, and robot_demo, the pretend robot whose navigate action, look service
and say topic that file names. Every argument of llm.launch.py applies (model, models_dir,
host, params_file, ...); model defaults to one that can call tools. Then one goal makes the
robot navigate, look and say (docs/robot-tools.md):

    ros2 action send_goal -f /llm/chat s100_llm_msgs/action/Chat \
      "{prompt: 'Go to the door, look whether it is open and say what you found.',
        robot_tools: [navigate, look, say]}"
"""

import launch
from launch.actions import DeclareLaunchArgument
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# A small model that calls tools (llm.yaml's deepseek-r1:1.5b cannot).
MODEL = 'qwen2.5:1.5b'


def generate_launch_description() -> launch.LaunchDescription:
    share = FindPackageShare('s100_llm')
    return launch.LaunchDescription([
        DeclareLaunchArgument('model', default_value=MODEL,
                              description='Ollama model to serve; it must call tools.'),
        DeclareLaunchArgument('robot_tools_file',
                              default_value=[share, '/config/robot_tools.yaml'],
                              description='The tools the model may use (the example robot).'),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource([share, '/launch/llm.launch.py']),
            launch_arguments={'model': LaunchConfiguration('model'),
                              'robot_tools_file': LaunchConfiguration('robot_tools_file')
                              }.items()),
        Node(package='s100_llm', executable='robot_demo', name='robot_demo', output='screen'),
    ])
