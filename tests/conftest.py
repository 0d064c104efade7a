import os

import pytest
import torch

# Nothing downloads during the tests: loaders raise FileNotFoundError for a missing dataset (tests
# that exercise the download path unset it and monkeypatch torchvision's downloader).
os.environ["AVGK_OFFLINE"] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds or runs something end to end (tens of seconds); runs in CI")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tie_free_scores(n: int, c: int, scale: float = 1.0, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Random scores with distinct entries (a random permutation of a grid plus jitter)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randperm(n * c, generator=g).to(dtype).reshape(n, c) / (n * c)
    return (base - 0.5) * scale * 4


def random_targets(n: int, c: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=g)
