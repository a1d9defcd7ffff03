"""The node's ROS parameters: core.config's parameter table, declared and read through rclpy.

Every parameter (its default, range, description, read-only flag and when a change takes
effect) is written once, in core/config.py; this module only declares them with descriptors
(`ros2 param describe` shows the description and range) and turns their values into the core's
settings. Values are checked when they are set, so a bad `ros2 param set` is refused with the
reason.
"""

from typing import Any, Dict, List, Optional, Type, TypeVar

from rcl_interfaces.msg import FloatingPointRange
from rcl_interfaces.msg import IntegerRange
from rcl_interfaces.msg import ParameterDescriptor
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter as RosParameter

from .core.config import ConfigError
from .core.config import expand_models_dir
from .core.config import NodeSettings
from .core.config import PARAMETERS
from .core.config import settings_from
from .core.config import settings_part
from .core.params import Parameter

# What the node and diagnostics use from here; the settings types and helpers live in core.
__all__ = ['declare', 'read', 'read_part', 'validate_change', 'value', 'NodeSettings',
           'expand_models_dir']
SettingsT = TypeVar('SettingsT')


def declare(node: Node) -> None:
    """Declare every parameter with its default and descriptor."""
    for parameter in PARAMETERS:
        node.declare_parameter(parameter.name, parameter.default, _descriptor(parameter))


def _descriptor(parameter: Parameter) -> ParameterDescriptor:
    """The description, read-only flag, range and choices of a parameter.

    A string parameter is declared with dynamic typing too: YAML makes `-p cpu_cores:=0`, a
    params file's `cpu_cores: 3` and `ros2 param set /llm cpu_cores 3` integers, which rclpy
    would refuse (at startup with a traceback, InvalidParameterTypeException); value() turns
    them into their text, and check_values refuses what has none (a list) with the reason.

    A float parameter is declared with dynamic typing so that it also takes an integer, at
    startup (`-p start_timeout:=5`, a YAML `95`) and from `ros2 param set` (which sends `95` as
    an integer): rclpy refuses a statically typed double parameter an integer ("Wrong
    parameter type"), and a pre-set callback that could convert it exists only from Iron on
    and is not run for startup overrides. The node's own validation (core.params) checks the
    type and range of every value instead, and read() turns integers into floats.
    """
    descriptor = ParameterDescriptor(description=parameter.documentation,
                                     read_only=parameter.read_only)
    if parameter.value_type is str:
        descriptor.dynamic_typing = True
    if parameter.choices:
        descriptor.additional_constraints = f"one of {', '.join(parameter.choices)}"
    if parameter.bounds is None:
        return descriptor
    low, high = parameter.bounds
    if parameter.value_type is float:
        descriptor.dynamic_typing = True
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                              to_value=float(high))]
    else:
        descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high))]
    return descriptor


def value(node: Node, name: str) -> Any:
    """A parameter's value in its declared type where it can be (a number given for a string
    parameter as its text, an integer for a float as a float), for the few read one by one
    (read() and read_part() convert the same way)."""
    return _BY_NAME[name].as_declared(node.get_parameter(name).value)


_BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}


def read(node: Node, overrides: Optional[Dict[str, Any]] = None) -> NodeSettings:
    """Build and validate the settings from the parameters (with overrides); ConfigError."""
    values = {parameter.name: node.get_parameter(parameter.name).value
              for parameter in PARAMETERS}
    values.update(overrides or {})
    return settings_from(values)


def read_part(node: Node, owner: Type[SettingsT]) -> SettingsT:
    """One settings class from the current parameters: for settings that apply at once (the
    restart policy, the diagnostics thresholds), read where they are used."""
    return settings_part(owner, {parameter.name: node.get_parameter(parameter.name).value
                                 for parameter in PARAMETERS if parameter.owner is owner})


def validate_change(node: Node, parameters: List[RosParameter]) -> SetParametersResult:
    """on_set_parameters callback: refuse a value that would make the settings invalid."""
    try:
        read(node, {p.name: p.value for p in parameters})
    except ConfigError as error:
        return SetParametersResult(successful=False, reason=str(error))
    return SetParametersResult(successful=True)
