"""JSON Schema, ROS-free: a schema is checked when the goal is accepted (schema_problem), and a
document against it after generation (document_problem), bounded in time and without fetching
anything.

The verdict is the same with Ubuntu 22.04's jsonschema 3.2.0 as with today's 4.x:
- A schema without "$schema" is Draft 7 (the newest draft 3.2.0 has; 4.x would otherwise take
  it as Draft 2020-12). Keywords of newer drafts (prefixItems, dependentRequired, ...) are
  refused unless "$schema" names their draft, and a draft the installed jsonschema lacks is
  refused: a keyword the checker silently ignores would accept answers the schema forbids.
- $ref may only be a JSON pointer into the schema ("#", "#/..."); it must lead somewhere
  (dangling: refused) and must not lead back to itself without going into the document (cyclic:
  the check would never end). $anchor, $dynamicRef and $recursiveRef are refused, and so is a
  nested $id (it changes what $ref resolves against; 3.2.0 then downloads the $id's URL). A
  resolver that refuses every remote document backs this up when the check runs.
- pattern and patternProperties run with the `regex` module, with a timeout and without the GIL
  (Python's `re`, which jsonschema uses, holds the GIL: a pattern such as "(a|aa)+$" froze every
  thread of the node). The whole check of one document is bounded by CHECK_SECONDS.
"""

import functools
import importlib.metadata
import inspect
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type
from urllib.parse import unquote
import warnings

from jsonschema import validators as jsonschema_validators
from jsonschema.exceptions import best_match
from jsonschema.exceptions import ValidationError
import regex

with warnings.catch_warnings():
    # Python's own regular expression parser (what `re` compiles with); deprecated under this
    # name since 3.11, still there: measuring a pattern needs its parse tree, not a match.
    warnings.simplefilter('ignore', DeprecationWarning)
    import sre_constants
    import sre_parse

# Checking one document (an answer) against its schema takes at most about this long: past
# it the check stops and says which pattern (or that the schema as a whole) took too long.
# A legitimate check takes milliseconds. regex counts CPU time (C clock()): on a loaded
# machine the wall time can be longer.
CHECK_SECONDS = 1.0
# A pattern is refused when it is longer than this, or when its counted repeats written out
# (the regex module's compiled form) exceed MAX_PATTERN_ITEMS: compiling is not time-bounded.
MAX_PATTERN_CHARS = 1000
MAX_PATTERN_ITEMS = 10000

# Deeply nested JSON exhausts Python's recursion limit (in json and jsonschema) long before
# max_prompt_chars: such a document is refused, not a crash of the goal's callback.
DEPTH_NOTE = "Python's JSON parser and jsonschema can follow"
MAX_QUOTE_CHARS = 300

Path = Tuple[Any, ...]

# The drafts the node knows, by their "$schema" (without the trailing "#"): the draft's name, a
# number that orders them, and the jsonschema class that enforces it (absent in 3.2.0 for the
# last two).
_DRAFTS = {
    'http://json-schema.org/draft-04/schema': ('Draft 4', 4, 'Draft4Validator'),
    'http://json-schema.org/draft-06/schema': ('Draft 6', 6, 'Draft6Validator'),
    'http://json-schema.org/draft-07/schema': ('Draft 7', 7, 'Draft7Validator'),
    'https://json-schema.org/draft/2019-09/schema': ('Draft 2019-09', 2019,
                                                     'Draft201909Validator'),
    'https://json-schema.org/draft/2020-12/schema': ('Draft 2020-12', 2020,
                                                     'Draft202012Validator'),
}
DEFAULT_DRAFT = 'http://json-schema.org/draft-07/schema'
_NAMES = {number: (name, uri) for uri, (name, number, _) in _DRAFTS.items()}

# Keywords younger than Draft 4, by the draft that brought them: in an older draft they are
# unknown, so a checker ignores them.
_INTRODUCED = {
    'const': 6, 'contains': 6, 'propertyNames': 6,
    'if': 7, 'then': 7, 'else': 7,
    'dependentRequired': 2019, 'dependentSchemas': 2019, 'unevaluatedProperties': 2019,
    'unevaluatedItems': 2019, 'minContains': 2019, 'maxContains': 2019,
    'prefixItems': 2020,
}
# References by name, not by JSON pointer: refused with every draft and version, so that what a
# $ref reaches is always a place in the document (checked for dangling and cyclic references).
_NAMED_REFERENCES = ('$anchor', '$dynamicAnchor', '$dynamicRef', '$recursiveAnchor',
                     '$recursiveRef')

# Where a schema holds subschemas: applied to the same value (a cycle through them never ends),
# or to a part of it (a recursion through them ends with the document).
_SAME_ONE = ('not', 'if', 'then', 'else')
_SAME_MANY = ('allOf', 'anyOf', 'oneOf')
_SAME_MAP = ('dependentSchemas', 'dependencies')
_PART_ONE = ('additionalProperties', 'additionalItems', 'contains', 'propertyNames',
             'unevaluatedItems', 'unevaluatedProperties', 'items')
_PART_MANY = ('items', 'prefixItems')
_PART_MAP = ('properties', 'patternProperties')
_DEFINITIONS = ('definitions', '$defs')    # reached only through $ref


def brief(text: str) -> str:
    """text, cut to MAX_QUOTE_CHARS: jsonschema's messages quote the offending value whole."""
    return text if len(text) <= MAX_QUOTE_CHARS else text[:MAX_QUOTE_CHARS] + '...'


def _installed() -> str:
    try:
        return importlib.metadata.version('jsonschema')
    except importlib.metadata.PackageNotFoundError:
        return '(version unknown)'


def _draft(schema: Dict[str, Any]) -> Tuple[str, int, str]:
    """The schema's draft: name, number and jsonschema class name. KeyError: not a draft the
    node knows; TypeError: "$schema" is not a string."""
    uri = schema.get('$schema', DEFAULT_DRAFT)
    if not isinstance(uri, str):
        raise TypeError(f'"$schema" must be a string, not {type(uri).__name__}')
    return _DRAFTS[uri[:-1] if uri.endswith('#') else uri]


def schema_problem(schema: Dict[str, Any], what: str) -> str:
    """Why schema cannot be used to check a document (as the same verdict on every jsonschema
    version, bounded, with nothing fetched), or ''. what names it in the reason ('format')."""
    try:
        name, number, class_name = _draft(schema)
    except TypeError as error:
        return f'{what} is not a usable JSON Schema: {error}'
    except KeyError:
        return (f'{what}: "$schema" {brief(repr(schema["$schema"]))} is not a JSON Schema '
                f"draft the node knows ({', '.join(n for n, _, _ in _DRAFTS.values())}; "
                'none: Draft 7)')
    checker = getattr(jsonschema_validators, class_name, None)
    if checker is None:
        return (f'{what} is {name}: jsonschema {_installed()} cannot enforce it ({name} needs '
                'jsonschema >= 4); leave out "$schema" to use Draft 7')
    try:
        error = best_match(checker(checker.META_SCHEMA).iter_errors(schema))
        if error is not None:
            path = '/'.join(str(p) for p in error.absolute_path)
            return f'{what} is not a valid JSON Schema: {brief(error.message)}' + (
                f' (at {brief(path)})' if path else '')
        return _structure_problem(schema, what, name, number, checker)
    except RecursionError:
        return f'{what} is nested deeper than {DEPTH_NOTE}'
    except Exception as error:  # jsonschema's own errors on odd documents
        return f'{what} is not a usable JSON Schema: {brief(str(error))}'


def _pointer(path: Path) -> str:
    return '#' + ''.join('/' + str(p).replace('~', '~0').replace('/', '~1') for p in path)


def _subschemas(node: Dict[str, Any], path: Path) -> Iterator[Tuple[Path, Any, bool]]:
    """(path, subschema, applied to the same value) for each subschema a checker may apply."""
    for keyword, value in node.items():
        same = keyword in _SAME_ONE or keyword in _SAME_MANY or keyword in _SAME_MAP
        if keyword in _SAME_ONE or keyword in _PART_ONE:
            if isinstance(value, (dict, bool)):
                yield path + (keyword,), value, same
        if keyword in _SAME_MANY or keyword in _PART_MANY:
            if isinstance(value, list):
                for index, item in enumerate(value):
                    yield path + (keyword, index), item, same
        if keyword in _SAME_MAP or keyword in _PART_MAP or keyword in _DEFINITIONS:
            if isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(item, (dict, bool)):  # dependencies: lists are names
                        yield path + (keyword, key), item, same


def _target(root: Dict[str, Any], ref: str) -> Optional[Tuple[Path, Any]]:
    """Where the JSON pointer ref ("#/a/0") leads in root, or None (dangling)."""
    fragment = unquote(ref[1:])
    node: Any = root
    path: List[Any] = []
    for part in fragment.split('/')[1:] if fragment else []:
        part = part.replace('~1', '/').replace('~0', '~')
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            path.append(int(part))
        else:
            return None
    return tuple(path), node


def _structure_problem(root: Dict[str, Any], what: str, draft: str, number: int,
                       checker: Any) -> str:
    """What the meta-schema does not catch: keywords the draft lacks, references that leave
    the document, dangle or loop, nested $id, patterns that do not compile; and subschemas the
    meta-schema does not look at (under $defs before Draft 2019-09, or wherever a $ref leads)."""
    pending: List[Tuple[Path, Any, bool]] = [((), root, False)]   # the last: check by meta
    meta = checker(checker.META_SCHEMA)
    seen = set()
    same_value: Dict[Path, List[Path]] = {}     # subschemas applied to the same value
    refs: Dict[Path, str] = {}
    pattern_properties = unevaluated_properties = False
    while pending:
        path, node, unchecked = pending.pop()
        if path in seen or not isinstance(node, dict):
            continue
        seen.add(path)
        where = f' (at {brief(_pointer(path))})' if path else ''
        error = best_match(meta.iter_errors(node)) if unchecked else None
        if error is not None:
            return f'{what} is not a valid JSON Schema{where}: {brief(error.message)}'
        for keyword in node:
            if keyword in _NAMED_REFERENCES:
                return (f'{what}: {keyword}{where} is not supported: only $ref with a JSON '
                        'pointer into the schema ("#/...") is')
            introduced = _INTRODUCED.get(keyword, 0)
            if introduced > number:
                return _newer_keyword(what, keyword, where, introduced, draft, '$schema' in root)
        nested_id = node.get('id' if number == 4 else '$id') if path else None
        if isinstance(nested_id, str):
            return (f'{what} has a nested $id{where} ({brief(nested_id)}): only the top level '
                    'may have one (it changes what $ref resolves against, and the node resolves '
                    'nothing outside the schema)')
        problem = _patterns_problem(node, what, where)
        if problem:
            return problem
        pattern_properties = pattern_properties or 'patternProperties' in node
        unevaluated_properties = unevaluated_properties or 'unevaluatedProperties' in node
        for child, subschema, same in _subschemas(node, path):
            if same:
                same_value.setdefault(path, []).append(child)
            pending.append((child, subschema, child[len(path)] in _DEFINITIONS))
        ref = node.get('$ref')
        if isinstance(ref, str):
            if not ref.startswith('#'):
                return (f'{what} refers outside itself ({brief(ref)}){where}: only references '
                        'within the schema ("#/...") are allowed')
            if ref != '#' and not ref.startswith('#/'):
                return (f'{what}: $ref {brief(repr(ref))}{where} is not a JSON pointer: only '
                        'references of the form "#/..." are allowed')
            target = _target(root, ref)
            if target is None:
                return (f'{what}: $ref {brief(repr(ref))}{where} is dangling: the schema has '
                        'nothing at that path')
            if not isinstance(target[1], (dict, bool)):
                return (f'{what}: $ref {brief(repr(ref))}{where} leads to a value that is not '
                        'a schema')
            refs[path] = ref
            same_value.setdefault(path, []).append(target[0])
            pending.append(target + (True,))
    if pattern_properties and unevaluated_properties:
        # jsonschema 4.x matches patternProperties for unevaluatedProperties with Python's re.
        return (f"{what}: 'unevaluatedProperties' together with 'patternProperties' is not "
                'supported (its pattern check could not be bounded in time)')
    cycle = _cycle(same_value)
    if cycle:
        first = next(p for p in cycle if p in refs)
        chain = ' -> '.join(brief(_pointer(p)) for p in cycle + [cycle[0]])
        return (f'{what}: $ref {brief(repr(refs[first]))} (at {brief(_pointer(first))}) is '
                f'cyclic: {chain} applies to the same value without end')
    return ''


def _newer_keyword(what: str, keyword: str, where: str, introduced: int, draft: str,
                   declared: bool) -> str:
    name, uri = _NAMES[introduced]
    reason = (f"{what}: '{keyword}'{where} is a {name} keyword, but the schema is {draft}"
              + ('' if declared else ' (it has no "$schema")'))
    if getattr(jsonschema_validators, _DRAFTS[uri][2], None) is None:
        return (f'{reason}; jsonschema {_installed()} cannot enforce it ({name} needs '
                'jsonschema >= 4)')
    return f'{reason}; to use it, declare "$schema": "{uri}"'


def _patterns_problem(node: Dict[str, Any], what: str, where: str) -> str:
    patterns = list(node.get('patternProperties') or {})
    if isinstance(node.get('pattern'), str):
        patterns.append(node['pattern'])
    for pattern in patterns:
        named = f'{what}: pattern {brief(repr(pattern))}{where}'
        if len(pattern) > MAX_PATTERN_CHARS:
            return f'{named} is longer than {MAX_PATTERN_CHARS} characters'
        # regex expands counted repeats when it compiles, holding the GIL without a time
        # limit: "((a{1000}){1000}){4}" took seconds and gigabytes. Measured first.
        try:
            size = _expanded_size(sre_parse.parse(pattern))
        except (sre_constants.error, RecursionError, OverflowError) as error:
            return f'{named} is not a regular expression Python can read: {error}'
        if size > MAX_PATTERN_ITEMS:
            return (f'{named} repeats too much: it expands to more than '
                    f'{MAX_PATTERN_ITEMS} items (counted repeats multiply)')
        try:
            regex.compile(pattern)
        except regex.error as error:
            return f'{named} is not a regular expression: {error}'
    return ''


_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT,
            getattr(sre_constants, 'POSSESSIVE_REPEAT', sre_constants.MAX_REPEAT)}


def _expanded_size(parsed: Any) -> int:
    """How many items a parsed pattern becomes once its counted repeats are written out (as
    the regex module compiles them); stops counting past MAX_PATTERN_ITEMS."""
    total = 0
    for op, value in parsed:
        if op in _REPEATS:
            low, high, inner = value
            count = low if high == sre_constants.MAXREPEAT else high
            total += max(count, 1) * _expanded_size(inner)
        else:
            # Groups, branches and lookarounds hold parsed sub-patterns somewhere in `value`.
            parts = value if isinstance(value, (tuple, list)) else (value,)
            inner = [p for p in parts if isinstance(p, sre_parse.SubPattern)]
            for branch in parts:
                if isinstance(branch, list):
                    inner += [p for p in branch if isinstance(p, sre_parse.SubPattern)]
            total += sum(_expanded_size(p) for p in inner) or 1
        if total > MAX_PATTERN_ITEMS:
            return total
    return total


def _cycle(edges: Dict[Path, List[Path]]) -> List[Path]:
    """A cycle in the graph edges (as the list of its nodes), or []. Iterative: the graph can
    be as deep as the schema."""
    done = set()
    for start in edges:
        if start in done:
            continue
        trail: List[Path] = [start]
        on_trail = {start}
        branches = [iter(edges.get(start, ()))]
        while branches:
            step = next(branches[-1], None)
            if step is None:
                branches.pop()
                done.add(trail[-1])
                on_trail.discard(trail.pop())
            elif step in on_trail:
                return trail[trail.index(step):]
            elif step not in done:
                trail.append(step)
                on_trail.add(step)
                branches.append(iter(edges.get(step, ())))
    return []


# --- Checking a document ---------------------------------------------------------------------

class _Overtime(Exception):
    """The check of a document went past its deadline; the message says on what."""


# The running check's deadline (time.monotonic()), per thread: the validator functions below
# are shared by every check.
_running = threading.local()


def _remaining(what: str) -> float:
    left = _running.deadline - time.monotonic()
    if left <= 0:
        raise _Overtime(what)
    return left


def _search(pattern: str, text: str) -> bool:
    """regex.search, bounded by the check's deadline and letting other threads run."""
    what = f'pattern {brief(repr(pattern))}'
    try:
        return regex.search(pattern, text, concurrent=True,
                            timeout=_remaining(what)) is not None
    except TimeoutError:
        raise _Overtime(what) from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, 'string') and not _search(pattern, instance):
        yield ValidationError(f'{instance!r} does not match {pattern!r}')


def _pattern_properties(validator: Any, patterns: Dict[str, Any], instance: Any,
                        schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, 'object'):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: Dict[str, Any]) -> Iterator[Any]:
    if not validator.is_type(instance, 'object'):
        return
    properties = schema.get('properties') or {}
    patterns = schema.get('patternProperties') or {}
    extras = [key for key in instance if key not in properties
              and not any(_search(pattern, key) for pattern in patterns)]
    if validator.is_type(additional, 'object'):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        verb = 'was' if len(extras) == 1 else 'were'
        yield ValidationError('Additional properties are not allowed '
                              f"({', '.join(map(repr, sorted(extras)))} {verb} unexpected)")


def _on_time(keyword: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
    """keyword's validator function, stopping at the deadline."""
    def check(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
        _remaining('the schema')
        yield from keyword(validator, value, instance, schema) or ()
    return check


@functools.lru_cache(maxsize=None)
def _bounded(base: Type[Any]) -> Type[Any]:
    """base with every keyword stopping at the deadline and patterns run with regex."""
    keywords = {name: _on_time(function) for name, function in base.VALIDATORS.items()}
    keywords.update(pattern=_on_time(_pattern),
                    patternProperties=_on_time(_pattern_properties),
                    additionalProperties=_on_time(_additional_properties))
    return jsonschema_validators.extend(base, keywords)


def _refuse(uri: str) -> Any:
    raise LookupError(f'{uri}: the node fetches nothing while checking')


def _validator(schema: Dict[str, Any]) -> Any:
    """A validator for schema that resolves $ref within the schema only."""
    checker = _bounded(getattr(jsonschema_validators, _draft(schema)[2]))
    if 'registry' in inspect.signature(checker).parameters:    # jsonschema >= 4.18
        from referencing import Registry
        return checker(schema, registry=Registry(retrieve=_refuse))

    # Older versions download what is not in the resolver's store (3.2.0 with no timeout).
    class LocalResolver(jsonschema_validators.RefResolver):
        def resolve_remote(self, uri: str) -> Any:
            return _refuse(uri)

    return checker(schema, resolver=LocalResolver.from_schema(schema, id_of=checker.ID_OF))


def document_problem(schema: Dict[str, Any], document: Any,
                     seconds: float = CHECK_SECONDS) -> str:
    """Why document (the answer) does not satisfy schema (which passed schema_problem), or ''.
    Takes about seconds at most; past that the reason says what took too long."""
    _running.deadline = time.monotonic() + seconds
    try:
        error = next(iter(_validator(schema).iter_errors(document)), None)
    except _Overtime as overtime:
        return (f'checking the answer against {overtime} took longer than {seconds:g} s (the '
                'limit for checking one answer)')
    except RecursionError:
        return f'the answer is nested deeper than {DEPTH_NOTE}'
    except Exception as error:  # the schema passed its check but cannot be applied
        return f'the format schema could not be applied to the answer: {brief(str(error))}'
    if error is None:
        return ''
    path = '/'.join(str(p) for p in error.absolute_path)
    return (f'the answer does not match the format schema: {brief(error.message)}'
            + (f' (at {brief(path)})' if path else ''))
