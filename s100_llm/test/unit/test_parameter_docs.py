"""Every parameter says when a change takes effect, and the README's table says the same."""

import pathlib
import re

from s100_llm.parameters import DESCRIPTIONS
from s100_llm.parameters import names

APPLIES = ('Next configure.', 'Next activate.', 'At once.', 'Set at start.')
README = pathlib.Path(__file__).resolve().parents[3] / 'README.md'


def applies(description: str) -> str:
    return next((phrase for phrase in APPLIES if description.endswith(phrase)), '')


def test_every_description_says_when_a_change_applies():
    assert [name for name in names() if not applies(DESCRIPTIONS[name])] == []


def test_the_readme_table_says_when_each_change_applies():
    rows = dict(re.findall(r'^\| `([a-z_]+)` \| `[^`]*` \| (.*) \|$', README.read_text(),
                           re.MULTILINE))
    for name in names():
        assert applies(DESCRIPTIONS[name]) in rows[name], name
