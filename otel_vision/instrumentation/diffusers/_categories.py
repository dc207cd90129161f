"""A bounded classification of edit instructions, so success rates per kind of edit fit on a metric."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

CATEGORIES: Final = ("add", "remove", "replace", "change", "make", "turn", "style", "put", "give", "other")
"""Every value `classify_instruction` can return."""

_VERBS: Final = {
    "add": "add", "insert": "add", "include": "add", "draw": "add",
    "remove": "remove", "delete": "remove", "erase": "remove", "take": "remove", "drop": "remove", "hide": "remove",
    "replace": "replace", "swap": "replace", "substitute": "replace", "exchange": "replace",
    "change": "change", "alter": "change", "modify": "change", "convert": "change", "transform": "change",
    "recolor": "change", "recolour": "change", "color": "change", "colour": "change", "paint": "change",
    "make": "make", "render": "make",
    "turn": "turn",
    "stylize": "style", "stylise": "style", "style": "style",
    "put": "put", "place": "put", "move": "put",
    "give": "give", "dress": "give",
}  # fmt: skip
_POLITE: Final = frozenset({"please", "can", "could", "would", "you", "kindly", "now", "just", "then", "and", "pls"})
_WORD = re.compile(r"[a-z]+")

InstructionClassifier = Callable[[str], str]
"""A function from an instruction to a category; its values must stay few (they become metric attributes)."""


def classify_instruction(instruction: str) -> str:
    """Map an edit instruction to its leading edit verb's category, e.g. "Please make it snowy" -> ``make``.

    Politeness words are skipped; "in the style of …" anywhere counts as ``style``; anything else is ``other``.
    """
    text = instruction.lower()
    if "in the style of" in text or text.rstrip(" .!").endswith(" style"):
        return "style"
    for word in _WORD.findall(text)[:6]:
        if word in _POLITE:
            continue
        return _VERBS.get(word, "other")
    return "other"
