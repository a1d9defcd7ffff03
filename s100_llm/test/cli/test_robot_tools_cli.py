"""Issue 26: the robot tools example as docs/robot-tools.md shows it: `ros2 launch s100_llm
robot_tools.launch.py` (the node with config/robot_tools.yaml, and robot_demo), then one
`ros2 action send_goal` makes the pretend robot navigate, look and say (the scripted `tooler`
model stands in for a model that calls tools)."""

from cli.cli_harness import Launch
from cli.cli_harness import Ros2


def test_the_example_launch_and_one_send_goal_drive_the_demo_robot(launch, ros2: Ros2):
    llm: Launch = launch(launch_file='robot_tools.launch.py', model='tooler:latest')
    llm.wait_state('active')
    sent = ros2('action', 'send_goal', '/llm/chat', 's100_llm_msgs/action/Chat',
                "{prompt: 'navigate place=door; look target=door; say data=\"it is open\"', "
                'robot_tools: [navigate, look, say]}').stdout
    assert 'Goal finished with status: SUCCEEDED' in sent, sent
    for line in ("navigate to 'door' at 0.5 m/s", "look at 'door': the door is open",
                 'say: it is open'):
        llm.wait_output(line)
