"""The benchmarks' sizes: full (`make bench`, the figures in docs/performance.md) or quick
(BENCH_QUICK=1, `make bench-quick`): every script end to end with tiny sizes, in a few minutes,
so that CI notices a benchmark that broke. Quick figures say nothing about speed.
"""

import os
import pathlib
from typing import TypeVar

Size = TypeVar('Size')
QUICK = os.environ.get('BENCH_QUICK', '') not in ('', '0')


def sized(full: Size, quick: Size) -> Size:
    """full, or quick with BENCH_QUICK=1."""
    return quick if QUICK else full


def results_dir() -> pathlib.Path:
    """Where a script writes its results: bench/results (bench/results/quick when quick, so
    that a quick run never replaces the figures docs/performance.md quotes)."""
    out = pathlib.Path(__file__).resolve().parent / 'results' / ('quick' if QUICK else '')
    out.mkdir(parents=True, exist_ok=True)
    return out
