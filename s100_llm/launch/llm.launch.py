"""Bring the LLM up: `ros2 launch s100_llm llm.launch.py [model:=...] [autostart:=true]`.

Starts llm_node as a lifecycle node (and, with tts_bridge:=true, the tts_bridge node next to
it) and, with autostart (the default), drives it to active once: configure when the process
starts, activate when that first configure succeeded. This is the event pattern that works
on Humble (whose launch_ros has no `autostart`) as well as on Jazzy and Kilted. Autostart is
spent on the first configure whatever its outcome: later manual transitions (`ros2 lifecycle
set /llm deactivate`, a configure after a failed one) stick.
On Ctrl-C, launch sends SIGINT: the node stops the Ollama server before it exits; when launch
dies without that (SIGTERM kills it at once), the nodes notice and exit too.
"""

import os
from typing import Callable, List

from ament_index_python.packages import get_package_share_directory
from ament_index_python.packages import PackageNotFoundError
import launch
from launch import Action
from launch import LaunchContext
from launch.actions import DeclareLaunchArgument
from launch.actions import EmitEvent
from launch.actions import OpaqueFunction
from launch.actions import RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessStart
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.actions import Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

ARGUMENTS = {
    'namespace': ('', "Namespace of the nodes (services become /<ns>/llm/..., the bridge's "
                      'topics /<ns>/prompt_text and /<ns>/tts_text).'),
    'params_file': (os.path.join('__share__', 'config', 'llm.yaml'),
                    'Parameters file of llm_node; model, models_dir, host and ollama_bin '
                    'override it when given.'),
    'model': ('', "Ollama model to serve; empty: params_file's (deepseek-r1:1.5b in llm.yaml)."),
    'models_dir': ('', "OLLAMA_MODELS; empty: params_file's (llm.yaml: Ollama's default, "
                       '~/.ollama/models).'),
    'host': ('', "Address of the Ollama server; empty: params_file's (127.0.0.1:11434 in "
                 'llm.yaml).'),
    'ollama_bin': ('', "The ollama executable; empty: params_file's (ollama in llm.yaml)."),
    'robot_tools_file': ('', 'The robot tools the model may call (docs/robot-tools.md); empty: '
                             "params_file's (none in llm.yaml)."),
    'autostart': ('true', 'Configure and activate the node once it starts.'),
    'log_level': ('info', 'Logging level of the node.'),
    'tts_bridge': ('false', 'true: also start the tts_bridge node, prompt_text -> llm/chat -> '
                            'tts_text in the namespace (D-Robotics speech chain).'),
    'diagnostic_aggregator': ('false', 'Also start diagnostic_aggregator with the LLM analyzers '
                                       '(needs the diagnostic_aggregator package).'),
}
# Parameters the arguments above set; an argument left empty leaves the params file's value.
OVERRIDING_ARGUMENTS = ('model', 'models_dir', 'host', 'ollama_bin', 'robot_tools_file')


def require_aggregator_package(context: LaunchContext) -> List[Action]:
    """Fail the launch before anything starts when the aggregator is asked for but missing
    (launch would otherwise fail only after it started llm_node)."""
    try:
        get_package_share_directory('diagnostic_aggregator')
    except PackageNotFoundError:
        raise RuntimeError(
            "diagnostic_aggregator:=true needs the package 'diagnostic_aggregator', which is not "
            'installed (apt install ros-$ROS_DISTRO-diagnostic-aggregator); nothing was started')
    return []


def activate_if_configured(node: LifecycleNode) -> Callable[[LaunchContext], List[Action]]:
    """Autostart's second step, run when the first configure ended whatever its outcome:
    activate if it succeeded, otherwise leave the node to the user's transitions."""
    def step(context: LaunchContext) -> List[Action]:
        if context.locals.event.goal_state != 'inactive':
            return []
        return [EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_ACTIVATE))]
    return step


def llm_node_with_autostart(context: LaunchContext) -> List[Action]:
    """llm_node with the given arguments over the params file, and autostart's two steps."""
    overrides = {name: LaunchConfiguration(name) for name in OVERRIDING_ARGUMENTS
                 if LaunchConfiguration(name).perform(context) != ''}
    node = LifecycleNode(
        package='s100_llm', executable='llm_node', name='llm',
        namespace=LaunchConfiguration('namespace'), output='screen',
        parameters=[LaunchConfiguration('params_file'), overrides],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')])
    autostart = IfCondition(LaunchConfiguration('autostart'))
    configure_on_start = RegisterEventHandler(OnProcessStart(
        target_action=node,
        on_start=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=Transition.TRANSITION_CONFIGURE))]),
        condition=autostart)
    # Any end of the first configure (inactive, unconfigured, errorprocessing) disarms this.
    activate_once_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state='configuring',
        entities=[OpaqueFunction(function=activate_if_configured(node))],
        handle_once=True), condition=autostart)
    return [node, configure_on_start, activate_once_configured]


def generate_launch_description() -> launch.LaunchDescription:
    share = FindPackageShare('s100_llm')
    declared = []
    for name, (default, description) in ARGUMENTS.items():
        if default.startswith('__share__'):
            default = [share, default[len('__share__'):]]
        declared.append(DeclareLaunchArgument(name, default_value=default,
                                              description=description))
    aggregator_check = OpaqueFunction(
        function=require_aggregator_package,
        condition=IfCondition(LaunchConfiguration('diagnostic_aggregator')))
    aggregator = Node(
        package='diagnostic_aggregator', executable='aggregator_node', output='screen',
        parameters=[[share, '/config/diagnostic_aggregator.yaml']],
        condition=IfCondition(LaunchConfiguration('diagnostic_aggregator')))
    # A client of llm_node's chat action like any behaviour: its relative names follow the
    # namespace, and it waits for the action (prompts before it is served are dropped, logged).
    tts_bridge = Node(
        package='s100_llm', executable='tts_bridge', name='tts_bridge',
        namespace=LaunchConfiguration('namespace'), output='screen',
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        condition=IfCondition(LaunchConfiguration('tts_bridge')))
    return launch.LaunchDescription(
        declared + [aggregator_check, OpaqueFunction(function=llm_node_with_autostart),
                    tts_bridge, aggregator])
