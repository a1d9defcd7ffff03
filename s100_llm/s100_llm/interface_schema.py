"""ROS interface types as JSON: the JSON Schema of a message type, a message filled from JSON
data (checked field by field), and a message turned back into JSON data.

Used where a goal's format names a message type (the answer must fill one) and by robot tools
(their parameters are a request, goal or message type minus the fields a tools file fixes).
It reads the generated Python classes (their fields and SLOT_TYPES, rosidl_parser's type
descriptions); it creates no node.

The schema is meant for a prompt and for constrained decoding, so it is compact (no titles, no
"$schema": the node takes a schema without one as Draft 7) and refuses what a model cannot
write sensibly: byte blobs (sensor_msgs/msg/Image's data), fixed arrays longer than MAX_ITEMS,
types nested deeper than MAX_DEPTH and schemas longer than MAX_SCHEMA_CHARS.
"""

import array
import importlib
import json
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ament_index_python import get_resource
from rosidl_parser import definition as idl

# An unbounded sequence gets this maxItems (and a bounded one at most this): without a bound a
# model that loops (small models repeat themselves) writes items until max_tokens and the goal
# ends FORMAT_MISMATCH with a cut document; 64 keeps every realistic answer (waypoints, joint
# names, detections) and keeps the grammar llama.cpp builds from the schema small (each allowed
# item is one more optional repetition). A fixed array longer than this is refused: the model
# would have to write every element.
MAX_ITEMS = 64
# A string gets at most this maxLength (a bounded one its bound when smaller): SmolLM2-135M,
# constrained to PoseStamped's schema, wrote digits into frame_id until max_tokens in every
# try (measured: "frame_id": "1234567890123...", 300 tokens, FORMAT_MISMATCH); with a bound the
# grammar closes the string and the document completes. 128 characters hold frame ids, names,
# labels and a sentence; a longer text is free text, not a typed answer.
MAX_STRING = 128
# uint8/byte/char sequences longer than this (or unbounded) are binary data (image pixels, point
# clouds, compressed frames), not something a language model writes: the type is refused.
MAX_BYTES = 64
# Message nesting (PoseStamped is 3 deep: PoseStamped > Header > Time; nav_msgs/msg/Odometry 4).
MAX_DEPTH = 8
# Compact JSON text of the derived schema: about 4 characters per prompt token, so ~1000
# tokens, a large share of a small model's context (PoseStamped's schema is ~900 characters).
MAX_SCHEMA_CHARS = 4000

KINDS = ('msg', 'srv', 'action')
_KIND_WORDS = {'msg': 'message', 'srv': 'service', 'action': 'action'}
# pkg/kind/Type or pkg/Type, as `ros2 interface show` and `ros2 topic pub` accept them.
_NAME = re.compile(r'^([a-z][a-z0-9_]*)/(?:(msg|srv|action)/)?([A-Z][A-Za-z0-9]*)$')
# The members a generated class of each kind has (a module attribute without them, e.g. a
# helper function or a message class asked for as a service, is not a type of that kind).
_MEMBERS = {'msg': ('get_fields_and_field_types', 'SLOT_TYPES'),
            'srv': ('Request', 'Response'),
            'action': ('Goal', 'Result', 'Feedback')}

_INTEGER_RANGES = {
    'int8': (-2 ** 7, 2 ** 7 - 1), 'uint8': (0, 2 ** 8 - 1),
    'int16': (-2 ** 15, 2 ** 15 - 1), 'uint16': (0, 2 ** 16 - 1),
    'int32': (-2 ** 31, 2 ** 31 - 1), 'uint32': (0, 2 ** 32 - 1),
    'int64': (-2 ** 63, 2 ** 63 - 1), 'uint64': (0, 2 ** 64 - 1),
    # IDL spellings (a .idl file may use them; .msg files become the ones above).
    'short': (-2 ** 15, 2 ** 15 - 1), 'unsigned short': (0, 2 ** 16 - 1),
    'long': (-2 ** 31, 2 ** 31 - 1), 'unsigned long': (0, 2 ** 32 - 1),
    'long long': (-2 ** 63, 2 ** 63 - 1), 'unsigned long long': (0, 2 ** 64 - 1),
    # byte: a bytes object of length 1 in Python, written as its number in JSON.
    'octet': (0, 255),
}
_FLOATS = ('float', 'double', 'long double')
# float32's largest finite value: a larger number cannot be stored (the generated setter
# refuses it), so the schema says so and the answer's check catches it before a session keeps
# the turn (float64 needs none: a JSON number past its range parses as infinity, which a
# float64 holds).
_FLOAT32_MAX = 3.4028234663852886e+38
_CHARACTERS = ('char', 'wchar')
_BYTE_LIKE = ('uint8', 'int8', 'octet', 'char')


class InterfaceProblem(ValueError):
    """A type that cannot be used, or data that does not fill it; the text names the type."""


def looks_like_type_name(text: str) -> bool:
    """Whether a goal's format is meant as a type name (pkg/msg/Type or pkg/Type)."""
    return bool(_NAME.match(text.strip()))


def message_class(name: str, kind: str = 'msg') -> Any:
    """The generated class of 'pkg/<kind>/Type' ('pkg/Type' for a message type)."""
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {", ".join(KINDS)}, not {kind!r}')
    word = _KIND_WORDS[kind]
    match = _NAME.match(name.strip())
    if not match:
        raise InterfaceProblem(
            f'{name!r} is not a {word} type name (expected package/{kind}/Type)')
    package, named_kind, type_ = match.groups()
    if named_kind is None and kind != 'msg':
        raise InterfaceProblem(
            f'{name!r} is not a {word} type name (expected package/{kind}/Type)')
    if named_kind is not None and named_kind != kind:
        raise InterfaceProblem(f'{name} is a {_KIND_WORDS[named_kind]} type, not a {word} type')
    full = f'{package}/{kind}/{type_}'
    # The name may come from any ROS client (a goal's format): only a package the ament index
    # lists as declaring this interface is imported, so that naming some other Python package
    # (`this`, `antigravity`) does not run its code in the node.
    if not _declared(package, f'{kind}/{type_}'):
        raise InterfaceProblem(f'{full} is not installed (the ament index lists no such '
                               f'interface of a package {package})')
    try:
        module = importlib.import_module(f'{package}.{kind}')
    except ImportError as error:
        raise InterfaceProblem(
            f'{full} is not installed (no Python module {package}.{kind}: {error})') from None
    cls = getattr(module, type_, None)
    if not isinstance(cls, type) or not all(hasattr(cls, m) for m in _MEMBERS[kind]):
        raise InterfaceProblem(f'{full} is not installed ({package} has no {word} type {type_})')
    return cls


def _declared(package: str, interface: str) -> bool:
    """Whether the ament index lists `interface` ('msg/Type') among the package's interfaces
    (its rosidl_interfaces resource: 'msg/Type.idl', 'msg/Type.msg', ... one a line)."""
    try:
        content, _ = get_resource('rosidl_interfaces', package)
    except LookupError:
        return False
    return any(line.rsplit('.', 1)[0] == interface for line in content.splitlines())


def type_name(cls: Any) -> str:
    """'pkg/msg/Type' of a generated message class (srv/action parts included)."""
    package, kind = cls.__module__.split('.')[:2]
    return f'{package}/{kind}/{cls.__name__}'


def _fields(cls: Any) -> List[Tuple[str, Any]]:
    # The dict and SLOT_TYPES list the fields in the same (declaration) order; constants are
    # class attributes, not in either.
    return list(zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES))


def _nested_class(slot: 'idl.NamespacedType') -> Any:
    return getattr(importlib.import_module('.'.join(slot.namespaces)), slot.name)


def _slot_name(slot: Any) -> str:
    if isinstance(slot, idl.NamespacedType):
        return '/'.join([*slot.namespaces, slot.name])
    if isinstance(slot, idl.BasicType):
        return slot.typename
    return type(slot).__name__


def message_schema(cls: Any, omit: Iterable[str] = ()) -> Dict[str, Any]:
    """The JSON Schema (Draft 7) a JSON document must match to fill a message of `cls`.

    `omit`: field names left out (dotted for nested fields, e.g. 'header.frame_id'), such as
    fields a tools file fixes. InterfaceProblem names the type and the reason when it cannot
    be expressed sensibly.
    """
    name = type_name(cls)
    left_out = set(omit)
    schema = _object_schema(cls, name, '', left_out, 1)
    if left_out:
        raise InterfaceProblem(f'{name} has no field {", ".join(sorted(left_out))} to omit')
    size = len(json.dumps(schema, separators=(',', ':')))
    if size > MAX_SCHEMA_CHARS:
        raise InterfaceProblem(
            f'{name}: its JSON Schema would be {size} characters, more than {MAX_SCHEMA_CHARS} '
            f'(too large for a prompt)')
    return schema


def _object_schema(cls: Any, name: str, prefix: str, omit: Set[str],
                   depth: int) -> Dict[str, Any]:
    if depth > MAX_DEPTH:
        raise InterfaceProblem(f'{name}: nested more than {MAX_DEPTH} messages deep')
    properties = {}
    for field, slot in _fields(cls):
        path = prefix + field
        if path in omit:
            omit.discard(path)
            continue
        properties[field] = _value_schema(slot, name, path, omit, depth)
    return {'type': 'object', 'properties': properties, 'required': list(properties),
            'additionalProperties': False}


def _value_schema(slot: Any, name: str, path: str, omit: Set[str],
                  depth: int) -> Dict[str, Any]:
    if isinstance(slot, idl.AbstractNestedType):
        return _items_schema(slot, name, path, omit, depth)
    if isinstance(slot, idl.NamespacedType):
        return _object_schema(_nested_class(slot), name, path + '.', omit, depth + 1)
    if isinstance(slot, idl.AbstractGenericString):
        return {'type': 'string',
                'maxLength': (min(slot.maximum_size, MAX_STRING) if slot.has_maximum_size()
                              else MAX_STRING)}
    if isinstance(slot, idl.BasicType):
        typename = slot.typename
        if typename == 'boolean':
            return {'type': 'boolean'}
        if typename == 'float':
            return {'type': 'number', 'minimum': -_FLOAT32_MAX, 'maximum': _FLOAT32_MAX}
        if typename in _FLOATS:
            return {'type': 'number'}
        if typename in _CHARACTERS:
            return {'type': 'string', 'minLength': 1, 'maxLength': 1}
        low, high = _INTEGER_RANGES[typename]
        return {'type': 'integer', 'minimum': low, 'maximum': high}
    raise InterfaceProblem(f'{name}: field {path} has a type the node cannot express '
                           f'({_slot_name(slot)})')


def _items_schema(slot: Any, name: str, path: str, omit: Set[str],
                  depth: int) -> Dict[str, Any]:
    value_type = slot.value_type
    byte_like = isinstance(value_type, idl.BasicType) and value_type.typename in _BYTE_LIKE
    size = slot.size if isinstance(slot, idl.Array) else (
        slot.maximum_size if isinstance(slot, idl.BoundedSequence) else None)
    if byte_like and (size is None or size > MAX_BYTES):
        bound = 'unbounded' if size is None else f'up to {size}'
        raise InterfaceProblem(
            f'{name}: field {path} is binary data ({bound} {value_type.typename} values), '
            f'which a language model cannot write')
    schema = {'type': 'array', 'items': _value_schema(value_type, name, path, omit, depth)}
    if isinstance(slot, idl.Array):
        if size > MAX_ITEMS:
            raise InterfaceProblem(f'{name}: field {path} is a fixed array of {size} values '
                                   f'(at most {MAX_ITEMS} can be asked of a model)')
        schema['minItems'] = size
    schema['maxItems'] = min(size, MAX_ITEMS) if size is not None else MAX_ITEMS
    return schema


def fill_message(cls: Any, data: Any, fixed: Optional[Mapping[str, Any]] = None) -> Any:
    """A message of `cls` filled from JSON data; `fixed` sets fields the data must not carry.

    Every field of the type must be in the data (or in `fixed`, whose keys may be dotted for
    nested fields), nothing else, each with its JSON type and within its type's range:
    InterfaceProblem names the type, the field and what is wrong.

    rosidl_runtime_py's set_message_fields (what `ros2 topic pub` uses) is not the checker
    here even where it is installed: it leaves missing fields at their defaults and converts
    values with the field's type (bool('false') is True, int('7') is 7), so an answer that
    does not fill the type would pass as a different message.
    """
    name = type_name(cls)
    fixed = dict(fixed or {})
    for path in fixed:
        _field_slot(cls, name, path)
    return set_fixed(_fill(cls, data, name, '', set(fixed)), fixed)


def set_fixed(msg: Any, fixed: Mapping[str, Any]) -> Any:
    """Set the fields of `fixed` (names dotted for nested fields) on msg, each value checked
    as data is (a nested message whole, in its type's range); InterfaceProblem names the field.
    A tools file's fixed values are checked with it at configure."""
    name = type_name(type(msg))
    for path, value in fixed.items():
        _set_path(msg, name, path, value)
    return msg


def fill_from_json(cls: Any, text: str) -> Any:
    """A message of `cls` filled from a JSON text (a typed answer); InterfaceProblem when the
    text does not parse or does not fill the type."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InterfaceProblem(f'{type_name(cls)}: the text is not JSON ({error})') from None
    return fill_message(cls, data)


def _where(path: str) -> str:
    return f'field {path}' if path else 'the document'


def _fill(cls: Any, data: Any, name: str, prefix: str, skip: Set[str]) -> Any:
    if not isinstance(data, dict):
        raise InterfaceProblem(
            f'{name}: {_where(prefix[:-1])} must be an object, not {_kind(data)}')
    fields = _fields(cls)
    known = {field for field, _ in fields}
    extra = sorted(key for key in data if key not in known or prefix + key in skip)
    if extra:
        raise InterfaceProblem(f'{name}: {_where(prefix[:-1])} has unexpected '
                               f'field{"s" if len(extra) > 1 else ""} {", ".join(extra)}')
    # A nested message of which only some fields are fixed is still required in part.
    partly_fixed = {field for field, slot in fields if isinstance(slot, idl.NamespacedType)
                    and any(s.startswith(f'{prefix}{field}.') for s in skip)}
    missing = [field for field in known if field not in data and prefix + field not in skip
               and field not in partly_fixed]
    if missing:
        raise InterfaceProblem(f'{name}: {_where(prefix[:-1])} lacks '
                               f'field{"s" if len(missing) > 1 else ""} {", ".join(missing)}')
    msg = cls()
    for field, slot in fields:
        path = prefix + field
        if path in skip:
            continue
        if field in data:
            value = _value(slot, data[field], name, path, skip)
        else:   # partly fixed and absent: its fields that are not fixed are missing
            value = _fill(_nested_class(slot), {}, name, path + '.', skip)
        _assign(msg, field, value, name, path)
    return msg


def _assign(msg: Any, field: str, value: Any, name: str, path: str) -> None:
    try:
        setattr(msg, field, value)
    except (AssertionError, TypeError, ValueError) as error:
        # The generated setters check what JSON cannot say (e.g. float32's range).
        raise InterfaceProblem(f'{name}: field {path} does not take {value!r} '
                               f'({error or "out of range"})') from None


def _kind(value: Any) -> str:
    return {dict: 'an object', list: 'an array', str: 'a string', bool: 'a boolean',
            type(None): 'null'}.get(type(value), 'a number')


def _value(slot: Any, value: Any, name: str, path: str, skip: Set[str]) -> Any:
    if isinstance(slot, idl.AbstractNestedType):
        if not isinstance(value, list):
            raise InterfaceProblem(f'{name}: field {path} must be an array, not {_kind(value)}')
        size = slot.size if isinstance(slot, idl.Array) else (
            slot.maximum_size if isinstance(slot, idl.BoundedSequence) else None)
        if isinstance(slot, idl.Array) and len(value) != size:
            raise InterfaceProblem(
                f'{name}: field {path} must have {size} items, not {len(value)}')
        if size is not None and len(value) > size:
            raise InterfaceProblem(
                f'{name}: field {path} has {len(value)} items, more than {size}')
        return [_value(slot.value_type, item, name, f'{path}[{index}]', skip)
                for index, item in enumerate(value)]
    if isinstance(slot, idl.NamespacedType):
        return _fill(_nested_class(slot), value, name, path + '.', skip)
    if isinstance(slot, idl.AbstractGenericString):
        if not isinstance(value, str):
            raise InterfaceProblem(f'{name}: field {path} must be a string, not {_kind(value)}')
        if slot.has_maximum_size() and len(value) > slot.maximum_size:
            raise InterfaceProblem(f'{name}: field {path} is longer than '
                                   f'{slot.maximum_size} characters')
        return value
    typename = slot.typename
    if typename == 'boolean':
        if not isinstance(value, bool):
            raise InterfaceProblem(f'{name}: field {path} must be true or false, '
                                   f'not {_kind(value)}')
        return value
    if typename in _CHARACTERS:
        if not isinstance(value, str) or len(value) != 1:
            raise InterfaceProblem(f'{name}: field {path} must be one character')
        return value
    # bool is an int in Python; true is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InterfaceProblem(f'{name}: field {path} must be a number, not {_kind(value)}')
    if typename in _FLOATS:
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise InterfaceProblem(f'{name}: field {path} must be an integer, not {value}')
        value = int(value)
    low, high = _INTEGER_RANGES[typename]
    if not low <= value <= high:
        raise InterfaceProblem(
            f'{name}: field {path} ({typename}) must be in {low}..{high}, not {value}')
    return bytes([value]) if typename == 'octet' else value


def _field_slot(cls: Any, name: str, path: str) -> Any:
    """The type of the (dotted) field path of cls; InterfaceProblem when there is none."""
    *parents, field = path.split('.')
    slots = dict(_fields(cls))
    for part in parents:
        slot = slots.get(part)
        if not isinstance(slot, idl.NamespacedType):
            raise InterfaceProblem(f'{name}: no message field {part} for the fixed field {path}')
        slots = dict(_fields(_nested_class(slot)))
    if field not in slots:
        raise InterfaceProblem(f'{name}: no field {path} to fix')
    return slots[field]


def _set_path(msg: Any, name: str, path: str, value: Any) -> None:
    slot = _field_slot(type(msg), name, path)
    *parents, field = path.split('.')
    target = msg
    for part in parents:
        target = getattr(target, part)
    _assign(target, field, _value(slot, value, name, path, set()), name, path)


def message_to_data(msg: Any) -> Dict[str, Any]:
    """A message as JSON-able data: nested messages as objects, arrays as lists, bytes as
    numbers (e.g. a service response sent back to a model as a tool result)."""
    try:
        from rosidl_runtime_py.convert import message_to_ordereddict
    except ImportError:  # not on PyPI: only where ROS is installed from packages
        return _jsonable(_to_dict(msg))
    return _jsonable(message_to_ordereddict(msg))


def _to_dict(msg: Any) -> Dict[str, Any]:
    return {field: (_to_dict(value) if hasattr(value, 'get_fields_and_field_types') else
                    [_to_dict(v) if hasattr(v, 'get_fields_and_field_types') else v
                     for v in value] if isinstance(value, list) else value)
            for field, value in ((f, getattr(msg, f)) for f in msg.get_fields_and_field_types())}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return value[0] if len(value) == 1 else list(value)
    if isinstance(value, array.array) or hasattr(value, 'tolist'):
        # array.array, numpy arrays (fixed-size arrays) and numpy scalars; their floats too
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or infinity (json.dumps would write NaN, which strict parsers refuse)
        return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')
    return value
