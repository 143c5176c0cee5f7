"""Put user-supplied strings into MONAI bundle configs without the config parser ever evaluating them.

MONAI's parser gives meaning to strings that start with ``$`` (a Python expression), ``@`` (a reference) or
``%`` (a macro), and rewrites any string holding ``@#`` or ``%#`` (relative ids). A path or name from the user
that could be read that way is written instead as an expression that only decodes hex digits, so its text
never reaches ``eval``. Everything else (absolute paths in practice) stays readable as is.
"""

from __future__ import annotations

import re

_SPECIAL_START = ("$", "@", "%")
_RELATIVE_ID = re.compile(r"[@%]#")


def is_inert(text: str) -> bool:
    """True when MONAI's config parser leaves ``text`` exactly as it is."""
    return not text.startswith(_SPECIAL_START) and not _RELATIVE_ID.search(text)


def literal(text: str) -> str:
    """``text`` as a config value the parser turns back into exactly ``text``."""
    if is_inert(text):
        return text
    return f"$bytes.fromhex('{text.encode('utf-8').hex()}').decode('utf-8')"
