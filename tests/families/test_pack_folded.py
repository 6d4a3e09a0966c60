"""`families.base.pack_folded`: the packing of the aggregated layers computed once on row numbers and applied as one
gather where it only moves and drops rows (NeXT, OneVision without downsampling), the folded layers packed where it
mixes rows (OneVision's anyres_max_9 bilinear downsampling); both equal to the model's own packing of the layers."""

from __future__ import annotations

import pytest
import torch
from support.family_models import build_batch, family_model
from support.helpers import randomize

from llava_manager import apply_manager
from llava_manager.families.base import pack_folded

CHANNELS = 6


def moves_rows(crops, newline):
    """Reverses each image's rows, drops its first and puts a newline after every second row."""
    out = []
    for image in crops:
        rows = image.flatten(0, 1).flip(0)[1:]
        pieces = []
        for start in range(0, len(rows), 2):
            pieces += [rows[start : start + 2], newline[None]]
        out.append(torch.cat(pieces))
    return out


def mixes_rows(crops, newline):
    """Averages neighbouring rows (a linear map that is not a move)."""
    return [torch.cat([(image.flatten(0, 1)[1:] + image.flatten(0, 1)[:-1]) / 2, newline[None]]) for image in crops]


@pytest.mark.parametrize("pack", [moves_rows, mixes_rows])
def test_equals_packing_the_folded_layers(pack):
    torch.manual_seed(0)
    folded = torch.randn(5, 7, CHANNELS, requires_grad=True)
    num_crops = [3, 2]
    got = pack_folded(folded, num_crops, pack)
    expected = pack(list(torch.split(folded, num_crops)), folded.new_zeros(CHANNELS))
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    # gradients flow back to the folded layers through the gather as through the packing
    sum(g.square().sum() for g in got).backward()
    grad = folded.grad.clone()
    folded.grad = None
    sum(e.square().sum() for e in pack(list(torch.split(folded, num_crops)), folded.new_zeros(CHANNELS))).backward()
    assert torch.equal(grad, folded.grad)


def packed_channels(model, monkeypatch):
    """The channel counts of every tensor the model's `pack_image_features` packs during one forward."""
    seen = []
    original = type(model.model).pack_image_features

    def spy(self, image_features, *args, **kwargs):
        seen.append(image_features[0].shape[-1])
        return original(self, image_features, *args, **kwargs)

    monkeypatch.setattr(type(model.model), "pack_image_features", spy)
    return seen


@pytest.mark.parametrize(
    "family, image, gathered",
    [
        ("llava_next", (40, 80), True),
        ("llava_onevision", (40, 80), True),
        ("llava_onevision", (112, 112), False),  # 4 x 4 crops: anyres_max_9 downsamples, rows are mixed
    ],
)
def test_the_families_gather_the_layers_where_packing_moves_rows(family, image, gathered, monkeypatch):
    model = apply_manager(family_model(family))
    batch = build_batch(model, [{"image": image}])
    randomize(model)
    seen = packed_channels(model, monkeypatch)
    with torch.no_grad():
        model(**batch)
    hidden = model.config.text_config.hidden_size
    # the model packs its own feature layer (hidden channels); the managers' layers are packed only when gathered
    # cannot serve (layers x hidden channels); the row numbers and the probe are 1-channel packings
    assert hidden in seen
    assert any(c > hidden for c in seen) is not gathered
    assert 1 in seen
