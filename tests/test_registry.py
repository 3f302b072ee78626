import pytest

from hpcm_tune.registry import Registry


def test_registered_names_resolve_and_unknown_names_list_valid_ones():
    registry: Registry[int] = Registry("schedule")
    registry.add("fixed", 1)

    @registry.register("cosine")
    def cosine():
        return 2

    assert registry.get("fixed") == 1
    assert registry.get("cosine") is cosine
    assert registry.names() == ("fixed", "cosine")
    assert "fixed" in registry and "linear" not in registry
    with pytest.raises(ValueError, match=r"unknown schedule 'linear'; valid: cosine, fixed"):
        registry.get("linear")


def test_duplicate_registration_is_refused():
    registry: Registry[int] = Registry("searcher")
    registry.add("optuna", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("optuna", 2)
