"""`torch_varlen` attention across PyTorch releases: the `varlen_attn` call is built from the installed signature.

PyTorch 2.10's `varlen_attn` takes `is_causal` and no `scale`, 2.11's takes `scale` and `window_size` but not
`enable_gqa`, later ones take all three. Each form is simulated here by a CPU stand-in with that signature, which
refuses what the real kernel of that release would refuse, and compared with attention computed head by head.
"""

import math

import pytest
import torch

from modeling_llava import attention_varlen
from modeling_llava.attention_varlen import (
    varlen_attention_forward,
    varlen_forward,
    varlen_support,
)

LENGTHS = [5, 9, 3]  # one padding-free row of three samples
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


def _per_sample(query, key, value, cu_seq_q, causal: bool, scale: float | None):
    """What the kernel computes, on (tokens, heads, head_dim) tensors whose heads already match."""
    if key.shape[1] != query.shape[1]:
        raise RuntimeError(f"varlen_attn without enable_gqa needs as many key heads as query heads: {key.shape[1]}")
    bounds = cu_seq_q.tolist()
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            *(tensor[start:end].transpose(0, 1) for tensor in (query, key, value)), is_causal=causal, scale=scale
        ).transpose(0, 1)
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(outputs)


def varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _per_sample(query, key, value, cu_seq_q, is_causal, None)


def varlen_2_11(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)
):
    return _per_sample(query, key, value, cu_seq_q, tuple(window_size) == (-1, 0), scale)


def varlen_newer(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False
):
    repeats = query.shape[1] // key.shape[1] if enable_gqa else 1
    key, value = (tensor.repeat_interleave(repeats, dim=1) for tensor in (key, value))
    return _per_sample(query, key, value, cu_seq_q, tuple(window_size) == (-1, 0), scale)


def varlen_without_causal(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k):
    raise AssertionError("a varlen_attn with no causal form must not be called")


def reference_attention(query, key, value, lengths: list[int], scale: float) -> torch.Tensor:
    """Head by head, sample by sample: softmax(q k^T * scale + causal mask) v, query head h reading key head h // 2."""
    output = torch.empty(1, query.shape[2], HEADS, HEAD_DIM)
    start = 0
    for length in lengths:
        end = start + length
        for head in range(HEADS):
            q, k, v = query[0, head, start:end], key[0, head // 2, start:end], value[0, head // 2, start:end]
            scores = q @ k.T * scale + torch.full((length, length), -math.inf).triu(1)
            output[0, start:end, head] = scores.softmax(-1) @ v
        start = end
    return output


@pytest.fixture
def row():
    generator = torch.Generator().manual_seed(0)
    tokens = sum(LENGTHS)
    query = torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator)
    key, value = (torch.randn(1, KV_HEADS, tokens, HEAD_DIM, generator=generator) for _ in range(2))
    cu_seq_lens = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    return query, key, value, cu_seq_lens


@pytest.mark.parametrize(
    ("function", "causal", "scale", "gqa"),
    [
        (varlen_2_10, {"is_causal": True}, False, False),
        (varlen_2_11, {"window_size": (-1, 0)}, True, False),
        (varlen_newer, {"window_size": (-1, 0)}, True, True),
    ],
)
def test_support_is_read_off_the_signature(function, causal, scale, gqa):
    support = varlen_support(function)
    assert (support.causal, support.scale, support.enable_gqa) == (causal, scale, gqa)


def test_a_varlen_attn_without_causal_form_is_not_used():
    assert varlen_support(varlen_without_causal) is None


@pytest.mark.parametrize("function", [varlen_2_10, varlen_2_11, varlen_newer])
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_every_signature_gives_the_reference_attention(row, function, scaling):
    query, key, value, cu_seq_lens = row
    output = varlen_forward(query, key, value, cu_seq_lens, max(LENGTHS), scaling, function)
    expected = reference_attention(query, key, value, LENGTHS, HEAD_DIM**-0.5 if scaling is None else scaling)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_unusable_varlen_attn_falls_back_to_per_sample_sdpa(row, monkeypatch):
    """A `varlen_attn` with no causal form is never called: the per-sample SDPA path answers."""
    query, key, value, cu_seq_lens = row
    monkeypatch.setattr(attention_varlen, "varlen_attn", varlen_without_causal)
    module = torch.nn.Module()
    output, _ = varlen_attention_forward(module, query, key, value, None, scaling=0.3, cu_seq_lens_q=cu_seq_lens)
    torch.testing.assert_close(output, reference_attention(query, key, value, LENGTHS, 0.3), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel needs CUDA")
def test_installed_kernel_gives_the_reference_attention(row):
    """The installed PyTorch's own `varlen_attn`, whatever its signature, on CUDA in bf16."""
    if attention_varlen.varlen_attn is None or varlen_support(attention_varlen.varlen_attn) is None:
        pytest.skip("this PyTorch has no usable varlen_attn")
    query, key, value, cu_seq_lens = (tensor.cuda() for tensor in row)
    output, _ = varlen_attention_forward(
        torch.nn.Module(), *(tensor.bfloat16() for tensor in (query, key, value)), None, cu_seq_lens_q=cu_seq_lens
    )
    expected = reference_attention(*(tensor.cpu() for tensor in (query, key, value)), LENGTHS, HEAD_DIM**-0.5)
    torch.testing.assert_close(output.float().cpu(), expected, atol=3e-2, rtol=3e-2)
