import pytest

LAMBDAS = (0.0018, 0.0067, 0.013, 0.0483)
SCALE_WEIGHTS = {"equal": [0.33, 0.33, 0.34], "s1 emphasis": [0.5, 0.3, 0.2], "s2 emphasis": [0.3, 0.4, 0.3],
                 "s3 emphasis": [0.2, 0.3, 0.5]}


def _trial(label=None, lmbda=0.0067, seed=0, epochs=4, study="scale_weights", objective="hierarchical", **spec):
    config = {"objective": objective, "lmbda": lmbda, "seed": seed, "epochs": epochs, "study": study}
    if label is not None:
        config["label"] = label
    config.update(spec.pop("config", {}))
    return {"config": config, **spec}


def _scale_weight_trials(seeds=(0,), lambdas=LAMBDAS, offsets=None, noise=0.0, **spec):
    """The scale-weights study: four labeled configurations; s3 emphasis needs 10 % less rate by default."""
    offsets = offsets or {"s3 emphasis": {"rate_factor": 0.9}}
    out = []
    for label, weights in SCALE_WEIGHTS.items():
        for lmbda in lambdas:
            for seed in seeds:
                out.append(_trial(label, lmbda, seed, config={"scale_weights": weights}, noise=noise,
                                 **offsets.get(label, {}), **spec))
    return out


@pytest.fixture
def storage(tmp_path):
    return tmp_path / "results"


@pytest.fixture
def trial():
    """trial(label, lmbda, seed, epochs, study, objective, config={...}, **write_experiment_dir options)."""
    return _trial


@pytest.fixture
def scale_weight_trials():
    return _scale_weight_trials


@pytest.fixture(autouse=True, scope="session")
def _reference_cache(tmp_path_factory):
    """Reference codec points go to a per-session cache (never ~/.cache); computed once for the whole session."""
    import os

    from hpcm_tune.reference import CACHE_ENV, reference_points

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("hpcm_tune_cache"))
    # The synthetic experiments name no data, so they were evaluated on the default 'samples': warm the cache
    # once here (a few seconds), as a real user's cache is after the first analysis.
    reference_points()
    yield os.environ[CACHE_ENV]
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old
