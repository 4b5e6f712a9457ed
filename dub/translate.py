"""Text translation: a word-for-word dictionary stand-in, and SeamlessM4T from local weights.

:class:`DictionaryTranslator` translates word by word from a table of concepts (one row per
meaning: its word in each language). It is not translation (no grammar, no agreement, one
sense per word); it gives the pipeline real words in the target language, deterministic and
weightless, for the synthetic benchmark's script (:data:`SCRIPT_WORDS`, read by
``segment.KnownScriptSegmenter``) and a few common words. Words it does not know and all
punctuation and spacing are kept as they are.

:class:`SeamlessTranslator` is the paper's step (3) (SeamlessM4T text-to-text), loaded with
transformers from a local folder only.

Language tags: ISO 639-2 (terminology or bibliographic form: ``fra``/``fre``) or ISO 639-1
(``fr``), any case; everything is keyed by the 639-2/T form.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .languages import ISO639_1, iso639_1, language_tag  # noqa: F401  (re-exported)
from .plugins import from_pretrained, optional_import, pretrained_source
from .stages import StageError

STAGE = "translate"

# The synthetic benchmark's script words (one per syllable, segment.py) and a few common words:
# one row per meaning, words in eng, spa, fra, deu, ita (German nouns capitalised, as written).
_LANGS = ("eng", "spa", "fra", "deu", "ita")
_SCRIPT = [
    ("hello", "hola", "bonjour", "hallo", "ciao"),
    ("river", "río", "rivière", "Fluss", "fiume"),
    ("music", "música", "musique", "Musik", "musica"),
    ("light", "luz", "lumière", "Licht", "luce"),
    ("morning", "mañana", "matin", "Morgen", "mattina"),
    ("water", "agua", "eau", "Wasser", "acqua"),
    ("house", "casa", "maison", "Haus", "casa"),
    ("friend", "amigo", "ami", "Freund", "amico"),
    ("night", "noche", "nuit", "Nacht", "notte"),
    ("sun", "sol", "soleil", "Sonne", "sole"),
    ("moon", "luna", "lune", "Mond", "luna"),
    ("window", "ventana", "fenêtre", "Fenster", "finestra"),
    ("garden", "jardín", "jardin", "Garten", "giardino"),
    ("city", "ciudad", "ville", "Stadt", "città"),
    ("road", "camino", "route", "Straße", "strada"),
    ("bread", "pan", "pain", "Brot", "pane"),
    ("book", "libro", "livre", "Buch", "libro"),
    ("tree", "árbol", "arbre", "Baum", "albero"),
    ("sea", "mar", "mer", "Meer", "mare"),
    ("sky", "cielo", "ciel", "Himmel", "cielo"),
    ("song", "canción", "chanson", "Lied", "canzone"),
    ("day", "día", "jour", "Tag", "giorno"),
    ("door", "puerta", "porte", "Tür", "porta"),
    ("forest", "bosque", "forêt", "Wald", "bosco"),
    ("mountain", "montaña", "montagne", "Berg", "montagna"),
    ("rain", "lluvia", "pluie", "Regen", "pioggia"),
    ("fire", "fuego", "feu", "Feuer", "fuoco"),
    ("star", "estrella", "étoile", "Stern", "stella"),
]
_COMMON = [
    ("yes", "sí", "oui", "ja", "sì"),
    ("no", "no", "non", "nein", "no"),
    ("thanks", "gracias", "merci", "danke", "grazie"),
    ("good", "bueno", "bon", "gut", "buono"),
    ("big", "grande", "grand", "groß", "grande"),
    ("small", "pequeño", "petit", "klein", "piccolo"),
    ("and", "y", "et", "und", "e"),
    ("with", "con", "avec", "mit", "con"),
    ("is", "es", "est", "ist", "è"),
    ("the", "el", "le", "der", "il"),
    ("a", "un", "un", "ein", "un"),
    ("of", "de", "de", "von", "di"),
    ("in", "en", "dans", "in", "in"),
    ("my", "mi", "mon", "mein", "mio"),
    ("you", "tú", "tu", "du", "tu"),
    ("I", "yo", "je", "ich", "io"),
    ("we", "nosotros", "nous", "wir", "noi"),
    ("here", "aquí", "ici", "hier", "qui"),
]
DEFAULT_TABLE: tuple[dict[str, str], ...] = tuple(dict(zip(_LANGS, row)) for row in _SCRIPT + _COMMON)
SCRIPT_WORDS: dict[str, tuple[str, ...]] = {lang: tuple(row[i] for row in _SCRIPT) for i, lang in enumerate(_LANGS)}


def script_vocabulary(language: str, stage: str = "transcribe") -> tuple[str, ...]:
    """The script words in ``language`` (any tag form); StageError for a language without them."""
    try:
        lang = language_tag(language)
    except ValueError as e:
        raise StageError(stage, str(e)) from None
    if lang not in SCRIPT_WORDS:
        raise StageError(stage, f"no script words in {language!r}; known: {', '.join(SCRIPT_WORDS)}")
    return SCRIPT_WORDS[lang]


_TOKENS = re.compile(r"\w+|\W+")  # words, and everything between them (kept verbatim)


class DictionaryTranslator:
    """Word-for-word translation from a table of concepts (module docstring: a stand-in).

    table: rows, each a mapping language tag -> word(s) for one meaning; default
    :data:`DEFAULT_TABLE`. Every pair of languages in the table translates both ways; when
    two rows share a word in a language, the first row wins. Case follows the source word:
    a word written as the table writes it gets the target as the table writes it (German
    nouns keep their capital), a capitalised or all-caps variant, or a capitalised word that
    starts a sentence, gets the target capitalised or in capitals.
    """

    name = "dictionary"

    def __init__(self, table: Sequence[Mapping[str, str]] | None = None):
        rows = DEFAULT_TABLE if table is None else table
        self._rows: list[dict[str, str]] = []
        self._index: dict[str, dict[str, int]] = {}  # language -> lower-case word -> row
        for i, row in enumerate(rows):
            clean = {}
            for tag, word in row.items():
                try:
                    lang = language_tag(tag)
                except ValueError as e:
                    raise ValueError(f"table row {i}: {e}") from None
                if not isinstance(word, str) or not word.strip():
                    raise ValueError(f"table row {i}: empty word for {tag!r}")
                clean[lang] = word.strip()
                self._index.setdefault(lang, {}).setdefault(clean[lang].lower(), i)
            self._rows.append(clean)
        self.languages = tuple(sorted(self._index))

    def supports_target(self, language: str) -> bool:
        try:
            return language_tag(language) in self._index
        except ValueError:
            return False

    def _pair(self, source: str, target: str) -> tuple[str, str]:
        try:
            src, tgt = language_tag(source), language_tag(target)
        except ValueError as e:
            raise StageError(STAGE, str(e)) from None
        missing = [t for t, x in ((source, src), (target, tgt)) if x not in self._index]
        if missing:
            raise StageError(STAGE, f"the dictionary has no words in {', '.join(map(repr, missing))}; "
                                    f"it translates between {', '.join(self.languages)}")
        return src, tgt

    def translate(self, text: str, source: str, target: str) -> str:
        src, tgt = self._pair(source, target)
        if src == tgt:
            return text
        out, starts_sentence = [], True
        for tok in _TOKENS.findall(text):
            if tok[0].isalnum() or tok[0] == "_":
                out.append(self._word(tok, src, tgt, starts_sentence))
                starts_sentence = False
            else:
                out.append(tok)
                starts_sentence = starts_sentence or any(c in ".!?" for c in tok)
        return "".join(out)

    def _word(self, word: str, src: str, tgt: str, starts_sentence: bool) -> str:
        i = self._index[src].get(word.lower())
        if i is None or tgt not in self._rows[i]:
            return word  # unknown words (names, numbers) pass through
        as_written, out = self._rows[i][src], self._rows[i][tgt]
        if len(word) > 1 and word.isupper() and word != as_written:
            return out.upper()
        if word[0].isupper() and (starts_sentence or word != as_written):
            return out[0].upper() + out[1:]
        return out


class SeamlessTranslator:
    """SeamlessM4T (v1 or v2) text-to-text translation, loaded as transformers loads it.

    ``model``: a folder that ``save_pretrained`` wrote for the model and its processor
    (``config.json``, weights, tokenizer files), or a hub id (e.g.
    ``facebook/seamless-m4t-v2-large``): downloaded on a machine with internet, read from the
    local cache alone when ``HF_HUB_OFFLINE=1``. Tags are given to the model in their 639-2/T
    form, which is SeamlessM4T's code for the languages the dubs paper uses.
    """

    _CLASSES = {"seamless_m4t": "SeamlessM4TForTextToText", "seamless_m4t_v2": "SeamlessM4Tv2ForTextToText"}
    HINT = ("give a folder that transformers' save_pretrained wrote for a SeamlessM4T (v1 or v2) model and its "
            "processor, or a hub id such as facebook/seamless-m4t-v2-large (downloaded with internet; with "
            "HF_HUB_OFFLINE=1 read from the local cache)")

    def __init__(self, model: str | os.PathLike, device: str = "cpu", max_new_tokens: int = 256):
        source = pretrained_source(model, "SeamlessM4T model", self.HINT, stage=STAGE)
        transformers = optional_import("transformers", "SeamlessM4T translator", "pip install 'scav[extract]'",
                                       stage=STAGE)
        config = from_pretrained(transformers.AutoConfig, source, "SeamlessM4T config", self.HINT, stage=STAGE)
        cls = self._CLASSES.get(getattr(config, "model_type", None))
        if cls is None:
            raise StageError(STAGE, f"{source} holds a {config.model_type!r} model, not SeamlessM4T "
                                    f"({', '.join(self._CLASSES)})")
        self.processor = from_pretrained(transformers.AutoProcessor, source, "SeamlessM4T processor", self.HINT,
                                         stage=STAGE)
        self.model = from_pretrained(getattr(transformers, cls), source, "SeamlessM4T model", self.HINT,
                                     stage=STAGE).to(device).eval()
        self.name = f"seamless:{Path(source).name if Path(source).exists() else source}"
        self.device, self.max_new_tokens = device, max_new_tokens

    def supports_target(self, language: str) -> bool:
        try:
            tag = language_tag(language)
        except ValueError:
            return False
        vocab = self.processor.tokenizer.get_vocab()
        return f"__{tag}__" in vocab

    def translate(self, text: str, source: str, target: str) -> str:
        import torch

        try:
            src, tgt = language_tag(source), language_tag(target)
        except ValueError as e:
            raise StageError(STAGE, str(e)) from None
        if not text.strip():
            return text
        inputs = self.processor(text=text, src_lang=src, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, tgt_lang=tgt, max_new_tokens=self.max_new_tokens)
        ids = out[0] if isinstance(out, torch.Tensor) else out.sequences[0]
        return self.processor.decode(ids, skip_special_tokens=True)


Seamless = SeamlessTranslator  # the name the design notes use
