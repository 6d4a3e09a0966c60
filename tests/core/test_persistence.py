"""save_manager / load_manager, save_pretrained / from_pretrained, strict loading, no pickle."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.helpers import make_batch, randomize, tiny_model
from transformers import LlavaOnevisionForConditionalGeneration

import llava_manager
from llava_manager import ManagerConfig, apply_manager, get_managers, has_manager, load_manager, save_manager


def trained_model(**config):
    model = apply_manager(tiny_model(), ManagerConfig(**config))
    randomize(model)
    return model


def test_save_manager_writes_only_config_and_weights_and_loads_exactly(tmp_path):
    model = trained_model(interval=3, vision_layers=[2, 4, 6], manage="grids", jitter=0.05)
    batch = make_batch(model, [(40, 80), (100, 110)])
    with torch.no_grad():
        expected = model(**batch).logits
    save_manager(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manager_config.json", "manager_model.safetensors"]
    state = load_file(tmp_path / "manager_model.safetensors")
    assert sorted(state) == ["managers.0.weight", "managers.1.weight", "managers.2.weight"]
    saved = json.loads((tmp_path / "manager_config.json").read_text())
    assert saved["manager_config"]["manage"] == "grids" and saved["model"]["inject_layers"] == [0, 3, 6]

    loaded = load_manager(tiny_model(), tmp_path)
    assert llava_manager.manager_config(loaded) == llava_manager.manager_config(model)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)


def test_save_pretrained_round_trip_through_from_pretrained(tmp_path):
    model = trained_model()
    batch = make_batch(model, [(40, 80)])
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = llava_manager.from_pretrained(tmp_path)
    assert isinstance(loaded, LlavaOnevisionForConditionalGeneration) and has_manager(loaded)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)
    # the same keyword arguments as transformers: dtype
    bf16 = llava_manager.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(m.weight.dtype == torch.bfloat16 for m in get_managers(bf16))
    torch.testing.assert_close(
        get_managers(bf16)[0].weight.float(), get_managers(model)[0].weight, rtol=1e-2, atol=1e-2
    )
    # saving the loaded model again keeps it patched
    loaded.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(llava_manager.from_pretrained(tmp_path / "again")(**batch).logits, expected)


def test_sharded_checkpoint_round_trip(tmp_path):
    model = trained_model()
    batch = make_batch(model, [(40, 80)])
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    with torch.no_grad():
        assert torch.equal(llava_manager.from_pretrained(tmp_path)(**batch).logits, expected)


def test_plain_directory_loads_unpatched(tmp_path):
    base = tiny_model()
    base.save_pretrained(tmp_path)
    loaded = llava_manager.from_pretrained(tmp_path)
    assert type(loaded) is LlavaOnevisionForConditionalGeneration and not has_manager(loaded)
    batch = make_batch(base, [(40, 80)])
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, base(**batch).logits)


def test_patched_checkpoint_missing_manager_weights_is_an_error(tmp_path):
    model = trained_model()
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    del state["model.managers.1.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"managers\.1\.weight"):
        llava_manager.from_pretrained(tmp_path)


@pytest.mark.parametrize("change", ["drop", "add"])
def test_a_checkpoint_that_does_not_cover_the_model_is_an_error(tmp_path, change):
    """transformers would initialise a missing weight at random (or drop an unknown one) with only a warning."""
    tiny_model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    if change == "drop":
        key = next(k for k in state if k.endswith("layers.1.mlp.down_proj.weight"))
        del state[key]
        expected = r"missing \['model.language_model.layers.1.mlp.down_proj.weight'\]"
    else:
        state["extra.weight"] = torch.zeros(3)
        expected = r"unexpected \['extra.weight'\]"
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=expected):
        llava_manager.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "model_kwargs,message",
    [
        (dict(num_text_layers=6), "num_decoder_layers"),
        (dict(num_vision_layers=8), "vision_layers"),
    ],
)
def test_load_manager_into_a_different_model_is_refused_untouched(tmp_path, model_kwargs, message):
    save_manager(trained_model(), tmp_path)
    other = tiny_model(**model_kwargs)
    with pytest.raises(ValueError, match=message):
        load_manager(other, tmp_path)
    assert not has_manager(other)


def test_load_manager_hidden_size_mismatch(tmp_path):
    save_manager(trained_model(), tmp_path)
    cfg = json.loads((tmp_path / "manager_config.json").read_text())
    cfg["model"]["text_hidden_size"] = 64
    (tmp_path / "manager_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="text_hidden_size: saved 64, this model 32"):
        load_manager(tiny_model(), tmp_path)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_load_manager_rejects_bad_weights_before_touching(tmp_path, damage):
    save_manager(trained_model(), tmp_path)
    path = tmp_path / "manager_model.safetensors"
    state = load_file(path)
    if damage == "missing":
        del state["managers.1.weight"]
        expected = r"missing \['managers.1.weight'\]"
    elif damage == "extra":
        state["managers.9.weight"] = torch.zeros(3, 32)
        expected = r"unexpected \['managers.9.weight'\]"
    else:
        state["managers.0.weight"] = torch.zeros(3, 16)
        expected = r"managers.0.weight has shape \(3, 16\), expected \(3, 32\)"
    save_file(state, path)
    target = tiny_model()
    with pytest.raises(ValueError, match=expected):
        load_manager(target, tmp_path)
    assert not has_manager(target)


def test_load_manager_into_patched_model_is_refused(tmp_path):
    save_manager(trained_model(), tmp_path)
    with pytest.raises(RuntimeError, match="already has managers"):
        load_manager(apply_manager(tiny_model()), tmp_path)
