"""Issue 14: the node declares every parameter as the parameter table (core/config.py) says,
read over DDS the way `ros2 param describe` and `ros2 param set` read them."""

from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.msg import ParameterValue
from rcl_interfaces.srv import DescribeParameters
from rcl_interfaces.srv import SetParameters

from s100_llm.core.config import PARAMETERS


def test_every_parameter_is_declared_as_the_table_says(start_llm):
    llm = start_llm()
    names = [parameter.name for parameter in PARAMETERS]
    described = llm.client._call(DescribeParameters, '/llm/describe_parameters',
                                 DescribeParameters.Request(names=names)).descriptors
    assert [descriptor.name for descriptor in described] == names
    for parameter, descriptor in zip(PARAMETERS, described):
        ranges = list(descriptor.floating_point_range) + list(descriptor.integer_range)
        assert (descriptor.description, descriptor.read_only,
                [(r.from_value, r.to_value) for r in ranges],
                descriptor.additional_constraints) == (
            parameter.documentation, parameter.read_only,
            [parameter.bounds] if parameter.bounds else [],
            f"one of {', '.join(parameter.choices)}" if parameter.choices else ''), parameter.name
        # Float parameters take integers too, and string parameters numbers (dynamic typing);
        # the node checks their type.
        assert descriptor.dynamic_typing == (parameter.value_type in (float, str)), \
            parameter.name


def test_a_parameter_read_at_start_refuses_a_change(start_llm):
    llm = start_llm()
    reply = llm.client._call(SetParameters, '/llm/set_parameters', SetParameters.Request(
        parameters=[ParameterMsg(name='num_parallel', value=ParameterValue(
            type=ParameterType.PARAMETER_INTEGER, integer_value=2))]))
    assert not reply.results[0].successful
    assert 'read-only' in reply.results[0].reason, reply.results[0].reason
