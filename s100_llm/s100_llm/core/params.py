"""The parameter table's vocabulary: what one parameter is, and the checks and documents that
follow from it.

Each parameter is written once, as a field of a settings dataclass in core/config.py declared
with `setting(...)`: its default, range (or choices), description and when a change takes
effect. Everything else is derived from those fields: `table()` lists them as `Parameter`s for
the ROS declarations (parameters.py), `check_values()` validates a settings object against
them, and `params_file()` / `readme_table()` write config/llm.yaml and s100_llm/README.md's table
(scripts/params_docs.py writes both; test_parameter_docs.py fails when they differ).
"""

import dataclasses
import enum
import math
import textwrap
from typing import Any, Iterable, Optional, Sequence, Tuple

_KEY = 's100_llm.parameter'


class ConfigError(ValueError):
    """A setting is invalid; the message names the parameter and what is wrong."""


class TakesEffect(enum.Enum):
    """When a changed value is used; the value ends the parameter's description."""

    CONFIGURE = 'Next configure.'
    ACTIVATE = 'Next activate.'
    AT_ONCE = 'At once.'
    # Read once when the node starts (e.g. the executor is sized from it): read-only.
    START = 'Set at start.'


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One ROS parameter: a settings field and everything said about it."""

    name: str
    owner: type                           # the settings dataclass holding it
    field: str                            # its field there
    section: str                          # heading it is listed under in llm.yaml
    default: Any
    description: str                      # without when it takes effect
    takes_effect: TakesEffect
    bounds: Optional[Tuple[float, float]]  # the inclusive range; numbers only
    choices: Tuple[str, ...]              # the allowed strings; empty: any

    @property
    def value_type(self) -> type:
        return type(self.default)

    @property
    def read_only(self) -> bool:
        """A value read only at start cannot be changed afterwards: the parameter refuses it."""
        return self.takes_effect is TakesEffect.START

    @property
    def documentation(self) -> str:
        """The description as `ros2 param describe`, llm.yaml and the README show it."""
        return f'{self.description} {self.takes_effect.value}'

    @property
    def allowed(self) -> str:
        """The values it takes, as the README and llm.yaml show them ('' for any string)."""
        if self.bounds is not None:
            return '..'.join(_yaml(limit) for limit in self.bounds)
        if self.value_type is bool:
            return 'true, false'
        return ', '.join(self.choices)

    def as_declared(self, value: Any) -> Any:
        """A value in the parameter's type where people's typing allows it (anything else is
        kept for check_values to judge): an integer given for a float parameter becomes a
        float, and a number or bool given for a string parameter its text (YAML, and so
        `-p cpu_cores:=0`, a params file's `cpu_cores: 3` or `ros2 param set /llm cpu_cores 3`,
        makes `0` an integer and `true` a bool)."""
        if self.value_type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if self.value_type is str and isinstance(value, (bool, int, float)):
            return _yaml(value) if isinstance(value, bool) else str(value)
        return value


def setting(default: Any, takes_effect: TakesEffect, description: str,
            bounds: Optional[Tuple[float, float]] = None, choices: Sequence[str] = (),
            name: str = '') -> Any:
    """A settings field that is a parameter (named like the field unless `name` is given).

    Every number needs bounds (its inclusive range): NaN, infinities and values outside it
    are refused.
    """
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric != (bounds is not None):
        raise TypeError(f'{name or description!r}: bounds are for numbers, and every number '
                        'needs them')
    return dataclasses.field(default=default, metadata={_KEY: {
        'name': name, 'description': description, 'takes_effect': takes_effect,
        'bounds': bounds, 'choices': tuple(choices)}})


def table(*sections: Tuple[str, type]) -> Tuple[Parameter, ...]:
    """The parameters of the given (section heading, settings dataclass) pairs, in order."""
    return tuple(_parameter(owner, field, heading) for heading, owner in sections
                 for field in dataclasses.fields(owner) if _KEY in field.metadata)


def _parameter(owner: type, field: 'dataclasses.Field[Any]', section: str) -> Parameter:
    written = field.metadata[_KEY]
    return Parameter(name=written['name'] or field.name, owner=owner, field=field.name,
                     section=section, default=field.default,
                     description=written['description'], takes_effect=written['takes_effect'],
                     bounds=written['bounds'], choices=written['choices'])


def check_values(settings: Any) -> None:
    """Every parameter field of a settings object has its type (a float also takes an
    integer), is finite and within its range, or is one of its choices; ConfigError."""
    for field in dataclasses.fields(settings):
        if _KEY not in field.metadata:
            continue
        parameter = _parameter(type(settings), field, '')
        value = getattr(settings, field.name)
        _check_type(parameter, value)
        if parameter.bounds is not None:
            low, high = parameter.bounds
            if not math.isfinite(value) or not low <= value <= high:
                raise ConfigError(f'{parameter.name} must be in {low:g}..{high:g} '
                                  f'(got {value:g})')
        if parameter.choices and value not in parameter.choices:
            raise ConfigError(f"{parameter.name} '{value}' must be one of "
                              f"{', '.join(parameter.choices)}")


_TYPE_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}


def _check_type(parameter: Parameter, value: Any) -> None:
    expected = parameter.value_type
    accepted = (int, float) if expected is float else expected
    # bool is an int in Python; it is not a number here.
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, accepted):
        raise ConfigError(f'{parameter.name} must be {_TYPE_NAMES[expected]} (got {value!r})')


# The top of config/llm.yaml, above the parameters.
PARAMS_FILE_HEADER = """\
Parameters of the s100_llm node, with their defaults. Generated from the settings in
s100_llm/core/config.py by scripts/params_docs.py: edit those, not this file.
`ros2 launch s100_llm llm.launch.py params_file:=<copy of this file>` to change them;
the launch arguments model, models_dir, host and ollama_bin override this file when they
are given.
"""


def params_file(parameters: Iterable[Parameter]) -> str:
    """config/llm.yaml: every parameter with its default, under its section, described."""
    lines = [f'# {line}' for line in PARAMS_FILE_HEADER.splitlines()]
    lines += ['/**:', '  ros__parameters:']
    section = None
    for parameter in parameters:
        if parameter.section != section:
            section = parameter.section
            lines.append(f'    # --- {section} ---')
        text = parameter.documentation
        if parameter.bounds or parameter.choices:
            text += f' Allowed: {parameter.allowed}.'
        lines += textwrap.wrap(text, width=99, initial_indent='    # ',
                               subsequent_indent='    # ', break_on_hyphens=False)
        lines.append(f'    {parameter.name}: {_yaml(parameter.default)}')
    return '\n'.join(lines) + '\n'


def readme_table(parameters: Iterable[Parameter]) -> str:
    """The README's parameter table (Markdown)."""
    rows = ['| parameter | default | allowed | meaning |', '| --- | --- | --- | --- |']
    for parameter in parameters:
        default = parameter.default if parameter.value_type is str and parameter.default \
            else _yaml(parameter.default)
        meaning = parameter.documentation + (' (read-only)' if parameter.read_only else '')
        # A bar inside a cell would end it.
        meaning = meaning.replace('|', r'\|')
        rows.append(f'| `{parameter.name}` | `{default}` | {parameter.allowed} | {meaning} |')
    return '\n'.join(rows) + '\n'


# Where the table stands in the README: between these two lines.
README_TABLE_BEGIN = '<!-- parameter table: written by scripts/params_docs.py -->'
README_TABLE_END = '<!-- end of parameter table -->'


def with_readme_table(readme: str, parameters: Iterable[Parameter]) -> str:
    """The README's text with its parameter table replaced by readme_table()."""
    before, begin, rest = readme.partition(README_TABLE_BEGIN + '\n')
    _, end, after = rest.partition(README_TABLE_END)
    if not begin or not end:
        raise ValueError(f'the README has no {README_TABLE_BEGIN} ... {README_TABLE_END} lines')
    return before + begin + readme_table(parameters) + end + after


def _yaml(value: Any) -> str:
    """A default as YAML reads it back: strings quoted, bools lower case, floats with a point."""
    if isinstance(value, str):
        return '"' + value.replace('\\', '\\\\').replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return repr(value)
