"""Checks the jammy lane's install (scripts/setup-jammy-env): the running Python sees the pinned
packages of requirements/jammy.txt at their pinned versions (all of them, or those named), and
with --ollama the Ollama client imports.

  python scripts/jammy_install_check.py requirements/jammy.txt [--ollama] [NAME ...]
"""

import argparse
import importlib.metadata
import pathlib
import sys
from typing import Dict


def pins(path: pathlib.Path) -> Dict[str, str]:
    """name -> version of each `name==version` line (comments and blank lines skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            name, version = line.split('==')
            found[name.strip()] = version.strip()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('pins', type=pathlib.Path)
    parser.add_argument('names', nargs='*', help='check only these (default: every pin)')
    parser.add_argument('--ollama', action='store_true', help='the ollama client imports too')
    arguments = parser.parse_args()
    wanted = pins(arguments.pins)
    problems = []
    for name in arguments.names or list(wanted):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != wanted[name]:
            problems.append(f'{name}: {installed or "missing"}, jammy has {wanted[name]}')
    if arguments.ollama:
        try:
            import ollama  # noqa: F401
        except ImportError as error:
            problems.append(f'the ollama client does not import: {error}')
    for problem in problems:
        print(f'{sys.executable}: {problem}', file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
