"""WordNet 3.0's synonyms, read from its database files (Princeton's ``data.noun``,
``data.verb``, ``data.adj``, ``data.adv``; the format of wndb(5)). Debian's ``wordnet-base``
installs them in ``/usr/share/wordnet``; nothing is downloaded at run time.

Two lemmas are synonyms when they share a synset (any sense, any part of speech), as EDA's
synonym replacement (Wei & Zou 2019) takes them from WordNet. Lemmas are lower-cased, their
underscores become spaces, and adjective markers such as ``(a)``, ``(p)``, ``(ip)`` are dropped.
"""

from __future__ import annotations

import collections
import functools
import os
import re

from jaxmia.errors import UserError

DEBIAN_DIR = "/usr/share/wordnet"
FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
INSTALL_HINT = ("install Debian's wordnet-base (apt-get install wordnet-base) or pass "
                "--wordnet_dir=<a folder holding WordNet 3.0's data.noun, data.verb, data.adj and "
                "data.adv>")
_MARKER = re.compile(r"\((a|p|ip)\)$")


def check(directory: str) -> None:
    """A one-line UserError where a database file is missing."""
    for name in FILES:
        if not os.path.isfile(os.path.join(directory, name)):
            raise UserError(f"WordNet: {name} is not in {directory}; {INSTALL_HINT}")


def _synsets(path: str):
    """The lemma lists of a data file's synsets."""
    name = os.path.basename(path)
    with open(path, encoding="utf-8", errors="strict") as f:
        for number, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():  # the license header
                continue
            fields = line.split(" ")
            try:
                if not (fields[0].isdigit() and fields[2] in "nvasr" and len(fields[2]) == 1):
                    raise ValueError
                count = int(fields[3], 16)
                words = fields[4:4 + 2 * count:2]
                lex_ids = fields[5:5 + 2 * count:2]  # one hex digit after each word
                if (count < 1 or len(lex_ids) != count or not fields[4 + 2 * count].isdigit()
                        or any(len(i) != 1 or i not in "0123456789abcdef" for i in lex_ids)):
                    raise ValueError
            except (IndexError, ValueError):
                raise UserError(f"WordNet: {name} line {number} is not a synset line of "
                                f"WordNet's database format; {INSTALL_HINT}") from None
            yield [_MARKER.sub("", w).replace("_", " ").lower() for w in words]


@functools.lru_cache(maxsize=2)
def synonyms(directory: str = DEBIAN_DIR) -> dict[str, tuple[str, ...]]:
    """Each lemma -> the other lemmas that share a synset with it, sorted (read once per
    folder; do not change the dict)."""
    check(directory)
    found = collections.defaultdict(set)
    try:
        for name in FILES:
            for lemmas in _synsets(os.path.join(directory, name)):
                for lemma in lemmas:
                    found[lemma].update(lemmas)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"WordNet: {directory} does not read ({type(e).__name__}: {e}); "
                        f"{INSTALL_HINT}") from None
    return {lemma: tuple(sorted(others - {lemma})) for lemma, others in found.items()
            if len(others) > 1}
