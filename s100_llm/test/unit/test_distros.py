"""What the tests do differently on Humble: Log levels compared as ints (Humble's Log constants
are bytes) and localhost-only discovery without ROS_AUTOMATIC_DISCOVERY_RANGE."""

import pytest

from support import localhost_discovery
from support import log_level


@pytest.mark.parametrize('constant', [b'\x1e', 30], ids=['humble bytes', 'int'])
def test_a_log_constant_compares_with_a_received_level(constant):
    received_warn, received_error, received_info = 30, 40, 20
    assert log_level(received_warn) == log_level(constant) == 30
    assert log_level(received_error) >= log_level(constant) > log_level(received_info)
    assert {log_level(received_warn)} == {log_level(constant)}


def test_humble_discovers_on_localhost_only():
    environ = {'ROS_DISTRO': 'humble'}
    localhost_discovery(environ)
    assert environ == {'ROS_DISTRO': 'humble', 'ROS_LOCALHOST_ONLY': '1',
                       'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}


@pytest.mark.parametrize('distro', ['jazzy', 'kilted'])
def test_newer_distros_get_the_discovery_range_alone(distro):
    environ = {'ROS_DISTRO': distro, 'ROS_LOCALHOST_ONLY': '1'}
    localhost_discovery(environ)
    assert environ == {'ROS_DISTRO': distro, 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
