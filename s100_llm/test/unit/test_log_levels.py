"""Log levels compare as ints on every distro (Humble's Log constants are bytes)."""

import pytest

from support import log_level


@pytest.mark.parametrize('constant', [b'\x1e', 30], ids=['humble bytes', 'int'])
def test_a_log_constant_compares_with_a_received_level(constant):
    received_warn, received_error, received_info = 30, 40, 20
    assert log_level(received_warn) == log_level(constant) == 30
    assert log_level(received_error) >= log_level(constant) > log_level(received_info)
    assert {log_level(received_warn)} == {log_level(constant)}
