"""Point the ROS 2 wheels' CMake files at this venv's Python.

The wheels are built on a manylinux host and their CMake export files hard-code its Python
paths (/opt/python/cp311-cp311/...); rosidl generation then fails at CMake generate time.
This rewrites them, in place and idempotently, to the venv's include dir and site-packages.
"""

import pathlib
import sys
import sysconfig

BUILD_HOST_PYTHON = '/opt/python/cp311-cp311'


def main(venv: str) -> int:
    prefix = pathlib.Path(venv).resolve()
    include_dir = sysconfig.get_paths()['include']
    site_packages = next(prefix.glob('lib/python3*/site-packages'))
    replacements = {
        f'{BUILD_HOST_PYTHON}/include/python3.11': include_dir,
        f'{BUILD_HOST_PYTHON}/lib/python3.11/site-packages': str(site_packages),
    }
    fixed = 0
    for cmake_file in (prefix / 'share').rglob('*.cmake'):
        text = cmake_file.read_text(errors='surrogateescape')
        if BUILD_HOST_PYTHON not in text:
            continue
        for old, new in replacements.items():
            text = text.replace(old, new)
        cmake_file.write_text(text, errors='surrogateescape')
        fixed += 1
    print(f'fix_wheel_cmake_paths: rewrote {fixed} CMake files under {prefix}/share')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
