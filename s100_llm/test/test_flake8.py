"""ament_flake8 over this package, the check `colcon test` runs in ROS 2 Python packages.

It reads the repository's .flake8: ament's settings with this project's import names.
"""

import pathlib

from ament_flake8.main import main_with_errors
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1]
CONFIG = PACKAGE.parent / '.flake8'


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    rc, errors = main_with_errors(argv=['--config', str(CONFIG), str(PACKAGE)])
    assert rc == 0, f'{len(errors)} flake8 errors or warnings:\n' + '\n'.join(errors)
