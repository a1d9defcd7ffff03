"""keep_alive values as Ollama reads them: seconds, or a Go duration string."""

import re
from typing import Optional, Union

_GO_UNITS = {'ns': 1e-9, 'us': 1e-6, 'µs': 1e-6, 'ms': 1e-3, 's': 1.0, 'm': 60.0, 'h': 3600.0}
_GO_PART = re.compile(r'(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)')


class DurationError(ValueError):
    """A keep_alive Ollama would answer with 400."""


def parse_go_duration(text: str) -> float:
    """Parse a Go duration ('5m', '1h30m', '-1m', '0') into seconds, like time.ParseDuration."""
    original = text
    sign = 1.0
    if text[:1] in '+-':
        sign = -1.0 if text[0] == '-' else 1.0
        text = text[1:]
    if text == '0':
        return 0.0
    if not text:
        raise DurationError(f'time: invalid duration "{original}"')
    total = 0.0
    position = 0
    while position < len(text):
        match = _GO_PART.match(text, position)
        if not match:
            if re.fullmatch(r'[\d.]+', text[position:]):
                raise DurationError(f'time: missing unit in duration "{original}"')
            raise DurationError(f'time: invalid duration "{original}"')
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    return sign * total


def parse_keep_alive(value: Union[int, float, str, None]) -> Optional[float]:
    """Seconds to keep a model loaded; None means forever (Ollama: any negative value)."""
    if value is None:
        raise DurationError('keep_alive is required')
    if isinstance(value, bool):
        raise DurationError('json: cannot unmarshal bool into Go value of type api.Duration')
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        seconds = parse_go_duration(value.strip())
    return None if seconds < 0 else seconds
