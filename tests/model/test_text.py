import pytest
import torch

from model.text import TextEncoder, TextHead


def test_text_head_is_normalised() -> None:
    out = TextHead(384, 16)(torch.randn(3, 384))
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.slow
def test_offline_minilm_ranks_paraphrases_closest() -> None:
    enc = TextEncoder()
    v = enc.encode(["a red circle moving left", "a blue square rotating", "a red disc moving to the left"])
    assert v.shape == (3, 384)
    sims = v @ v.T
    assert sims[0, 2] > sims[0, 1]
