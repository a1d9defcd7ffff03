import json
import math

import pytest

from s100_llm.core.chat.confidence import least_confident_field
from s100_llm.core.chat.confidence import summarize
from s100_llm.core.chat.confidence import TokenLogprob
from s100_llm.core.chat.confidence import value_spans
from s100_llm.core.engine import thinks_in_levels


def tokens(*pairs):
    return [TokenLogprob(text, logprob) for text, logprob in pairs]


def test_the_summary_is_over_the_tokens_given():
    summary = summarize(tokens(('The', -0.1), (' door', -2.5), (' is open', -0.1)), False)
    assert summary.available and summary.token_count == 3
    assert math.isclose(summary.mean_logprob, -0.9)
    assert (summary.min_logprob, summary.min_token) == (-2.5, ' door')
    assert summary.tokens == [] and summary.least_confident_field == ''


def test_the_tokens_are_kept_when_asked():
    given = [TokenLogprob('a', -0.2, (('a', -0.2), ('b', -1.9)))]
    assert summarize(given, True).tokens == given


def test_no_tokens_is_no_confidence():
    summary = summarize([], True, '{}')
    assert not summary.available and summary.token_count == 0


def test_value_spans_name_every_leaf_with_its_pointer_and_range():
    text = '{"pose": {"x": 1.5e3, "tags": [true, null, "a\\"b"]}, "a/b~c": "hi", "e": {}}'
    spans = value_spans(text)
    assert [pointer for pointer, _, _ in spans] == [
        '/pose/x', '/pose/tags/0', '/pose/tags/1', '/pose/tags/2', '/a~1b~0c']
    assert [text[start:end] for _, start, end in spans] == [
        '1.5e3', 'true', 'null', '"a\\"b"', '"hi"']


@pytest.mark.parametrize('text', ['{"a": }', '[1 2]', '{"a": 1} x', '{"a" 1}', '{1: 2}', ''])
def test_value_spans_refuse_what_is_not_json(text):
    with pytest.raises(ValueError):
        value_spans(text)


def test_value_spans_agree_with_json_on_a_formatted_document():
    document = {'place': 'kitchen', 'pose': {'x': 1, 'y': [2.5, -3]}, 'ok': False}
    text = json.dumps(document, indent=2)
    assert [json.loads(text[start:end]) for _, start, end in value_spans(text)] == [
        'kitchen', 1, 2.5, -3, False]


def test_the_least_confident_field_is_the_value_whose_tokens_are_least_likely():
    # Tokens as a model streams them: pieces that do not follow the JSON syntax.
    answer = tokens(('{"place": "', -0.01), ('kit', -0.2), ('chen', -0.1), ('", "x": ', -0.01),
                    ('4', -2.0), ('2', -0.05), ('}', -0.01))
    text = ''.join(t.token for t in answer)
    pointer, mean = least_confident_field(answer, text)
    assert pointer == '/x'      # the tokens overlapping 42: '4' and '2'
    assert math.isclose(mean, (-2.0 - 0.05) / 2)
    assert summarize(answer, False, text).least_confident_field == '/x'


def test_no_field_when_the_tokens_are_not_the_text():
    answer = tokens(('{"a": ', -0.1), ('1}', -0.1))
    assert least_confident_field(answer, '{"a": 12}') is None
    assert least_confident_field(tokens(('[]', -0.1)), '[]') is None


@pytest.mark.parametrize('capabilities, template, family, levels', [
    (['completion', 'thinking'], '{{ if .ThinkLevel }}Reasoning: {{ .ThinkLevel }}{{ end }}',
     'qwen3', True),
    (['completion', 'thinking'], '{%- if reasoning_effort %}{{ reasoning_effort }}', 'x', True),
    (['completion', 'thinking'], '<|start|>...<|end|>', 'gptoss', True),
    (['completion', 'thinking'], '{{ if .Think }}<think>{{ end }}', 'qwen3', False),
    (['completion'], '{{ .ThinkLevel }}', 'gptoss', False),
])
def test_a_model_thinks_in_levels_when_its_template_reads_the_level(
        capabilities, template, family, levels):
    assert thinks_in_levels(capabilities, template, family) is levels
