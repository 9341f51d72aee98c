"""Checks for text that the databases cannot store.

PostgreSQL text cannot contain NUL, and neither database driver can encode a lone UTF-16
surrogate (a JSON escape such as \\ud800 decodes to one), so such text is rejected on input and
cleaned where it comes from a record.
"""

from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_character(value: Any, location: str = "") -> str | None:
    """Describe the first NUL or lone surrogate in a string, list or dict, or return None.

    A nested one is described with its location, such as `configuration.parameters.a`.
    """
    if isinstance(value, str):
        match = _UNSTORABLE.search(value)
        if match is None:
            return None
        character = match.group()
        found = (
            "a NUL character" if character == "\x00" else f"a lone surrogate U+{ord(character):04X}"
        )
        return f"{found} in {location}" if location else found
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{location}.{key}" if location else str(key)
            found_in = unstorable_character(key, location) or unstorable_character(item, inner)
            if found_in:
                return found_in
    if isinstance(value, list):
        for index, item in enumerate(value):
            found_in = unstorable_character(item, f"{location}[{index}]")
            if found_in:
                return found_in
    return None


def storable(text: str) -> str:
    """Drop NUL characters and replace lone surrogates with U+FFFD."""
    return _UNSTORABLE.sub(lambda match: "" if match.group() == "\x00" else "\ufffd", text)
