#!/usr/bin/env python3
"""Write config/llm.yaml and the parameter table of s100_llm/README.md from the parameter table.

Every parameter is written once, in s100_llm/core/config.py; run this after changing one:
    python3 scripts/params_docs.py
s100_llm/test/unit/test_parameter_docs.py fails while either file differs from what this
writes. The core is ROS-free, so any Python 3.10 runs this (no ROS environment needed).
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 's100_llm'))

from s100_llm.core import params  # noqa: E402 (the source tree goes on the path first)
from s100_llm.core.config import PARAMETERS  # noqa: E402


def main() -> None:
    (ROOT / 's100_llm' / 'config' / 'llm.yaml').write_text(params.params_file(PARAMETERS))
    readme = ROOT / 's100_llm' / 'README.md'
    readme.write_text(params.with_readme_table(readme.read_text(), PARAMETERS))


if __name__ == '__main__':
    main()
