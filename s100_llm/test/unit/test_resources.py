"""The system sample's CPU frequency is in MHz with every psutil the node meets."""

from types import SimpleNamespace

import psutil
import pytest

from s100_llm.core.resources import frequency_mhz
from s100_llm.core.resources import ResourceSampler


@pytest.mark.parametrize('current, mhz', [
    (2400.0, 2400.0),   # psutil 5.9.1 and newer, and 5.9.0 without "cpu MHz" in /proc/cpuinfo
    (2.4, 2400.0),      # psutil 5.9.0 on x86 hosts that list "cpu MHz": GHz
    (0.0, None),        # unknown
    (None, None),
])
def test_the_frequency_is_in_mhz(current, mhz):
    assert frequency_mhz(current) == mhz


def test_the_sample_corrects_psutil_5_9_0s_gigahertz(monkeypatch, tmp_path):
    # What psutil 5.9.0's Linux cpu_freq() returned from "cpu MHz: 2400.000": 2400 / 1000.
    monkeypatch.setattr(psutil, 'cpu_freq',
                        lambda: SimpleNamespace(current=2.4, min=800.0, max=4200.0))
    assert ResourceSampler(str(tmp_path)).system().cpu_frequency_mhz == 2400.0
