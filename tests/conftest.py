import os

import pytest
import torch

# Triton kernels are checked on the CPU under the interpreter; the variable must be set before any kernel is
# defined, i.e. before decaf_kernels._triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402


def ring(n: int, dtype=torch.float64) -> torch.Tensor:
    W = torch.zeros(n, n, dtype=dtype)
    for i in range(n):
        for j in (i - 1, i, i + 1):
            W[i, j % n] += 1.0 / 3.0
    return W


def complete(n: int, dtype=torch.float64) -> torch.Tensor:
    return torch.full((n, n), 1.0 / n, dtype=dtype)


def star_asymmetric(n: int, dtype=torch.float64) -> torch.Tensor:
    """Row-stochastic, not symmetric: the hub averages everyone, leaves keep 0.7 and take 0.3 from the hub."""
    W = torch.zeros(n, n, dtype=dtype)
    W[0] = 1.0 / n
    for i in range(1, n):
        W[i, i], W[i, 0] = 0.7, 0.3
    return W


GRAPHS = {"ring": ring, "complete": complete, "star": star_asymmetric}


def save_tiny_bert(path, tokenizer, seed: int = 1234, dropout: float = 0.1) -> str:
    """A 2-layer BERT (hidden size 32, hidden and attention dropout ``dropout``) with random weights drawn under
    ``seed``, saved with ``tokenizer`` to ``path`` like any local transformers model (decaf_lora's tests: nothing
    is downloaded)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    BertModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def oracle(B, A, W, rank):
    """float64 LAPACK (numpy) truncated SVD of every M_i: returns M (.., d, k), M_r, singular values."""
    Bn = B.detach().to(torch.float64).cpu().numpy()
    An = A.detach().to(torch.float64).cpu().numpy()
    Wn = W.detach().to(torch.float64).cpu().numpy()
    M = np.einsum("ij,j...dr,j...rk->i...dk", Wn, Bn, An)
    U, S, Vh = np.linalg.svd(M, full_matrices=False)
    Mr = (U[..., :rank] * S[..., None, :rank]) @ Vh[..., :rank, :]
    return M, Mr, S


def optimality_error(B_new, A_new, M, Mr) -> float:
    """Eckart-Young: || B'A' - M_r ||_F / || M ||_F over all agents and layers."""
    P = B_new.detach().to(torch.float64).cpu().numpy() @ A_new.detach().to(torch.float64).cpu().numpy()
    den = np.linalg.norm(M)
    return float(np.linalg.norm(P - Mr) / (den if den > 0 else 1.0))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
