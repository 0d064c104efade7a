import pytest
import torch


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
