"""interface_schema.py against real generated classes: type names, derived schemas, filling."""

import copy
import json
import math
from typing import Any, Dict

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped
from geometry_msgs.msg import PoseWithCovariance
from jsonschema import Draft7Validator
import pytest
from s100_llm_demo_interfaces.action import Navigate
from s100_llm_demo_interfaces.srv import Look
from std_msgs.msg import Header
from std_msgs.msg import String

from s100_llm.core.schema import document_problem
from s100_llm.core.schema import schema_problem
from s100_llm.interface_schema import fill_from_json
from s100_llm.interface_schema import fill_message
from s100_llm.interface_schema import InterfaceProblem
from s100_llm.interface_schema import looks_like_type_name
from s100_llm.interface_schema import MAX_ITEMS
from s100_llm.interface_schema import MAX_STRING
from s100_llm.interface_schema import message_class
from s100_llm.interface_schema import message_schema
from s100_llm.interface_schema import message_to_data
from s100_llm.interface_schema import type_name

POSE: Dict[str, Any] = {
    'header': {'stamp': {'sec': 12, 'nanosec': 5}, 'frame_id': 'map'},
    'pose': {'position': {'x': 1.5, 'y': -2, 'z': 0.0},
             'orientation': {'x': 0.0, 'y': 0.0, 'z': 0.0, 'w': 1.0}}}


# --- message_class ------------------------------------------------------------------------

@pytest.mark.parametrize('name, kind, expected', [
    ('geometry_msgs/msg/PoseStamped', 'msg', PoseStamped),
    ('geometry_msgs/PoseStamped', 'msg', PoseStamped),
    (' std_msgs/msg/String ', 'msg', String),
    ('s100_llm_demo_interfaces/srv/Look', 'srv', Look),
    ('s100_llm_demo_interfaces/action/Navigate', 'action', Navigate),
])
def test_message_class_resolves_installed_types(name: str, kind: str, expected: Any) -> None:
    assert message_class(name, kind=kind) is expected


@pytest.mark.parametrize('name, kind, words', [
    ('nope_msgs/msg/Thing', 'msg', ['nope_msgs/msg/Thing', 'not installed']),
    ('std_msgs/msg/Nope', 'msg', ['std_msgs/msg/Nope', 'not installed']),
    ('std_msgs/msg/Header', 'srv', ['std_msgs/msg/Header', 'message type, not a service']),
    ('s100_llm_demo_interfaces/srv/Look', 'msg', ['Look', 'service type, not a message']),
    ('s100_llm_demo_interfaces/Look', 'srv', ['Look', 'not a service type name']),
    ('std_msgs/msg/string', 'msg', ['std_msgs/msg/string', 'not a message type name']),
    ('{"type": "object"}', 'msg', ['not a message type name']),
])
def test_message_class_names_what_is_wrong(name: str, kind: str, words: Any) -> None:
    with pytest.raises(InterfaceProblem) as raised:
        message_class(name, kind=kind)
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize('text, expected', [
    ('geometry_msgs/msg/PoseStamped', True), ('std_msgs/Bool', True), ('json', False),
    ('{"type": "object"}', False), ('', False), ('a/b/c/D', False)])
def test_looks_like_type_name(text: str, expected: bool) -> None:
    assert looks_like_type_name(text) is expected


def test_type_name_is_the_full_name() -> None:
    assert type_name(PoseStamped) == 'geometry_msgs/msg/PoseStamped'
    assert type_name(Look.Request) == 's100_llm_demo_interfaces/srv/Look_Request'


# --- message_schema -----------------------------------------------------------------------

def test_pose_stamped_schema_is_compact_strict_and_accepted_by_the_node() -> None:
    schema = message_schema(PoseStamped)
    assert schema_problem(schema, 'format') == ''
    Draft7Validator.check_schema(schema)
    stamp = schema['properties']['header']['properties']['stamp']
    assert stamp['properties']['sec'] == {
        'type': 'integer', 'minimum': -2 ** 31, 'maximum': 2 ** 31 - 1}
    assert stamp['properties']['nanosec']['minimum'] == 0
    assert stamp['properties']['nanosec']['maximum'] == 2 ** 32 - 1
    assert schema['properties']['pose']['properties']['position']['properties']['x'] == {
        'type': 'number'}
    # An unbounded string is bounded: small models loop inside strings.
    assert schema['properties']['header']['properties']['frame_id'] == {
        'type': 'string', 'maxLength': MAX_STRING}
    assert schema['required'] == ['header', 'pose']
    assert schema['additionalProperties'] is False
    assert document_problem(schema, POSE) == ''
    assert document_problem(schema, {**POSE, 'extra': 1}) != ''
    assert len(json.dumps(schema, separators=(',', ':'))) < 1000


def test_fixed_arrays_have_their_exact_length() -> None:
    covariance = message_schema(PoseWithCovariance)['properties']['covariance']
    assert covariance == {'type': 'array', 'items': {'type': 'number'},
                          'minItems': 36, 'maxItems': 36}


def test_unbounded_sequences_get_the_documented_bound() -> None:
    schema = message_schema(message_class('std_msgs/msg/Float64MultiArray'))
    assert schema['properties']['data']['maxItems'] == MAX_ITEMS
    assert 'minItems' not in schema['properties']['data']
    dims = schema['properties']['layout']['properties']['dim']
    assert dims['items']['properties']['size']['maximum'] == 2 ** 32 - 1


def test_constants_are_not_fields() -> None:
    # sensor_msgs/msg/NavSatStatus has STATUS_* and SERVICE_* constants.
    schema = message_schema(message_class('sensor_msgs/msg/NavSatStatus'))
    assert set(schema['properties']) == {'status', 'service'}
    assert schema['properties']['status'] == {'type': 'integer', 'minimum': -128,
                                              'maximum': 127}


def test_omit_leaves_out_top_level_and_dotted_fields() -> None:
    schema = message_schema(PoseStamped, omit=['header.frame_id'])
    assert list(schema['properties']['header']['properties']) == ['stamp']
    assert schema['properties']['header']['required'] == ['stamp']
    assert list(message_schema(PoseStamped, omit=['header'])['properties']) == ['pose']
    with pytest.raises(InterfaceProblem, match='no field header.nope'):
        message_schema(PoseStamped, omit=['header.nope'])


@pytest.mark.parametrize('name, words', [
    ('sensor_msgs/msg/Image', ['sensor_msgs/msg/Image', 'field data', 'binary data']),
    ('sensor_msgs/msg/CompressedImage', ['field data', 'binary data']),
    ('std_msgs/msg/UInt8MultiArray', ['field data', 'binary data']),
])
def test_blobs_are_refused_with_the_reason(name: str, words: Any) -> None:
    with pytest.raises(InterfaceProblem) as raised:
        message_schema(message_class(name))
    for word in words:
        assert word in str(raised.value)


def test_a_schema_too_large_for_a_prompt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from s100_llm import interface_schema
    monkeypatch.setattr(interface_schema, 'MAX_SCHEMA_CHARS', 500)
    with pytest.raises(InterfaceProblem, match='PoseStamped.*characters'):
        message_schema(PoseStamped)


def test_nesting_deeper_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from s100_llm import interface_schema
    monkeypatch.setattr(interface_schema, 'MAX_DEPTH', 2)
    with pytest.raises(InterfaceProblem, match='PoseStamped: nested more than 2'):
        message_schema(PoseStamped)


def test_fixed_arrays_longer_than_a_model_can_write_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from s100_llm import interface_schema
    monkeypatch.setattr(interface_schema, 'MAX_ITEMS', 20)
    with pytest.raises(InterfaceProblem, match='covariance is a fixed array of 36'):
        message_schema(PoseWithCovariance)


def test_service_and_action_parts_have_schemas() -> None:
    look = message_schema(message_class('s100_llm_demo_interfaces/srv/Look', 'srv').Request)
    assert look['type'] == 'object' and schema_problem(look, 'format') == ''
    goal = message_schema(Navigate.Goal)
    assert goal['additionalProperties'] is False and schema_problem(goal, 'format') == ''


# --- fill_message -------------------------------------------------------------------------

def test_fill_message_builds_the_typed_message() -> None:
    msg = fill_message(PoseStamped, POSE)
    assert isinstance(msg, PoseStamped)
    assert msg.header.frame_id == 'map' and msg.header.stamp.sec == 12
    assert msg.pose.position.x == 1.5 and msg.pose.position.y == -2.0
    assert msg.pose.orientation.w == 1.0


def mutated(path: str, value: Any) -> Dict[str, Any]:
    data = copy.deepcopy(POSE)
    *parents, last = path.split('.')
    target = data
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return data


DELETE = object()


@pytest.mark.parametrize('data, words', [
    (mutated('pose.position.x', DELETE), ['field pose.position lacks field x']),
    (mutated('pose.position.q', 1.0), ['field pose.position has unexpected field q']),
    (mutated('pose.position.x', '1.0'), ['pose.position.x must be a number, not a string']),
    (mutated('pose.position.x', True), ['pose.position.x must be a number, not a boolean']),
    (mutated('header.stamp.sec', 2 ** 31), ['header.stamp.sec (int32) must be in']),
    (mutated('header.stamp.nanosec', -1), ['header.stamp.nanosec (uint32)']),
    (mutated('header.stamp.sec', 1.5), ['header.stamp.sec must be an integer']),
    (mutated('header.frame_id', 7), ['header.frame_id must be a string, not a number']),
    (mutated('header', []), ['field header must be an object, not an array']),
    ([POSE], ['the document must be an object']),
])
def test_fill_message_names_each_mismatch(data: Any, words: Any) -> None:
    with pytest.raises(InterfaceProblem) as raised:
        fill_message(PoseStamped, data)
    assert str(raised.value).startswith('geometry_msgs/msg/PoseStamped: ')
    for word in words:
        assert word in str(raised.value)


def test_fill_message_accepts_whole_floats_for_integers() -> None:
    assert fill_message(PoseStamped, mutated('header.stamp.sec', 3.0)).header.stamp.sec == 3


def test_float32_range_is_in_the_schema_and_checked_when_filling() -> None:
    # sensor_msgs/msg/Range has float32 fields (geometry_msgs' are float64).
    cls = message_class('sensor_msgs/msg/Range')
    schema = message_schema(cls)
    assert schema['properties']['range']['maximum'] == pytest.approx(3.4028234663852886e38)
    data = {'header': POSE['header'], 'radiation_type': 0, 'field_of_view': 1e39,
            'min_range': 0.0, 'max_range': 1.0, 'range': 0.5, 'variance': 0.0}
    assert document_problem(schema, data) != ''
    with pytest.raises(InterfaceProblem, match='field_of_view'):
        fill_message(cls, data)


def test_fill_from_json_parses_and_fills() -> None:
    assert fill_from_json(PoseStamped, json.dumps(POSE)) == fill_message(PoseStamped, POSE)
    with pytest.raises(InterfaceProblem, match='PoseStamped: the text is not JSON'):
        fill_from_json(PoseStamped, '{"header": {"stamp"')
    with pytest.raises(InterfaceProblem, match='lacks field pose'):
        fill_from_json(PoseStamped, json.dumps({'header': POSE['header']}))


def test_fixed_fields_are_set_and_must_not_come_from_the_data() -> None:
    data = mutated('header.frame_id', DELETE)
    msg = fill_message(PoseStamped, data, fixed={'header.frame_id': 'base_link'})
    assert msg.header.frame_id == 'base_link' and msg.header.stamp.sec == 12
    with pytest.raises(InterfaceProblem, match='unexpected field frame_id'):
        fill_message(PoseStamped, POSE, fixed={'header.frame_id': 'base_link'})
    whole = fill_message(PoseStamped, {'pose': POSE['pose']}, fixed={'header': POSE['header']})
    assert whole.header.frame_id == 'map'
    with pytest.raises(InterfaceProblem, match='header.frame_id must be a string'):
        fill_message(PoseStamped, data, fixed={'header.frame_id': 3})
    with pytest.raises(InterfaceProblem, match='field header lacks field stamp'):
        fill_message(PoseStamped, {'pose': POSE['pose']}, fixed={'header.frame_id': 'map'})
    with pytest.raises(InterfaceProblem, match='no field pose.nope to fix'):
        fill_message(PoseStamped, POSE, fixed={'pose.nope': 1})
    with pytest.raises(InterfaceProblem, match='no message field covariance'):
        fill_message(PoseWithCovariance, {'pose': POSE['pose']}, fixed={'covariance.x': 1})


def test_fixed_arrays_are_filled_with_their_exact_length() -> None:
    data = {'pose': POSE['pose'], 'covariance': [0.0] * 36}
    assert list(fill_message(PoseWithCovariance, data).covariance) == [0.0] * 36
    with pytest.raises(InterfaceProblem, match='covariance must have 36 items, not 35'):
        fill_message(PoseWithCovariance, {**data, 'covariance': [0.0] * 35})


def test_filled_data_round_trips_through_message_to_data() -> None:
    msg = fill_message(PoseStamped, POSE)
    data = message_to_data(msg)
    json.dumps(data)
    assert fill_message(PoseStamped, data) == msg


def test_message_to_data_makes_arrays_and_bytes_jsonable() -> None:
    covariance = message_to_data(PoseWithCovariance(covariance=[1.0] * 36))['covariance']
    assert covariance == [1.0] * 36 and isinstance(covariance, list)
    blob = message_class('sensor_msgs/msg/CompressedImage')(format='jpeg', data=b'\x01\x02')
    assert json.loads(json.dumps(message_to_data(blob)))['data'] == [1, 2]
    assert message_to_data(Duration(sec=1, nanosec=2)) == {'sec': 1, 'nanosec': 2}
    assert message_to_data(Header())['frame_id'] == ''


def test_message_to_data_writes_no_nan_or_infinity() -> None:
    # A tool's response goes into result_json: NaN is not JSON, and strict parsers (C++,
    # JavaScript) refuse a document with it.
    covariance = [math.nan, math.inf, -math.inf] + [0.5] * 33
    text = json.dumps(message_to_data(PoseWithCovariance(covariance=covariance)),
                      allow_nan=False)
    assert json.loads(text)['covariance'][:4] == ['NaN', 'Infinity', '-Infinity', 0.5]


def test_message_class_imports_no_package_that_declares_no_interfaces(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A goal's format comes from any ROS client: naming a Python package that is not an
    # interface package (`this/msg/Zen` printed the Zen of Python into the node's log,
    # `antigravity/msg/X` started a web browser) must not run that package's code.
    package = tmp_path / 'side_effect_pkg'
    (package / 'msg').mkdir(parents=True)
    ran = tmp_path / 'ran'
    (package / '__init__.py').write_text(f'open({str(ran)!r}, "w").close()\n')
    (package / 'msg' / '__init__.py').write_text('')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InterfaceProblem) as raised:
        message_class('side_effect_pkg/msg/Thing')
    assert 'side_effect_pkg/msg/Thing is not installed' in str(raised.value)
    assert not ran.exists()
