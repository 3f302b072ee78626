"""hpcm_tune.analysis.formatting: the one rule that makes a study name part of a file name."""

import pytest

from hpcm_tune.analysis import formatting as fmt


@pytest.mark.parametrize(("name", "slug"), [
    ("scale_weights", "scale_weights"),
    ("gamma.v2-b", "gamma.v2-b"),  # letters, digits, '.', '_' and '-' stay as they are
    ("a b", "a_b"),
    ("a  /&b", "a_b"),  # a run of other characters is one '_'
    ("gamma & λ_1 #2 ~50% Δ−†", "gamma__1_2_50"),  # non-ASCII is replaced too; none at either end
    ("  x  ", "x"),
    ("", "study"),
    ("λ", "study"),
    ("___", "study"),
])
def test_file_slug_keeps_portable_characters_and_never_gives_an_empty_name(name, slug):
    assert fmt.file_slug(name) == slug


def test_file_slug_names_its_fallback():
    assert fmt.file_slug("§§", empty="search") == "search"
    assert fmt.file_slug(3) == "3"
