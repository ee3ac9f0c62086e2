"""Compact decode weights on the CPU: int4 copies of the LM's linear layers for one-token steps.

Decoding one token reads every weight once, so on a CPU its cost is memory traffic: 3.1 GB per
token for Qwen2.5-Coder-1.5B in bfloat16. PyTorch's own packed kernel
(`aten._weight_int4pack_mm_for_cpu`, asymmetric int4 in groups of 32 along the input) reads a
quarter of that. Measured here on 2 cores, one token through every layer and the head: 3.3x faster
than bfloat16 (docs/engine.md). But the same kernel is 5-7x *slower* than bfloat16's AMX matmuls for
a prefill chunk of 64-256 tokens, so each layer keeps both: the int4 copy serves calls of at most
`DECODE_ROWS` rows (decode steps, a few sessions batched), the bfloat16 weight everything larger
(prefill of feeds and fork prompts). The price is the int4 copy beside the full weights: +0.8 GB for
the 1.5B model.

Why groups of 32: the embedded GGUF is Q4_K_M, whose 4-bit sub-blocks are 32 weights with their own
scale and minimum; a min/max int4 grid over the same 32 weights stays close to the file's own values
(the Q6_K tensors lose their extra bits). The kernel costs the same at 32, 64 or 128 here.

The kernel always runs on bfloat16 activations, whatever the model's dtype: its float32 path is
14x slower (an 8960x1536 row: 17.1 ms against 1.2 ms on an AVX2-only CPU), so a float32 model (CPUs
without bfloat16 instructions) casts its decode rows to bfloat16 and back. (There the int4 copy would
win up to 32 rows, but a call's path then depends on how many rows it shares a forward with, and a
question's answer on what else was running: int4 stays for decode steps only, as with bfloat16.)

The packed copies are made once from the converted model and saved in the model cache (keyed by
torch version, since the packed layout is the kernel's own); later starts load them.

Prefill of a float32 model (`half_prefill`): on CPUs without bfloat16 instructions the prefill rows'
float32 matmuls ran at 70 GFLOPS on 2 AVX2 cores, where fbgemm's packed half-precision GEMM
(`quantized.linear_dynamic_fp16`: float16 weights, float32 arithmetic) runs at 110-120: one 8960x1536
projection at 256 rows 58 against 99 ms, at 64 rows 16 against 38 (docs/engine.md). Its weights are the
converted model's bfloat16 values, nearly all exact in float16, at half the float32 bytes; so those
layers keep the float16 copy and let the float32 weight go. Packing is not cacheable (the packed
layout is fbgemm's private one): about 18 s for the 1.5B model on 2 cores at every start, partly
paid back by loading such a model as its bfloat16 files (`dtype`, below).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

GROUP = 32  # input columns per scale/zero pair (the GGUF's Q4_K sub-block)
DECODE_ROWS = 4  # calls with at most this many rows use the int4 copy; measured: bfloat16 wins from ~8 rows up
ACTIVATIONS = torch.bfloat16  # the int4 kernel's fast path on every CPU measured (docs/engine.md)
PACKED_NAME = "int4-g{group}-torch{torch}.pt"

log = logging.getLogger(__name__)


def supported() -> bool:
    """Whether this torch has the CPU int4 kernels."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def half_supported() -> bool:
    """Whether this torch has fbgemm's packed float16 GEMM (x86 builds)."""
    return hasattr(torch.ops.quantized, "linear_prepack_fp16") and "fbgemm" in torch.backends.quantized.supported_engines


def quantize(weight: torch.Tensor, group: int = GROUP, rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed int4, scales_and_zeros) of a [out, in] weight: asymmetric min/max per `group` inputs.

    The kernel's convention: w = (q - 8) * scale + zero, with q in 0..15. Packed `rows` output rows
    at a time (the packing is row-separable), so a 150k-row head never needs a float32 copy whole.
    """
    packed, scales = [], []
    for start in range(0, weight.shape[0], rows):
        block = weight[start:start + rows].detach().float()
        grouped = block.reshape(block.shape[0], block.shape[1] // group, group)
        low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-8)
        codes = torch.round((grouped - low) / scale).clamp_(0, 15).to(torch.int32).reshape(block.shape)
        zero = low + 8 * scale
        scales.append(torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1))
        packed.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
    return torch.cat(packed), torch.cat(scales, dim=1).contiguous().to(weight.dtype)


class CompactLinear(nn.Module):
    """A linear layer with an int4 copy for decode steps and, for prefill, its full weight or (float32
    models, `to_half`) a packed float16 copy in its place."""

    def __init__(self, linear: nn.Linear, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group: int = GROUP) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared, never copied (tied heads stay tied)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(ACTIVATIONS), persistent=False)
        self.group = group
        self.half_weight: Any = None  # fbgemm's packed float16 weight and bias (`to_half`), in place of `weight`

    def to_half(self) -> None:
        """Prefill from a packed float16 copy of the weight (float32 or bfloat16: the values float16 holds),
        which is let go; the bias stays for the int4 rows."""
        bias = None if self.bias is None else self.bias.detach().float()
        self.half_weight = torch.ops.quantized.linear_prepack_fp16(self.weight.detach().float(), bias)
        self.weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > DECODE_ROWS:
            if self.half_weight is not None:
                flat = torch.ops.quantized.linear_dynamic_fp16(x.reshape(rows, self.in_features).contiguous(), self.half_weight)
                return flat.reshape(*x.shape[:-1], self.out_features)
            return nn.functional.linear(x, self.weight, self.bias)
        flat = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(rows, self.in_features).to(ACTIVATIONS).contiguous(), self.packed,
                                                          self.group, self.scales_and_zeros).to(x.dtype)
        if self.bias is not None:
            flat = flat + self.bias
        return flat.reshape(*x.shape[:-1], self.out_features)


def _targets(model: nn.Module, group: int) -> list[tuple[str, nn.Linear]]:
    """Every nn.Linear whose input width divides into groups (all of a decoder's projections and the head)."""
    return [(name, module) for name, module in model.named_modules()
            if type(module) is nn.Linear and module.in_features % group == 0 and module.out_features % 8 == 0]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def compact_decode_weights(model: nn.Module, cache_dir: Path | None, group: int = GROUP, half_prefill: bool = False,
                           dtype: torch.dtype | None = None) -> int:
    """Give every linear layer of `model` an int4 decode copy, loaded from `cache_dir` when it was
    made before (else made now and saved there); returns how many layers were converted. With
    `half_prefill`, a float32 model's layers also prefill from packed float16 copies (see the module's
    docstring); a weight shared with the input embeddings (a tied head) keeps its float32 form.

    `dtype`: what the model is to compute in, when its weights were loaded narrower (a float32 model
    loaded as its bfloat16 files, `load_language_model`): the packed copies are made from those weights
    (the same values), and then the rest of the model is widened to `dtype`. So a float32 model never
    holds its linear layers in float32 when the copies replace them: half the peak memory of loading."""
    dtype = dtype or model.dtype
    if supported():
        with torch.inference_mode():
            count = _attach_copies(model, cache_dir, group, dtype)
        # After _attach_copies returned: the replaced nn.Linear modules are gone, so each weight goes as
        # soon as its float16 copy exists.
        if half_prefill and dtype == torch.float32 and half_supported():
            _prefill_from_half(model)
    else:
        log.warning("this torch has no CPU int4 kernels; decoding from full weights")
        count = 0
    if model.dtype != dtype:
        _widen(model, model.dtype, dtype)  # outside inference mode: parameters stay ordinary tensors
    return count


def _attach_copies(model: nn.Module, cache_dir: Path | None, group: int, dtype: torch.dtype) -> int:
    """The int4 copies of `compact_decode_weights`: each linear layer replaced by a CompactLinear."""
    path = cache_dir / PACKED_NAME.format(group=group, torch=torch.__version__.replace("+", "_")) if cache_dir else None
    saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as error:  # noqa: BLE001 - a broken cache file is remade, never fatal
            log.warning("ignoring unreadable %s (%s); packing again", path, error)
    targets = _targets(model, group)
    model.livesum_decode_rows = DECODE_ROWS  # the LM service batches at most this many decode rows
    # Prompt-lookup drafts must give the answer plain steps give. A step that checks drafts attends over
    # several rows at once, which rounds a little differently; in a float32 model the cast to bfloat16
    # for the int4 kernel can turn that into a near-tie going the other way (seen: "10% of the total
    # bill." against "10."). So drafts only where the model computes in the kernel's own dtype.
    model.livesum_draft_rows = DECODE_ROWS if dtype == ACTIVATIONS else 0
    made: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, linear in targets:
        pair = saved.get(name)
        if pair is None or pair[0].shape[0] != linear.out_features:
            pair = quantize(linear.weight, group)
        made[name] = pair
        _replace(model, name, CompactLinear(linear, *pair, group=group))
    if path is not None and made.keys() != saved.keys():
        partial = path.with_name(path.name + ".partial")
        torch.save(made, partial)
        partial.replace(path)
    return len(made)


def _widen(model: nn.Module, loaded: torch.dtype, dtype: torch.dtype) -> None:
    """Every parameter and buffer of `model` in the `loaded` dtype in `dtype` instead, but the int4
    kernel's own scales (which stay in its activation dtype); others (rotary frequencies kept in float32)
    as they are. In place: a parameter shared by two modules (a tied head) stays shared."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.dtype == loaded:
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.dtype == loaded and not (isinstance(module, CompactLinear) and name == "scales_and_zeros"):
                setattr(module, name, buffer.to(dtype))


def _prefill_from_half(model: nn.Module) -> None:
    """Packed float16 copies in place of the float32 weights of `model`'s CompactLinear layers, but for a
    weight shared with the input embeddings (a tied head: its prefill rows are one per sequence, which
    the int4 copy serves). Packed on the torch threads, each weight let go as soon as its copy exists,
    so the memory falls as it goes."""
    embeddings = model.get_input_embeddings()
    shared = embeddings.weight if embeddings is not None else None
    layers = [module for module in model.modules() if isinstance(module, CompactLinear) and module.weight is not shared]
    with ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="livesum-pack") as pool:
        list(pool.map(CompactLinear.to_half, layers))
