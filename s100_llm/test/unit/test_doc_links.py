"""Every relative link in the docs (README.md, docs/*.md, the package READMEs) points at a file
or folder of the repository, and a link's #anchor at a heading of the Markdown file it names
(GitHub's anchors: the heading in lower case, punctuation dropped, spaces as '-')."""

import pathlib
import re

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[3]
DOCS = [REPOSITORY / 'README.md', *sorted((REPOSITORY / 'docs').glob('*.md')),
        REPOSITORY / 's100_llm' / 'README.md', REPOSITORY / 's100_llm_msgs' / 'README.md']
# [text](target): the target up to the closing parenthesis; code spans and blocks are not links.
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```.*?^```', re.MULTILINE | re.DOTALL)
CODE = re.compile(r'`[^`]*`')


def links(doc):
    text = CODE.sub('', FENCE.sub('', doc.read_text()))
    return [target for target in LINK.findall(text)
            if not re.match(r'[a-z]+:', target)]  # https:, mailto: are not checked here


def anchors(doc):
    headings = re.findall(r'^#+ (.*)$', FENCE.sub('', doc.read_text()), re.MULTILINE)
    return {re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-') for heading in headings}


def test_the_docs_exist():
    assert all(doc.is_file() for doc in DOCS), DOCS
    assert len(DOCS) > 5


@pytest.mark.parametrize('doc', DOCS, ids=lambda doc: str(doc.relative_to(REPOSITORY)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        path, _, anchor = target.partition('#')
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == '.md' and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, f'{doc.relative_to(REPOSITORY)}: {broken}'


def test_the_readme_links_every_guide_and_package_readme():
    linked = {(REPOSITORY / target.partition('#')[0]).resolve()
              for target in links(REPOSITORY / 'README.md')}
    assert not [str(doc) for doc in DOCS[1:] if doc.resolve() not in linked]
