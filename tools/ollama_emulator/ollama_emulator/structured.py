"""Structured output (`format`) and tool calls (`tools`) of the scripted models.

Both are as deterministic as the scripted models' text, so tests know what to expect:

format      A scripted model's answer becomes a JSON document: `{"response": <text>}` in JSON
            mode, an instance of the schema otherwise (object: its required properties, all of
            them when none are required; string: the text the model would have answered;
            integer/number: that text's word count; boolean: true; array: one item, or
            minItems, a tuple one per position; enum and const: the first value). A
            `key=value` word of the last user message sets every property named `key`
            (`frame_id=map x=1.5` fills a geometry_msgs/msg/PoseStamped-shaped schema). Strings
            keep to minLength/maxLength and arrays to minItems/maxItems (fixed-size arrays);
            numbers keep to no bound (minimum, maximum), as with grammars that do not enforce
            them, so a test can make an answer break its schema. It is streamed token by token
            like any answer, so a num_predict cut leaves an unfinished document, as it does
            with a real model.
tools       The `tooler` script calls every offered tool whose name appears in the last user
            message, in the order they appear, with arguments taken from `key=value` words of
            that message for the parameters the tool declares, and type defaults for the other
            required ones; `call:<name>` calls <name> even when it is not offered (a model
            inventing a tool), with every `key=value` word as a string argument. A message in
            steps separated by `;` makes one model turn of calls per step: each turn after tool
            results calls the next step's tools. When no step is left (or its step names no
            tool) it answers from the results since the message, "<tool name> returned:
            <content>" joined by "; ". Without a named tool it answers in plain text.

The real model gets `format` as llama.cpp's `response_format` (grammar-constrained sampling).
"""

import json
import re
from typing import Any, Dict, List, Optional

from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft7Validator
from jsonschema.validators import validator_for

# A value ends at white space or a comma ('place=kitchen, look'), unless quoted.
_KEY_VALUE = re.compile(r'(\w+)=("[^"]*"|[^\s,]+)')
_INVENTED = re.compile(r'\bcall:([A-Za-z0-9_-]+)')
_DEFAULTS: Dict[str, Any] = {'string': '', 'integer': 0, 'number': 0, 'boolean': False,
                             'array': [], 'object': {}, 'null': None}


class FormatError(ValueError):
    """The requested format is neither "json" nor a valid JSON Schema (llama.cpp's 400)."""


def response_format(value: Any) -> Optional[Dict[str, Any]]:
    """Ollama's `format` as llama-server's `response_format`; None for free text.

    Raises FormatError for a value that is not "json" or a JSON object (Ollama's message).
    """
    if value is None or value == '':
        return None
    if value == 'json':
        return {'type': 'json_object'}
    if isinstance(value, dict):
        return {'type': 'json_schema', 'json_schema': {'schema': value}}
    raise FormatError(f'invalid format: {json.dumps(value)}; expected "json" or a valid JSON '
                      'Schema object')


def check_schema(schema: Dict[str, Any]) -> None:
    """FormatError when the schema is not valid under its own meta-schema (Draft 7's when it
    names none, as the node takes it)."""
    try:
        validator_for(schema, default=Draft7Validator).check_schema(schema)
    except SchemaError as error:
        raise FormatError(f'JSON schema error: {error.message}') from None


def formatted(text: str, runner_format: Dict[str, Any], prompt: str = '') -> str:
    """The JSON document a scripted model answers instead of `text` (`prompt`: the last user
    message, whose key=value words set the properties they name)."""
    if runner_format['type'] == 'json_object':
        return json.dumps({'response': text})
    given = {key: value.strip('"') for key, value in _KEY_VALUE.findall(prompt)}
    return json.dumps(_instance(runner_format['json_schema']['schema'], text, given, ''),
                      indent=1)


def _instance(schema: Any, text: str, given: Dict[str, str], name: str) -> Any:
    """An instance of `schema` for the property `name` ('' at the top and for items)."""
    if not isinstance(schema, dict):
        return text
    if 'const' in schema:
        return schema['const']
    if schema.get('enum'):
        return schema['enum'][0]
    for combinator in ('anyOf', 'oneOf', 'allOf'):
        if schema.get(combinator):
            return _instance(schema[combinator][0], text, given, name)
    kind = schema.get('type', 'object' if 'properties' in schema else 'string')
    if isinstance(kind, list):
        kind = next((k for k in kind if k != 'null'), 'null')
    if kind == 'object':
        properties = schema.get('properties') or {}
        names = schema.get('required') or list(properties)
        return {key: _instance(properties.get(key, {}), text, given, key) for key in names}
    if kind == 'array':
        # A tuple: Draft 2020-12's prefixItems, or Draft 7's items as a list.
        prefix = schema.get('prefixItems') or schema.get('items')
        if isinstance(prefix, list):
            return [_instance(item, text, given, name) for item in prefix]
        count = max(schema.get('minItems', 1), 1)
        if 'maxItems' in schema:
            count = min(count, schema['maxItems'])
        return [_instance(schema.get('items', {}), text, given, name)] * count
    value = _typed(given[name], kind) if name in given else None
    if kind in ('integer', 'number'):
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        return value if numeric else len(text.split())
    if kind == 'boolean':
        return value if isinstance(value, bool) else True
    if kind == 'null':
        return None
    value = value if isinstance(value, str) else text
    value = value[:schema['maxLength']] if 'maxLength' in schema else value
    return value.ljust(schema.get('minLength', 0), '.')


def tool_calls(tools: List[Dict[str, Any]], prompt: str) -> List[Dict[str, Any]]:
    """The calls the `tooler` script makes: [{'name', 'arguments'}] in order of mention."""
    given = {key: value.strip('"') for key, value in _KEY_VALUE.findall(prompt)}
    mentioned = []
    for tool in tools:
        function = tool.get('function') or {}
        name = str(function.get('name', ''))
        position = prompt.find(name) if name else -1
        if position >= 0:
            mentioned.append((position, function))
    offered = {function['name'] for _, function in mentioned}
    for invented in _INVENTED.finditer(prompt):
        if invented.group(1) not in offered:
            mentioned.append((invented.start(), {'name': invented.group(1), 'parameters': {
                'properties': {key: {'type': 'string'} for key in given}}}))
    calls = []
    for _, function in sorted(mentioned, key=lambda item: item[0]):
        parameters = function.get('parameters') or {}
        properties = parameters.get('properties') or {}
        arguments: Dict[str, Any] = {}
        for key, schema in properties.items():
            kind = (schema or {}).get('type', 'string')
            if key in given:
                arguments[key] = _typed(given[key], kind)
            elif key in (parameters.get('required') or []):
                arguments[key] = _DEFAULTS.get(kind if isinstance(kind, str) else 'string')
        calls.append({'name': function['name'], 'arguments': arguments})
    return calls


def _typed(text: str, kind: Any) -> Any:
    try:
        if kind == 'integer':
            return int(text)
        if kind == 'number':
            return float(text)
    except ValueError:
        return text
    if kind == 'boolean':
        return text.lower() == 'true'
    return text
