"""config/llm.yaml and the parameter table of s100_llm/README.md are what the parameter table
says (scripts/params_docs.py writes both from s100_llm/core/config.py)."""

import pathlib

import yaml

from s100_llm.core.config import PARAMETERS
from s100_llm.core.params import params_file
from s100_llm.core.params import TakesEffect
from s100_llm.core.params import with_readme_table

PACKAGE = pathlib.Path(__file__).resolve().parents[2]
README = PACKAGE / 'README.md'
REGENERATE = 'out of date: run python3 scripts/params_docs.py'


def test_llm_yaml_is_the_parameter_table():
    assert (PACKAGE / 'config' / 'llm.yaml').read_text() == params_file(PARAMETERS), REGENERATE


def test_the_readme_table_is_the_parameter_table():
    readme = README.read_text()
    assert readme == with_readme_table(readme, PARAMETERS), REGENERATE


def test_llm_yaml_reads_back_as_every_default_with_its_type():
    values = yaml.safe_load(params_file(PARAMETERS))['/**']['ros__parameters']
    assert list(values) == [parameter.name for parameter in PARAMETERS]
    for parameter in PARAMETERS:
        value = values[parameter.name]
        assert (type(value), value) == (parameter.value_type, parameter.default), parameter.name


def test_every_description_ends_with_when_a_change_applies_once():
    phrases = [when.value for when in TakesEffect]
    for parameter in PARAMETERS:
        said = [phrase for phrase in phrases if phrase in parameter.documentation]
        assert said == [parameter.takes_effect.value], parameter.name
        assert parameter.documentation.endswith(said[0]), parameter.name


def test_parameters_read_at_start_are_read_only():
    assert sorted(p.name for p in PARAMETERS if p.read_only) == [
        'diagnostics_period', 'num_parallel']
