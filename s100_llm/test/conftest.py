"""Fixtures: each test gets its own DDS domain, Ollama port and models dir. Nothing here needs
ROS 2 (the unit tests also run without it); the node's fixtures are in integration/conftest.py."""

import itertools
import os
import pathlib
import random
from typing import Any, Dict

import pytest
# S100_LLM_TEST_OLLAMA=<ollama binary>: the real-model tests against it (see real_ollama.py).
import real_ollama
from real_ollama import pytest_collection_modifyitems  # noqa: F401 (pytest's hooks)
from real_ollama import pytest_report_header  # noqa: F401
from real_ollama import pytest_terminal_summary  # noqa: F401

from support import free_port
from support import localhost_discovery

localhost_discovery(os.environ)
# Humble's generated messages type-check every field they are given; Jazzy's and Kilted's only
# with this set when a message module is imported (here, before any is): the tests' clients and
# the nodes they start check as on the robot.
os.environ['ROS_PYTHON_CHECK_FIELDS'] = '1'
# Test runs that share a machine (and so DDS discovery) stay apart with disjoint domain ranges:
# S100_LLM_TEST_DOMAINS=FIRST-LAST (default 1-100; FastDDS accepts 0..232).
_FIRST_DOMAIN, _LAST_DOMAIN = (int(x) for x in
                               os.environ.get('S100_LLM_TEST_DOMAINS', '1-100').split('-'))
_domains = itertools.count(random.Random(os.getpid()).randrange(
    0, _LAST_DOMAIN - _FIRST_DOMAIN + 1))
OLLAMA_BIN = real_ollama.ollama_bin()


def _next_domain_id() -> int:
    return _FIRST_DOMAIN + next(_domains) % (_LAST_DOMAIN - _FIRST_DOMAIN + 1)


@pytest.fixture
def domain_id() -> int:
    return _next_domain_id()


@pytest.fixture(scope='module')
def module_domain_id() -> int:
    """A domain for a node shared by a module's read-only tests."""
    return _next_domain_id()


@pytest.fixture
def ollama_port() -> int:
    return free_port()


@pytest.fixture
def models_dir(tmp_path: pathlib.Path) -> str:
    return real_ollama.models_dir(tmp_path / 'models')


def default_parameters(port: int, models_dir: str) -> Dict[str, Any]:
    return {'model': 'echo:latest', 'ollama_bin': OLLAMA_BIN, 'host': f'127.0.0.1:{port}',
            'models_dir': models_dir, 'restart_backoff': 0.0, 'diagnostics_period': 0.5}
