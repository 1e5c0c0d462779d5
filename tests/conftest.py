import matplotlib
import pytest
import torch

import circuits
import tasks

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def induction():
    return tasks.get("induction")


@pytest.fixture(scope="session")
def induction_model(induction):
    """The default induction model (shipped as package data: read in about a second)."""
    return induction.default_model()


@pytest.fixture
def random_model():
    return circuits.models.toy(n_layers=2, n_heads=4, d_model=32, d_vocab=64, n_ctx=64, seed=1)


@pytest.fixture(scope="session")
def bundled_model():
    """SmolLM2-135M-Instruct (`circuits.models.bundled()`), loaded once per test session (~15 s).
    Tests that use it are marked ``slow``; never move it to another device or mutate its weights."""
    return circuits.models.bundled()



@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster than two contending ones (restored afterwards). A module uses it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
