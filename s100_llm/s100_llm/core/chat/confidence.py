"""How sure the model was of its answer, ROS-free: the token log-probabilities Ollama returns
(`logprobs`) summarized into Confidence (mean and lowest over the answer's tokens, the least
likely token), and for a JSON answer the field whose value the model was least sure of.

The field is derived from positions, not guessed: the tokens' texts, concatenated, are the
answer's text, so each token covers a known range of characters; value_spans() walks the JSON
text and reports where each leaf value (string, number, true, false, null) lies, as a JSON
Pointer and a character range; a value's confidence is the mean log-probability of the tokens
that overlap its range. When the tokens do not add up to the text (a token that splits a
multi-byte character, a server that returned fewer tokens than it streamed), no field is named.
"""

import dataclasses
import itertools
import json
import math
from typing import List, Optional, Sequence, Tuple

# json's own scanner reads the leaf values (with their exact end); containers are walked here
# because the json module reports no positions for the values inside them.
_SCAN = json.JSONDecoder().scan_once
_WHITESPACE = ' \t\n\r'


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, natural-log probability and the top alternatives."""

    token: str
    logprob: float
    top: Tuple[Tuple[str, float], ...] = ()


@dataclasses.dataclass
class Confidence:
    """Chat.Result.confidence as plain values (see s100_llm_msgs/msg/Confidence.msg)."""

    available: bool = False
    token_count: int = 0
    mean_logprob: float = 0.0
    min_logprob: float = 0.0
    min_token: str = ''
    least_confident_field: str = ''
    least_confident_field_logprob: float = 0.0
    tokens: List[TokenLogprob] = dataclasses.field(default_factory=list)


def summarize(tokens: Sequence[TokenLogprob], keep_tokens: bool,
              json_text: Optional[str] = None) -> Confidence:
    """The summary of the answer's tokens (thinking excluded by the caller); with json_text
    (a structured answer, already checked to parse) the least confident field too."""
    if not tokens:
        return Confidence()
    least = min(tokens, key=lambda t: t.logprob)
    confidence = Confidence(
        available=True, token_count=len(tokens),
        mean_logprob=math.fsum(t.logprob for t in tokens) / len(tokens),
        min_logprob=least.logprob, min_token=least.token,
        tokens=list(tokens) if keep_tokens else [])
    if json_text is not None:
        field = least_confident_field(tokens, json_text)
        if field is not None:
            confidence.least_confident_field, confidence.least_confident_field_logprob = field
    return confidence


def least_confident_field(tokens: Sequence[TokenLogprob],
                          text: str) -> Optional[Tuple[str, float]]:
    """(JSON Pointer, mean log-probability) of the leaf value whose tokens have the lowest mean,
    or None when the tokens are not the text or the text has no leaf value."""
    if ''.join(t.token for t in tokens) != text:
        return None
    bounds: List[Tuple[int, int, float]] = []     # (start, end, logprob) of each token
    offset = 0
    for token in tokens:
        bounds.append((offset, offset + len(token.token), token.logprob))
        offset += len(token.token)
    best: Optional[Tuple[str, float]] = None
    for pointer, start, end in value_spans(text):
        covering = [logprob for first, last, logprob in bounds if first < end and last > start]
        if not covering:
            continue
        mean = math.fsum(covering) / len(covering)
        if best is None or mean < best[1]:
            best = (pointer, mean)
    return best


def value_spans(text: str) -> List[Tuple[str, int, int]]:
    """(JSON Pointer, start, end) of every leaf value of a JSON document, in text order.
    Raises ValueError when the text is not JSON."""
    spans: List[Tuple[str, int, int]] = []
    end = _walk(text, _skip(text, 0), '', spans)
    if _skip(text, end) != len(text):
        raise ValueError(f'extra data at character {end}')
    return spans


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def _walk(text: str, index: int, pointer: str, spans: List[Tuple[str, int, int]]) -> int:
    """Record the leaf values of the value at index; returns the index after it."""
    if index >= len(text):
        raise ValueError('a value is missing at the end')
    opening = text[index]
    if opening not in '{[':
        try:
            _, end = _SCAN(text, index)
        except StopIteration:
            raise ValueError(f'no JSON value at character {index}') from None
        spans.append((pointer, index, end))
        return end
    closing = '}' if opening == '{' else ']'
    index = _skip(text, index + 1)
    if index < len(text) and text[index] == closing:
        return index + 1
    for position in itertools.count():
        if opening == '{':
            key, index = _key(text, index)
            child = f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"
        else:
            child = f'{pointer}/{position}'
        index = _skip(text, _walk(text, index, child, spans))
        if index < len(text) and text[index] == ',':
            index = _skip(text, index + 1)
            continue
        if index < len(text) and text[index] == closing:
            return index + 1
        raise ValueError(f"expected ',' or {closing!r} at character {index}")
    raise AssertionError('itertools.count() never ends')


def _key(text: str, index: int) -> Tuple[str, int]:
    """An object's key and the index of its value."""
    if index >= len(text) or text[index] != '"':
        raise ValueError(f'expected a key at character {index}')
    key, index = _SCAN(text, index)
    index = _skip(text, index)
    if index >= len(text) or text[index] != ':':
        raise ValueError(f"expected ':' at character {index}")
    return key, _skip(text, index + 1)
