"""Reading OpenAI's `x-ratelimit-reset-*` durations ("20ms", "1s", "1.5s", "6m0s") back."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?$")
_MILLIS = re.compile(r"^(\d+)ms$")


def seconds(text: str) -> float:
    """The duration in seconds; AssertionError when it is not in OpenAI's format."""
    millis = _MILLIS.match(text)
    if millis:
        assert text != "0ms", "zero is written 0s"
        return int(millis.group(1)) / 1000
    match = _DURATION.match(text)
    assert match and text and text.endswith("s"), f"not an OpenAI duration: {text!r}"
    hours, minutes, secs = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
