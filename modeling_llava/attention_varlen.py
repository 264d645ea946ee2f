"""`attn_implementation="torch_varlen"`: attention that reads padding-free rows without a quadratic mask.

A padding-free row (`processing.padding_free`) holds the samples of a batch end to end, with `position_ids` restarting
at each sample. With sdpa or eager attention the block-diagonal mask that keeps samples apart costs
`total_length**2`, not the sum of the samples' squares: a batch of 16 samples of ~1,000 tokens does 16 times the
attention work of its samples. This attention is sdpa everywhere, except on a padding-free row, where each sample
attends only to itself, through PyTorch's variable-length flash kernel (`torch.nn.attention.varlen.varlen_attn`,
CUDA) or one causal SDPA call per sample (elsewhere). flash-attn is not needed. `modeling_llava/__init__.py`
registers it with transformers, beside the Auto classes.

`varlen_attn`'s keyword arguments changed across PyTorch releases (2.10 takes `is_causal` and no `scale`; `scale` and
`window_size` came next, `enable_gqa` later still), so the call is built from the signature of the installed one
(`VarlenSupport`), and the per-sample SDPA path serves where no causal form is found.
"""

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # older PyTorch: the per-sample SDPA path below serves everywhere
    varlen_attn = None

VARLEN_ATTENTION = "torch_varlen"


@dataclass(frozen=True)
class VarlenSupport:
    """What one PyTorch's `varlen_attn` accepts, read off its signature."""

    causal: dict  # the keyword that makes it causal: `window_size=(-1, 0)` (newer) or `is_causal=True` (2.10)
    scale: bool  # takes `scale=`; else the query is scaled beforehand
    enable_gqa: bool  # takes `enable_gqa=`; else the key/value heads are repeated beforehand


@functools.lru_cache
def varlen_support(function: Callable) -> VarlenSupport | None:
    """`function`'s keyword arguments, or `None` when it has no causal form (then the per-sample SDPA path serves)."""
    parameters = inspect.signature(function).parameters
    if "window_size" in parameters:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in parameters:
        causal = {"is_causal": True}
    else:
        return None
    return VarlenSupport(causal, scale="scale" in parameters, enable_gqa="enable_gqa" in parameters)


def varlen_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    max_length: int,
    scaling: float | None,
    function: Callable,
) -> torch.Tensor:
    """Causal attention within each sample of one padding-free row, through `function` (a `varlen_attn`).

    Args:
        query (`torch.Tensor` of shape `(1, num_heads, tokens, head_dim)`):
            Queries; `key` and `value` have `num_key_value_heads` heads.
        cu_seq_lens (`torch.Tensor` of shape `(num_samples + 1,)`):
            Sample boundaries, int32, on the query's device.

    Returns:
        The attention output of shape `(1, tokens, num_heads, head_dim)`.
    """
    support = varlen_support(function)
    keywords = dict(support.causal)
    if support.enable_gqa:
        keywords["enable_gqa"] = True
    else:
        # Head h of the query reads key/value head h // repeats, as SDPA's enable_gqa lays them out.
        key, value = (repeat_kv(tensor, query.shape[1] // tensor.shape[1]) for tensor in (key, value))
    if support.scale:
        keywords["scale"] = scaling
    elif scaling is not None:
        query = query * (scaling * query.shape[-1] ** 0.5)  # the kernel's own scale is 1/sqrt(head_dim)
    # (1, heads, tokens, head_dim) -> (tokens, heads, head_dim), the layout of the variable-length kernel.
    query, key, value = (tensor[0].transpose(0, 1) for tensor in (query, key, value))
    output = function(query, key, value, cu_seq_lens, cu_seq_lens, max_length, max_length, **keywords)
    return output[None]


def varlen_mask(
    batch_size: int, q_length: int, kv_length: int, *args, attention_mask: torch.Tensor | None = None, **kwargs
) -> torch.Tensor | None:
    """sdpa's mask, except for one square row without padding, where `varlen_attention_forward` needs none."""
    if batch_size == 1 and q_length == kv_length and attention_mask is None:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, *args, attention_mask=attention_mask, **kwargs)


def sequence_boundaries(position_ids: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
    """`cu_seq_lens` of shape `(num_samples + 1,)` from a row's `position_ids` (a sample starts where they restart)."""
    if position_ids is None:
        return torch.tensor([0, length], dtype=torch.int32, device=device)
    starts = torch.nonzero(torch.diff(position_ids[0], prepend=position_ids[0, :1]) != 1).flatten()
    return torch.cat([starts, starts.new_tensor([length])]).to(torch.int32)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each sample of a padding-free row; sdpa for every other call.

    Args:
        query (`torch.Tensor` of shape `(batch_size, num_heads, q_length, head_dim)`):
            Queries; `key` and `value` have `num_key_value_heads` heads.
        cu_seq_lens_q (`torch.Tensor` of shape `(num_samples + 1,)`, *optional*):
            Sample boundaries of the row, as `LlavaPaddingFreeCollator` writes them; derived from `position_ids` when
            missing.

    Returns:
        The attention output of shape `(batch_size, q_length, num_heads, head_dim)`, and `None` for the weights.
    """
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # Only a causal, unpadded single row without cache offset can be a padding-free batch (see `varlen_mask`); the
    # vision tower, padded batches and decoding steps are plain sdpa.
    if attention_mask is not None or not is_causal or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout > 0 or getattr(module, "sliding_window", None) or kwargs.get("softcap") is not None:
        raise ValueError(
            f"{VARLEN_ATTENTION} attention has no dropout, sliding window or softcap; this layer of "
            f"{type(module).__name__} uses one. Train it with attn_implementation='sdpa' instead."
        )
    if cu_seq_lens_q is None:
        cu_seq_lens_q = sequence_boundaries(kwargs.get("position_ids"), query.shape[2], query.device)
    if (
        varlen_attn is None
        or varlen_support(varlen_attn) is None
        or not query.is_cuda
        or query.dtype not in (torch.float16, torch.bfloat16)
    ):
        # The flash kernel needs CUDA and half precision. Elsewhere: one causal SDPA call per sample, 4-D and with the
        # key/value heads repeated, the only form PyTorch's CPU flash kernel takes (else SDPA runs its slow math path).
        key, value = (repeat_kv(tensor, query.shape[1] // tensor.shape[1]) for tensor in (key, value))
        bounds = cu_seq_lens_q.tolist()
        samples = [
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=True, scale=scaling
            )
            for start, end in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return torch.cat(samples, dim=2).transpose(1, 2), None

    if max_length_q is None:
        max_length_q = int(cu_seq_lens_q.diff().max())
    cu_seq_lens_q = cu_seq_lens_q.to(query.device, torch.int32)
    return varlen_forward(query, key, value, cu_seq_lens_q, max_length_q, scaling, varlen_attn), None


__all__ = [
    "VARLEN_ATTENTION",
    "VarlenSupport",
    "sequence_boundaries",
    "varlen_attention_forward",
    "varlen_forward",
    "varlen_mask",
    "varlen_support",
]
