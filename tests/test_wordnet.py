"""WordNet's database files: synonyms are the lemmas that share a synset, in WordNet's format
(hex word counts, adjective markers, multiword lemmas); a missing or corrupt file is one line."""

import os

import pytest

from jaxmia.data import wordnet
from jaxmia.errors import UserError
from tests.toys import write_toy_wordnet

SYNSETS = {
    "noun": [["movie", "film", "motion_picture"], ["film", "celluloid"], ["Plot", "secret_plan"],
             ["lonely"]],  # a synset of one lemma gives it no synonym
    "adj": [["great(a)", "outstanding"], ["awful", "dreadful(p)", "terrible(ip)"]],
    "verb": [["plot", "plan"]],
    # Twelve lemmas: the count is written 0c, as WordNet writes it (hex).
    "adv": [[f"w{i}" for i in range(12)]],
}


def test_synonyms_share_a_synset(tmp_path):
    syn = wordnet.synonyms(write_toy_wordnet(tmp_path / "wn", SYNSETS))
    # 'film' is in two synsets: both give synonyms; multiword lemmas get spaces.
    assert syn["film"] == ("celluloid", "motion picture", "movie")
    assert syn["movie"] == ("film", "motion picture")
    assert syn["celluloid"] == ("film",)
    # Lower case, across parts of speech: the noun 'Plot' and the verb 'plot' are one lemma.
    assert syn["plot"] == ("plan", "secret plan")
    # Adjective markers (a), (p), (ip) are not part of the lemma.
    assert syn["great"] == ("outstanding",)
    assert syn["awful"] == ("dreadful", "terrible")
    assert syn["w0"] == tuple(sorted(f"w{i}" for i in range(1, 12)))
    assert "lonely" not in syn


def test_missing_file_is_one_line(tmp_path):
    folder = write_toy_wordnet(tmp_path / "wn", SYNSETS)
    os.remove(os.path.join(folder, "data.verb"))
    with pytest.raises(UserError, match=r"WordNet: data.verb is not in .*wordnet-base"):
        wordnet.synonyms(folder)
    with pytest.raises(UserError, match="data.noun is not in /nonexistent"):
        wordnet.check("/nonexistent")


@pytest.mark.parametrize("line", [
    "00001740 00 a xx great 0 | a count that is not hex",
    "00001740 00 a 03 great 0 | fewer words than the count",
    "nonsense",
    "00001740 00 q 01 great 0 | an unknown synset type",
])
def test_corrupt_line_is_one_line_naming_it(tmp_path, line):
    folder = write_toy_wordnet(tmp_path / "wn", SYNSETS)
    with open(os.path.join(folder, "data.adj"), "a") as f:
        f.write(line + "\n")
    with pytest.raises(UserError, match=r"WordNet: data.adj line 5 is not a synset line"):
        wordnet.synonyms(folder)


def test_unreadable_bytes_are_one_line(tmp_path):
    folder = write_toy_wordnet(tmp_path / "wn", SYNSETS)
    with open(os.path.join(folder, "data.adv"), "ab") as f:
        f.write(b"\xff\xfe\n")
    with pytest.raises(UserError, match="WordNet: .* does not read"):
        wordnet.synonyms(folder)
