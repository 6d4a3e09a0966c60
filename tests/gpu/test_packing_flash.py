"""On the GPU, in bf16: a padding-free (packed) batch gives the padded batch's per-token losses and gradients
(managers included) under flash-attention-2's varlen kernel, and under SDPA's block-diagonal mask. The CPU version,
with a flash-attention stand-in, is `tests/training/test_packing.py`.

Tolerance, stated: bf16 rounds differently when the same tokens are laid out in other rows (other matmul shapes), so
per-token losses (about 4 on this random model) may differ by 1e-2, each manager's gradient and all gradients
together by 3% of their norm; the same
packed rows without their restarting positions (the samples then attend to each other) must miss that tolerance."""

from __future__ import annotations

import pytest
import torch
from support.packing_cases import patched_model, per_token_losses, sample_slices, shapes_samples

from llava_manager.training.data import IGNORE_INDEX, Collator, SupervisedDataset, model_inputs
from llava_manager.training.packing import PackingCollator, pack_rows

pytestmark = pytest.mark.gpu

ATOL, RTOL = 1e-2, 0.0
GRAD_RTOL = 3e-2


def flash_available() -> str | None:
    """None, or why flash-attention-2 cannot run here."""
    if not torch.cuda.is_available():
        return "flash-attention-2 needs a CUDA GPU"
    try:
        import flash_attn  # noqa: F401
    except Exception as error:  # ImportError, or a build that does not match this torch / CUDA
        return f"flash_attn is not importable ({type(error).__name__}: {error}); pip install flash-attn"
    return None


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return shapes_samples(tmp_path_factory.mktemp("shapes"))


def bf16_model(family: str, attention: str, device):
    model, processor = patched_model(family, attention)
    return model.to(device, torch.bfloat16), processor


def step(model, batch, device, drop=()):
    """Per-token losses, the mean over scored tokens and every parameter's gradient of it."""
    model.zero_grad(set_to_none=True)
    inputs = {
        k: (v.to(device, torch.bfloat16) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
        for k, v in model_inputs(batch).items()
        if k not in drop
    }
    losses = per_token_losses(model(**inputs).logits, inputs["labels"])
    mean = losses.sum() / (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
    mean.backward()
    grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return losses.detach().cpu(), grads


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next"])
@pytest.mark.parametrize("attention", ["flash_attention_2", "sdpa"])
def test_packed_batches_equal_padded_ones(shapes, device, attention, family):
    if attention == "flash_attention_2" and (reason := flash_available()):
        pytest.skip(reason)
    model, processor = bf16_model(family, attention, device)
    folder, records = shapes
    dataset = SupervisedDataset(records, processor, folder, model_config=model.config)
    samples = [dataset[i] for i in range(len(records))]
    lengths = [len(s["input_ids"]) for s in samples]
    pad = processor.tokenizer.pad_token_id
    padded = Collator(pad, family)(samples)
    want, want_grads = step(model, padded, device)
    assert any(".managers." in n and g.abs().sum() > 0 for n, g in want_grads.items())  # the managers matter

    # one row holding everything; several rows, first-fit moving a later sample to an earlier row
    for budget in (sum(lengths), lengths[0] + lengths[2] + 8):
        rows = pack_rows(lengths, budget)
        packed = PackingCollator(pad, family, max_packed_tokens=budget)(samples)
        losses, grads = step(model, packed, device)
        worst = max(
            (losses[r, c : c + lengths[i] - 1] - want[i, : lengths[i] - 1]).abs().max().item()
            for i, (r, c) in sample_slices(rows, lengths).items()
        )
        print(f"budget {budget}: per-token losses off by at most {worst:.2e}")
        for i, (r, column) in sample_slices(rows, lengths).items():
            n = lengths[i]
            torch.testing.assert_close(
                losses[r, column : column + n - 1], want[i, : n - 1], rtol=RTOL, atol=ATOL, msg=f"sample {i}"
            )
        assert grads.keys() == want_grads.keys()
        # each manager's gradient, and all gradients together (some are zero but for rounding: a key bias's)
        names = [n for n in grads if ".managers." in n] + [list(grads)]
        for name in names:
            got, expected = (
                torch.cat([g[n].flatten() for n in name]) if isinstance(name, list) else g[name]
                for g in (grads, want_grads)
            )
            error = ((got - expected).norm() / expected.norm()).item()
            label = "all gradients" if isinstance(name, list) else name
            print(f"budget {budget}: {label} off by {error:.2%} of its norm")
            assert error <= GRAD_RTOL, f"{label}: gradient off by {error:.2%} of its norm (budget {budget})"

    # teeth: without the restarting positions the samples see each other, and the losses miss the tolerance
    if attention == "flash_attention_2":
        # transformers finds packed sequences from the positions alone; drop them and the varlen arguments
        drop = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    else:
        drop = ("position_ids",)
    packed = PackingCollator(pad, family, max_packed_tokens=sum(lengths))(samples)
    losses, _ = step(model, packed, device, drop=drop)
    [row] = pack_rows(lengths, sum(lengths))
    got, expected = [], []  # every scored position of the samples after the first (the first sees nothing else)
    column = lengths[row[0]]
    for i in row[1:]:
        n = lengths[i]
        scored = padded["labels"][i, 1:n] != IGNORE_INDEX
        got.append(losses[0, column : column + n - 1][scored])
        expected.append(want[i, : n - 1][scored])
        column += n
    off = (torch.cat(got) - torch.cat(expected)).abs().max()
    print(f"without the positions: per-token losses off by up to {off:.2e}")
    assert not torch.allclose(torch.cat(got), torch.cat(expected), rtol=RTOL, atol=ATOL)
