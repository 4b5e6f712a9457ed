"""Language tags of scav-dub: ISO 639-1 or 639-2 (either form), normalised to 639-2/T.

Tracks in caches carry what containers store (ISO 639-2, e.g. ``spa``, ``fre``), users type
``es`` or ``SPA``, Whisper speaks 639-1: every stage normalises with :func:`language_tag` and
keys its tables by the 639-2/T form.
"""

from __future__ import annotations

import re

# ISO 639-2/T -> 639-1 for the languages the stages (espeak-ng, Whisper, Seamless) are likely to see.
ISO639_1 = {
    "eng": "en", "spa": "es", "fra": "fr", "deu": "de", "ita": "it", "por": "pt", "nld": "nl", "rus": "ru",
    "pol": "pl", "tur": "tr", "swe": "sv", "dan": "da", "nor": "no", "fin": "fi", "ces": "cs", "ell": "el",
    "hun": "hu", "ron": "ro", "ukr": "uk", "ara": "ar", "heb": "he", "hin": "hi", "ben": "bn", "urd": "ur",
    "fas": "fa", "zho": "zh", "jpn": "ja", "kor": "ko", "vie": "vi", "tha": "th", "ind": "id", "msa": "ms",
    "nob": "nb", "cat": "ca", "glg": "gl", "eus": "eu", "cym": "cy", "gle": "ga", "isl": "is", "hrv": "hr",
    "srp": "sr", "slk": "sk", "slv": "sl", "bul": "bg", "lit": "lt", "lav": "lv", "est": "et", "tam": "ta",
    "tel": "te", "swa": "sw", "afr": "af",
}
_FROM_639_1 = {v: k for k, v in ISO639_1.items()}
_BIBLIOGRAPHIC = {"fre": "fra", "ger": "deu", "dut": "nld", "chi": "zho", "cze": "ces", "gre": "ell",
                  "rum": "ron", "per": "fas", "may": "msa", "baq": "eus", "wel": "cym", "ice": "isl",
                  "slo": "slk"}
_TAG = re.compile(r"^[a-z]{2,3}$")
_STORED = re.compile(r"^[a-z]{3}$")  # what mp4 stores (ISO 639-2); the muxer drops anything else


def language_tag(tag: str) -> str:
    """ISO 639-2/T form of a 639-1 or 639-2 tag ('fr', 'FRE', 'fra' -> 'fra'); ValueError if not one.

    A three-letter tag not in the tables above is kept (lower case): 639-3 codes such as
    SeamlessM4T's 'cmn' are valid there.
    """
    t = str(tag).strip().lower()
    if not _TAG.match(t):
        raise ValueError(f"{tag!r} is not an ISO 639-1 or 639-2 language tag")
    if len(t) == 2:
        if t not in _FROM_639_1:
            raise ValueError(f"unknown ISO 639-1 tag {tag!r}")
        return _FROM_639_1[t]
    return _BIBLIOGRAPHIC.get(t, t)


def tag_or_none(tag: str | None) -> str | None:
    """:func:`language_tag` of ``tag``, or None when it is empty or not a language tag (an untagged or
    oddly tagged track)."""
    try:
        return language_tag(tag) if tag else None
    except ValueError:
        return None


def same_language(a: str | None, b: str | None) -> bool:
    """True when two tags name one language ('fr', 'fre', 'FRA'); tags that are not language tags
    compare as written, ignoring case."""
    if a is None or b is None:
        return a is b
    ta, tb = tag_or_none(a), tag_or_none(b)
    return ta == tb if ta and tb else str(a).strip().lower() == str(b).strip().lower()


def iso639_1(tag: str) -> str | None:
    """Two-letter form of a language tag (what Whisper's language tokens use), None if it has none."""
    return ISO639_1.get(language_tag(tag))


def is_stored_tag(tag: object) -> bool:
    """True for a tag mp4 can store as it is: three lower-case letters (ISO 639-2)."""
    return isinstance(tag, str) and bool(_STORED.match(tag))
