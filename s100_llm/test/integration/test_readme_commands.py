"""Issue 22.13: the docs' structured-output commands (README.md's "Talk to it" and
docs/structured-output.md) run as written against the demo model (the real SmolLM2-135M behind
the emulator) and print what the docs show.

`ros2 run s100_llm chat` is run as the installed entry point it starts (the same client; `ros2`
itself is not installed on every lane), in a shell, from an empty directory, so that the files
a block writes are the ones its commands read.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess

from jsonschema.validators import validator_for
import pytest

from harness import install_prefix

REPOSITORY = pathlib.Path(__file__).resolve().parents[3]
# Every doc: README.md lists the commands, docs/structured-output.md holds the blocks that
# write the schema and run them.
DOCS = [REPOSITORY / 'README.md', *sorted((REPOSITORY / 'docs').glob('*.md')),
        REPOSITORY / 's100_llm' / 'README.md', REPOSITORY / 's100_llm_msgs' / 'README.md']
CHAT = 'ros2 run s100_llm chat'


def shell_blocks():
    return [block for doc in DOCS
            for block in re.findall(r'^```sh\n(.*?)^```', doc.read_text(),
                                    re.MULTILINE | re.DOTALL)]


def structured_blocks():
    """The shell blocks that run the chat CLI with --format and show the answer (`# -> ...`)."""
    return [block for block in shell_blocks()
            if re.search(rf'^{CHAT} .*--format ', block, re.MULTILINE) and '# -> ' in block]


def test_every_format_command_of_the_readme_is_run_here():
    # README.md's "Talk to it" list points to the guide's block; `--format json` is not shown (the
    # demo model, unguided by a schema, wrote 2,036 emoji tokens and ended FORMAT_MISMATCH).
    assert structured_blocks()
    listed = [line for block in shell_blocks() for line in block.splitlines()
              if line.startswith(CHAT) and ' --format ' in line]
    for line in listed:
        words = shlex.split(line, comments=True)
        argument = words[words.index('--format') + 1]
        assert argument != 'json', line
        assert any(f'> {argument}' in block for block in structured_blocks()), line


@pytest.mark.parametrize('block', structured_blocks())
def test_a_readme_structured_output_block_prints_what_it_shows(active, domain_id, tmp_path,
                                                               block):
    active(model='smollm2:135m', env={'OLLAMA_EMULATOR_THREADS': '2'})
    chat = shlex.quote(str(install_prefix() / 'lib' / 's100_llm' / 'chat'))
    script = block.replace(CHAT, chat)
    done = subprocess.run(['bash', '-e', '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'FORMAT_MISMATCH' not in done.stdout + done.stderr
    # The answer as it streamed (the model's own layout), then the statistics.
    answer, _ = json.JSONDecoder().raw_decode(done.stdout)
    schema_file = re.search(r'--format (\S+)', block).group(1)
    schema = json.loads((tmp_path / schema_file).read_text())
    validator_for(schema)(schema).validate(answer)
    shown = re.search(r'^# -> (.*)$', block, re.MULTILINE).group(1)
    assert answer == json.loads(shown), done.stdout
