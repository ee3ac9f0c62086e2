"""Compact decode weights: int4 copies of the linear layers for one-token steps, full weights for prefill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, Qwen2Config

from livesum.llm import compact
from livesum.llm.compact import CompactLinear, compact_decode_weights, quantize
from livesum.models import TORCH_DEFAULT_DTYPE

pytestmark = pytest.mark.skipif(not compact.supported(), reason="this torch has no CPU int4 kernels")


def tiny_qwen(dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def test_int4_groups_reproduce_the_weight_within_their_step() -> None:
    torch.manual_seed(0)
    weight = (torch.randn(96, 128) * 0.05).to(torch.bfloat16)
    packed, scales_and_zeros = quantize(weight)
    eye = torch.eye(128, dtype=torch.bfloat16)  # x = I: the kernel returns the dequantised weight, transposed
    dequantised = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, compact.GROUP, scales_and_zeros).T.float()
    step = (weight.float().reshape(96, -1, compact.GROUP).amax(-1) - weight.float().reshape(96, -1, compact.GROUP).amin(-1)) / 15
    error = (dequantised - weight.float()).abs().reshape(96, -1, compact.GROUP).amax(-1)
    assert torch.all(error <= step * 0.6 + 1e-3)  # the nearest of 16 levels, give or take bf16's rounding of scale and zero


@torch.inference_mode()
def test_decode_rows_use_the_int4_copy_and_prefill_the_full_weight() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 64, bias=True).to(torch.bfloat16)
    layer = CompactLinear(linear, *quantize(linear.weight))
    one = torch.randn(1, 1, 128, dtype=torch.bfloat16)
    chunk = torch.randn(1, compact.DECODE_ROWS + 1, 128, dtype=torch.bfloat16)
    assert torch.equal(layer(chunk), linear(chunk))  # prefill: exactly the full layer
    close = layer(one)
    assert not torch.equal(close, linear(one))  # decode: the int4 copy ...
    exact = linear(one).float()
    assert (close.float() - exact).norm() / exact.norm() < 0.1  # ... close to it (16 levels a group: ~6% for uniform weights)
    assert layer.weight is linear.weight and layer.bias is linear.bias  # shared, not copied


@torch.inference_mode()
def test_a_float32_layer_decodes_through_the_kernels_bfloat16_path() -> None:
    """CPUs without bfloat16 instructions run a float32 model; its decode rows still take the int4 copy
    (cast to bfloat16 and back: the kernel's float32 path is the slow one); prefill the full weight."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 64, bias=True)
    layer = CompactLinear(linear, *quantize(linear.weight))
    assert layer.scales_and_zeros.dtype == torch.bfloat16
    few = torch.randn(1, compact.DECODE_ROWS, 128)
    many = torch.randn(1, compact.DECODE_ROWS + 1, 128)
    decoded, exact = layer(few), linear(few)
    assert decoded.dtype == torch.float32 and not torch.equal(decoded, exact)
    assert (decoded - exact).norm() / exact.norm() < 0.1
    assert torch.equal(layer(many), linear(many))


def test_a_compacted_model_decodes_like_the_full_one_and_packs_once(tmp_path: Path) -> None:
    full, small = tiny_qwen(), tiny_qwen()
    assert compact_decode_weights(small, tmp_path) == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    packed = list(tmp_path.glob("int4-g32-*.pt"))
    assert len(packed) == 1
    assert small.lm_head.weight is small.model.embed_tokens.weight  # the tied head stays tied
    assert small.livesum_draft_rows == compact.DECODE_ROWS  # bfloat16 throughout: drafts give plain steps' answers
    in_float32 = tiny_qwen(torch.float32)
    compact_decode_weights(in_float32, tmp_path)
    assert in_float32.livesum_draft_rows == 0  # a float32 model rounds its int4 rows to bfloat16: no drafts
    ids = torch.randint(0, 512, (1, 24))
    with torch.inference_mode():
        torch.testing.assert_close(small(ids).logits, full(ids).logits)  # prefill rows: the full weights
        step = ids[:, -1:]
        decoded, exact = small(step).logits.float(), full(step).logits.float()
    assert not torch.equal(decoded, exact) and (decoded - exact).norm() / exact.norm() < 0.15  # one-token steps: int4
    again = tiny_qwen()
    stamp = packed[0].stat().st_mtime_ns
    compact_decode_weights(again, tmp_path)  # loaded from the cache, not packed again
    assert packed[0].stat().st_mtime_ns == stamp
    assert torch.equal(again.model.layers[0].mlp.up_proj.packed, small.model.layers[0].mlp.up_proj.packed)


half = pytest.mark.skipif(not compact.half_supported(), reason="this torch has no fbgemm float16 GEMM")


@half
@torch.inference_mode()
def test_a_float32_layer_can_prefill_from_a_packed_float16_copy_instead_of_its_weight() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 64, bias=True)
    reference = nn.Linear(128, 64, bias=True)
    reference.load_state_dict(linear.state_dict())
    layer = CompactLinear(linear, *quantize(linear.weight))
    few = torch.randn(2, compact.DECODE_ROWS // 2, 128)
    decoded = layer(few)
    layer.to_half()
    assert layer.weight is None and layer.bias is not None  # the float32 weight is gone; the int4 rows keep their bias
    assert torch.equal(layer(few), decoded)  # decode rows: the int4 copy, as before
    many = torch.randn(3, compact.DECODE_ROWS + 3, 128)
    prefilled, exact = layer(many), reference(many)
    assert prefilled.shape == exact.shape and prefilled.dtype == torch.float32
    assert not torch.equal(prefilled, exact)  # float16 weights ...
    assert (prefilled - exact).norm() / exact.norm() < 1e-3  # ... within float16's rounding of them


@half
def test_a_float32_model_prefills_from_float16_copies_and_its_tied_head_stays_whole(tmp_path: Path) -> None:
    full, small = tiny_qwen(torch.float32), tiny_qwen(torch.float32)
    compact_decode_weights(small, tmp_path, half_prefill=True)
    layers = [module for module in small.modules() if isinstance(module, CompactLinear)]
    assert small.lm_head in layers and small.lm_head.weight is small.model.embed_tokens.weight  # still tied, float32
    assert small.lm_head.half_weight is None
    assert all(layer.weight is None and layer.half_weight is not None for layer in layers if layer is not small.lm_head)
    ids = torch.randint(0, 512, (1, 24))
    with torch.inference_mode():
        prefilled, exact = small(ids).logits, full(ids).logits
    assert (prefilled - exact).norm() / exact.norm() < 1e-3
    in_bfloat16 = tiny_qwen()
    compact_decode_weights(in_bfloat16, tmp_path, half_prefill=True)  # bfloat16 models prefill on their own weights
    assert all(module.half_weight is None and module.weight is not None
               for module in in_bfloat16.modules() if isinstance(module, CompactLinear))


@half
def test_a_float32_model_loaded_from_its_bfloat16_files_is_the_one_widened_first(model_cache: Path, tmp_path: Path) -> None:
    """`load_language_model` loads a float32 model whose layers all get packed copies as its bfloat16
    files and widens only the rest (half the peak memory): the same model as loading float32 first."""
    from livesum.models import language_model_dir, load_language_model

    model, _ = load_language_model("smollm2-135m", model_cache, device="cpu", dtype="float32")
    assert {param.dtype for param in model.parameters()} == {torch.float32}
    assert model.livesum_draft_rows == 0  # a float32 model, as loaded the long way
    layers = [module for module in model.modules() if isinstance(module, CompactLinear)]
    assert all(layer.half_weight is not None for layer in layers if layer is not model.lm_head)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with TORCH_DEFAULT_DTYPE:
        widened = AutoModelForCausalLM.from_pretrained(language_model_dir("smollm2-135m", model_cache), dtype=torch.float32).eval()
    compact_decode_weights(widened, tmp_path, half_prefill=True)
    ids = torch.randint(0, 4096, (1, 40))
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, widened(ids).logits)  # prefill rows: the float16 copies
        assert torch.equal(model(ids[:, :1]).logits, widened(ids[:, :1]).logits)  # a decode row: the int4 copies
