"""ament_pep257 over this package, the check `colcon test` runs in ROS 2 Python packages.

ament's convention, less the rules this project's docstrings do not follow: the summary may
span several lines (D205, D400, D415) and start on the opening line (D213), the closing
quotes may end the last line (D209), the summary may describe rather than command (D401) or
begin with a code name such as `settings_from(...)` or `callback` (D402, D403).
"""

import pathlib

from ament_pep257.main import main
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1]
PROJECT_STYLE = ['D205', 'D209', 'D213', 'D400', 'D401', 'D402', 'D403', 'D415']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    assert main(argv=['--add-ignore', *PROJECT_STYLE, '--', str(PACKAGE)]) == 0, \
        'docstrings break the PEP 257 rules listed above'
