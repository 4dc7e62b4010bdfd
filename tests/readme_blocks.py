"""The README's code blocks, for the tests that run them as a reader would."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    """The blocks fenced at the start of a line: an indented one inside a list
    item is a fragment that illustrates the item, not a whole chain or program."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)
