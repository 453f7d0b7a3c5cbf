"""Folding text for matching: lower case, no diacritics, Serbian Cyrillic as Latin."""

from __future__ import annotations

import unicodedata

_CYRILLIC_TO_LATIN = str.maketrans(
    {
        "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "ђ": "dj", "е": "e", "ж": "z",
        "з": "z", "и": "i", "ј": "j", "к": "k", "л": "l", "љ": "lj", "м": "m", "н": "n",
        "њ": "nj", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "ћ": "c", "у": "u",
        "ф": "f", "х": "h", "ц": "c", "ч": "c", "џ": "dz", "ш": "s",
    }
)  # fmt: skip


def fold(text: str) -> str:
    """`Грешка`, `Greška` and `greska` all fold to `greska`; `Întrebare` to `intrebare`.

    Customers type with and without diacritics and in either Serbian script, so keyword and
    tag tables are written once, in plain Latin, and compared after folding.
    """
    lowered = text.casefold().replace("đ", "dj")
    latin = lowered.translate(_CYRILLIC_TO_LATIN)
    decomposed = unicodedata.normalize("NFKD", latin)
    return "".join(c for c in decomposed if not unicodedata.combining(c))
