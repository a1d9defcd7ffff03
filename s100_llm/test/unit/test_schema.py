"""core/schema.py: what a schema may be, and checking a document against it, bounded and local.

ROS-free on purpose (no rclpy, no harness): it also runs with Ubuntu 22.04's jsonschema 3.2.0,
regex 2021.11.10 and pytest 6.2.5 (`pytest -p no:anyio --noconftest`), and must pass there as
with today's jsonschema 4.x.
"""

import http.server
import threading
import time
from typing import Any, Dict, Iterator, List

from jsonschema import validators
import pytest

from s100_llm.core import schema
from s100_llm.core.schema import document_problem
from s100_llm.core.schema import schema_problem

HAS_2020_12 = hasattr(validators, 'Draft202012Validator')
DRAFT_2020_12 = 'https://json-schema.org/draft/2020-12/schema'


def accepted(document_schema: Dict[str, Any]) -> Dict[str, Any]:
    assert schema_problem(document_schema, 'format') == ''
    return document_schema


# --- Item 1: a check is bounded in time and lets the other threads run ----------------------

# Catastrophic backtracking in both re and regex: its cost doubles with each "a".
EXPONENTIAL = '(a|aa)+$'


@pytest.mark.parametrize('document_schema, document', [
    ({'type': 'string', 'pattern': EXPONENTIAL}, 'a' * 60 + '!'),
    ({'type': 'string', 'not': {'pattern': EXPONENTIAL}}, 'a' * 60 + '!'),
    ({'type': 'object', 'patternProperties': {EXPONENTIAL: {}}}, {'a' * 60 + '!': 1}),
    ({'type': 'object', 'patternProperties': {EXPONENTIAL: {}}, 'additionalProperties': False},
     {'a' * 60 + '!': 1}),
    ({'type': 'object', 'propertyNames': {'pattern': EXPONENTIAL}}, {'a' * 60 + '!': 1}),
])
def test_a_pattern_that_backtracks_without_end_stops_at_the_bound_and_names_it(
        document_schema, document):
    found = document_problem(accepted(document_schema), document, seconds=0.2)
    assert found == (f"checking the answer against pattern '{EXPONENTIAL}' took longer than "
                     '0.2 s (the limit for checking one answer)')


def test_other_threads_run_while_a_pattern_is_checked():
    # Python's re holds the GIL for the whole search: no other thread ran until it ended (with
    # this value: never). Here this thread wakes from short sleeps (many more than the check's
    # set-up takes) while the check, which lasts its whole second of CPU time, still runs.
    started, checked = threading.Event(), threading.Event()

    def check() -> None:
        started.set()
        document_problem({'type': 'string', 'pattern': EXPONENTIAL}, 'a' * 60 + '!',
                         seconds=1.0)
        checked.set()

    checker = threading.Thread(target=check)
    checker.start()
    started.wait()
    for _ in range(50):
        time.sleep(0.001)    # waking needs the GIL
    ran_meanwhile = not checked.is_set()
    checker.join()
    assert ran_meanwhile


def test_patterns_still_decide_as_before():
    pattern = {'type': 'object', 'properties': {'id': {'type': 'string', 'pattern': '^r[0-9]+$'}},
               'patternProperties': {'^x-': {'type': 'integer'}},
               'additionalProperties': False}
    assert document_problem(accepted(pattern), {'id': 'r12', 'x-a': 1}) == ''
    assert "'q1' does not match '^r[0-9]+$'" in document_problem(pattern, {'id': 'q1'})
    assert 'x-a' in document_problem(pattern, {'x-a': 'one'})
    assert "Additional properties are not allowed ('other' was unexpected)" in document_problem(
        pattern, {'other': 1})


def test_a_pattern_that_does_not_compile_is_refused():
    assert schema_problem({'pattern': '(a'}, 'format').startswith(
        "format: pattern '(a' is not a regular expression")


@pytest.mark.parametrize('pattern', ['((a{1000}){1000}){4}', 'x{10001}', '(?:ab|c{5000}){3}',
                                     '[a-z]' * 300])
def test_a_pattern_that_would_compile_without_end_is_refused_before_compiling(pattern):
    # The regex module writes counted repeats out when it compiles, holding the GIL with no
    # time limit: "((a{1000}){1000}){4}" took 2.3 s and 1.2 GB (jammy's regex 2021.11.10).
    problem = schema_problem({'type': 'string', 'pattern': pattern}, 'format')
    assert 'repeats too much' in problem or 'longer than 1000 characters' in problem, problem
    tool = {'type': 'object', 'patternProperties': {pattern: {'type': 'string'}}}
    assert schema_problem(tool, 'tools[0].parameters_json')


def test_ordinary_counted_patterns_are_fine():
    uuid = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
    for pattern in (uuid, '[a-z]{1,64}', 'a{2,}', '(?=a{100})b', '^(ab){4000}$'):
        assert schema_problem({'type': 'string', 'pattern': pattern}, 'format') == '', pattern


def test_a_long_check_of_the_schema_as_a_whole_is_bounded_too():
    # Each level tries every branch: the work doubles with each level of the document.
    branching = {'anyOf': [{'type': 'array', 'items': {'$ref': '#'}},
                           {'type': 'array', 'items': {'$ref': '#'}}, {'type': 'integer'}]}
    deep = 'x'
    for _ in range(40):
        deep = [deep]
    assert document_problem(accepted(branching), deep, seconds=0.2) == (
        'checking the answer against the schema took longer than 0.2 s (the limit for checking '
        'one answer)')


# --- Item 2: cyclic and dangling $ref are refused when the goal is accepted -----------------

@pytest.mark.parametrize('document_schema, reason', [
    ({'$ref': '#'}, "format: $ref '#' (at #) is cyclic: # -> # applies to the same value"),
    ({'allOf': [{'$ref': '#'}], 'type': 'object'},
     "format: $ref '#' (at #/allOf/0) is cyclic: # -> #/allOf/0 -> #"),
    ({'definitions': {'a': {'$ref': '#/definitions/b'},
                      'b': {'anyOf': [{'$ref': '#/definitions/a'}]}},
      'properties': {'x': {'$ref': '#/definitions/a'}}},
     'is cyclic: #/definitions/'),
    ({'definitions': {'a': {'not': {'$ref': '#/definitions/a'}}}, '$ref': '#/definitions/a'},
     "format: $ref '#/definitions/a'"),
])
def test_a_cyclic_ref_is_refused_naming_it(document_schema, reason):
    found = schema_problem(document_schema, 'format')
    assert reason in found and 'is cyclic' in found, found


def test_a_recursive_schema_that_goes_into_the_document_is_fine():
    tree = accepted({'definitions': {'node': {
        'type': 'object', 'properties': {'name': {'type': 'string'},
                                         'children': {'type': 'array',
                                                      'items': {'$ref': '#/definitions/node'}}},
        'required': ['name']}}, '$ref': '#/definitions/node'})
    assert document_problem(tree, {'name': 'a', 'children': [{'name': 'b', 'children': []}]}) == ''
    assert 'required property' in document_problem(tree, {'name': 'a', 'children': [{}]})


@pytest.mark.parametrize('ref', ['#/definitions/missing', '#/properties/a/items/3', '#/x~1y'])
def test_a_dangling_ref_is_refused_naming_it(ref):
    document_schema = {'definitions': {'n': {}}, 'properties': {
        'a': {'type': 'array', 'items': [{}]}, 'b': {'$ref': ref}}}
    assert schema_problem(document_schema, "tool 'go': parameters_json") == (
        f"tool 'go': parameters_json: $ref '{ref}' (at #/properties/b) is dangling: the schema "
        'has nothing at that path')


def test_refs_are_json_pointers_into_the_schema_only():
    escaped = accepted({'definitions': {'a/b c': {'type': 'integer'}},
                        'properties': {'n': {'$ref': '#/definitions/a~1b%20c'}}})
    assert 'is not of type' in document_problem(escaped, {'n': 'x'})
    assert schema_problem({'$ref': 'http://127.0.0.1:9/s.json'}, 'format').startswith(
        'format refers outside itself (http://127.0.0.1:9/s.json)')
    assert 'is not a JSON pointer' in schema_problem(
        {'definitions': {'a': {'$id': '#a'}}, '$ref': '#a'}, 'format')
    assert 'is not a schema' in schema_problem(
        {'enum': [1], 'properties': {'a': {'$ref': '#/enum/0'}}}, 'format')
    for keyword in ('$anchor', '$dynamicRef', '$recursiveRef'):
        assert schema_problem({'$schema': DRAFT_2020_12, 'properties': {'a': {keyword: 'x'}}},
                              'format') != ''


def test_subschemas_only_reached_by_ref_are_checked_by_the_meta_schema():
    # Draft 7's meta-schema does not look into $defs (a 2019-09 name pydantic uses).
    broken = {'$defs': {'n': {'type': 'objekt'}}, 'properties': {'a': {'$ref': '#/$defs/n'}}}
    assert schema_problem(broken, 'format').startswith(
        'format is not a valid JSON Schema (at #/$defs/n)')


# --- Item 4: the same verdict on jsonschema 3.2.0 and 4.x, and nothing fetched --------------

@pytest.mark.parametrize('keyword, value, draft', [
    ('prefixItems', [{'type': 'integer'}], 'Draft 2020-12'),
    ('dependentRequired', {'a': ['b']}, 'Draft 2019-09'),
    ('dependentSchemas', {'a': {'required': ['b']}}, 'Draft 2019-09'),
    ('unevaluatedProperties', False, 'Draft 2019-09'),
    ('unevaluatedItems', False, 'Draft 2019-09'),
    ('minContains', 2, 'Draft 2019-09'),
    ('maxContains', 2, 'Draft 2019-09'),
])
def test_newer_keywords_without_their_draft_are_refused_naming_them(keyword, value, draft):
    found = schema_problem({'type': 'object', 'properties': {'a': {keyword: value}}}, 'format')
    assert found.startswith(
        f"format: '{keyword}' (at #/properties/a) is a {draft} keyword, but the schema is "
        'Draft 7 (it has no "$schema"); '), found
    if HAS_2020_12:
        assert found.endswith('to use it, declare "$schema": "https://json-schema.org/draft/'
                              + ('2020-12' if '2020' in draft else '2019-09') + '/schema"')
    else:
        assert f'cannot enforce it ({draft} needs jsonschema >= 4)' in found


def test_a_property_named_like_a_keyword_is_no_keyword():
    named = accepted({'type': 'object', 'properties': {'prefixItems': {'type': 'integer'},
                                                       '$id': {'type': 'string'}},
                      'required': ['prefixItems']})
    assert document_problem(named, {'prefixItems': 1, '$id': 'x'}) == ''


def test_a_draft_the_installed_jsonschema_lacks_is_refused_else_enforced():
    closed_tuple = {'$schema': DRAFT_2020_12, 'type': 'array',
                    'prefixItems': [{'type': 'integer'}, {'type': 'string'}], 'items': False}
    beside_ref = {'$schema': DRAFT_2020_12, '$defs': {'o': {'type': 'object'}},
                  '$ref': '#/$defs/o', 'required': ['x']}
    if not HAS_2020_12:
        # 3.2.0 took it as Draft 7: a correct answer failed on 'items': False and the keywords
        # beside $ref were not enforced.
        for document_schema in (closed_tuple, beside_ref):
            assert schema_problem(document_schema, 'format').startswith(
                'format is Draft 2020-12: jsonschema 3.2.0 cannot enforce it (Draft 2020-12 '
                'needs jsonschema >= 4)')
        return
    assert document_problem(accepted(closed_tuple), [1, 'a']) == ''
    assert document_problem(closed_tuple, [1, 'a', 'b']) != ''
    assert "'x' is a required property" in document_problem(accepted(beside_ref), {})


def test_a_schema_without_draft_is_draft_7_on_every_version():
    # Draft 7's tuple form of items; Draft 2020-12 (4.x's default) refuses it.
    pair = accepted({'type': 'array', 'items': [{'type': 'integer'}, {'type': 'string'}]})
    assert document_problem(pair, [1, 'a', None]) == ''
    assert document_problem(pair, ['a']) != ''


def test_an_unknown_draft_is_refused():
    assert schema_problem({'$schema': 'http://example.com/my-draft'}, 'format').startswith(
        "format: \"$schema\" 'http://example.com/my-draft' is not a JSON Schema draft the node "
        'knows')
    assert schema_problem({'$schema': []}, 'format').startswith(
        'format is not a usable JSON Schema')
    accepted({'$schema': 'http://json-schema.org/draft-04/schema#', 'type': 'object'})


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: List[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        body = b'{"type": "string"}'
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[str]:
    """A loopback HTTP server that records every request; yields its base URL."""
    _Recorder.requests = []
    server = http.server.HTTPServer(('127.0.0.1', 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()
    thread.join()


def test_nothing_is_fetched_for_a_nested_id_or_a_remote_ref(listener):
    nested = {'type': 'object', 'properties': {'a': {
        '$id': f'{listener}/a.json', 'definitions': {'n': {'type': 'integer'}},
        '$ref': '#/definitions/n'}}}
    assert schema_problem(nested, 'format').startswith(
        f'format has a nested $id (at #/properties/a) ({listener}/a.json): only the top level '
        'may have one')
    # The check itself fetches nothing either, with schemas that would not pass acceptance.
    remote = {'type': 'object', 'properties': {'a': {'$ref': f'{listener}/b.json'}}}
    for document_schema in (nested, remote):
        found = document_problem(document_schema, {'a': 1})
        assert found.startswith('the format schema could not be applied to the answer') or (
            found == ''), found
    assert _Recorder.requests == []


def test_a_top_level_id_resolves_locally(listener):
    rooted = accepted({'$id': f'{listener}/root.json', 'definitions': {'n': {'type': 'integer'}},
                       'type': 'object', 'properties': {'a': {'$ref': '#/definitions/n'}}})
    assert document_problem(rooted, {'a': 1}) == ''
    assert 'is not of type' in document_problem(rooted, {'a': 'x'})
    assert _Recorder.requests == []


def test_a_relative_nested_id_is_refused():
    # 3.2.0 raised on it while checking, so a valid answer ended FORMAT_MISMATCH.
    relative = {'definitions': {'n': {'$id': 'n.json', 'type': 'integer'}},
                'properties': {'a': {'$ref': '#/definitions/n'}}}
    assert 'has a nested $id (at #/definitions/n) (n.json)' in schema_problem(relative, 'format')


def test_quotes_are_bounded():
    huge = {'type': 'string', 'enum': 'x' * 50000}
    assert len(schema_problem(huge, 'format')) < 400
    assert len(schema.brief('y' * 1000)) == schema.MAX_QUOTE_CHARS + 3
