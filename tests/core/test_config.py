"""ManagerConfig defaults, resolution, JSON round trip, and errors raised before touching the model."""

import math

import pytest
import torch
from support.helpers import tiny_model
from transformers import VipLlavaConfig, VipLlavaForConditionalGeneration

from llava_manager import ManagerConfig, apply_manager, get_managers, has_manager
from llava_manager.families.llava_onevision import onevision_0_5b_config


def test_paper_defaults_on_the_real_shape():
    with torch.device("meta"):
        from transformers import LlavaOnevisionForConditionalGeneration

        model = LlavaOnevisionForConditionalGeneration(onevision_0_5b_config())
    apply_manager(model)
    managers = get_managers(model)
    assert [m.layer_idx for m in managers] == [0, 4, 8, 12, 16, 20]
    assert all(m.vision_layers == tuple(range(14, 27)) for m in managers)
    assert sum(m.weight.numel() for m in managers) == 69_888 == 6 * 13 * 896


def test_resolution_rules():
    c = ManagerConfig()
    assert (c.interval, c.start, c.vision_layers, c.manage, c.jitter) == (4, 0, "top_half", "both", 0.02)
    assert c.resolve_inject_layers(24) == (0, 4, 8, 12, 16, 20)
    assert ManagerConfig(interval=1).resolve_inject_layers(5) == (0, 1, 2, 3, 4)
    assert ManagerConfig(start=2, interval=5).resolve_inject_layers(24) == (2, 7, 12, 17, 22)
    assert ManagerConfig(inject_layers=[9, 3]).resolve_inject_layers(24) == (3, 9)
    for f in (26, 25, 7, 1):
        top = ManagerConfig().resolve_vision_layers(f)
        assert top == tuple(range(f - math.ceil(f / 2) + 1, f + 1))
        assert ManagerConfig(vision_layers="all").resolve_vision_layers(f) == tuple(range(1, f + 1))
    assert ManagerConfig(vision_layers="bottom_half").resolve_vision_layers(26) == tuple(range(1, 14))
    assert ManagerConfig(vision_layers=[20, 3]).resolve_vision_layers(26) == (3, 20)


def test_json_round_trip(tmp_path):
    c = ManagerConfig(interval=2, start=1, vision_layers=[1, 2], manage="base", jitter=0.1)
    c.to_json_file(tmp_path / "c.json")
    assert ManagerConfig.from_json_file(tmp_path / "c.json") == c
    assert ManagerConfig.from_dict(c.to_dict()) == c
    with pytest.warns(UserWarning, match="unknown keys"):
        assert ManagerConfig.from_dict({**c.to_dict(), "future_knob": 1}) == c


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(interval=0), "interval must be an integer >= 1"),
        (dict(interval=2.5), "interval must be an integer >= 1"),
        (dict(start=-1), "start must be an integer >= 0"),
        (dict(inject_layers=[]), "inject_layers must not be empty"),
        (dict(inject_layers=[1, 1]), r"inject_layers repeats \[1\]"),
        (dict(inject_layers=[-2]), "inject_layers must hold indices >= 0"),
        (dict(vision_layers=[]), "vision_layers must not be empty"),
        (dict(vision_layers=[0, 2]), "vision_layers must hold indices >= 1"),
        (dict(vision_layers=[3, 3]), r"vision_layers repeats \[3\]"),
        (dict(vision_layers="top"), "vision_layers must be one of"),
        (dict(manage="grid"), "manage must be one of"),
        (dict(jitter=1.5), r"jitter must be a number in \[0, 1\)"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ManagerConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(interval=9), "interval=9 is larger than the LLM's 8 decoder layers; allowed: 1 .. 8"),
        (dict(start=8), r"start=8 out of range: allowed 0 .. 7"),
        (dict(inject_layers=[2, 8]), r"inject_layers \[8\] out of range.*0 .. 7"),
        (dict(vision_layers=[5, 7]), r"vision_layers \[7\] out of range.*allowed indices are 1 .. 6"),
    ],
)
def test_out_of_range_for_the_model_leaves_it_untouched(kwargs, message):
    model = tiny_model()
    before = {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        apply_manager(model, **kwargs)
    assert not has_manager(model) and {n for n, _ in model.named_parameters()} == before
    assert "get_image_features" not in model.model.__dict__


def test_a_family_the_table_does_not_know_is_refused_with_the_supported_classes():
    cfg = VipLlavaConfig(
        text_config=dict(
            model_type="llama",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=6,
            num_attention_heads=4,
            image_size=28,
            patch_size=7,
        ),
        image_token_index=63,
    )
    expected = (
        "LlavaForConditionalGeneration, LlavaModel, LlavaNextForConditionalGeneration, LlavaNextModel, "
        "LlavaNextVideoForConditionalGeneration, LlavaNextVideoModel, LlavaOnevisionForConditionalGeneration, "
        "LlavaOnevisionModel, Qwen2VLForConditionalGeneration, Qwen2VLModel, Qwen2_5_VLForConditionalGeneration, "
        "Qwen2_5_VLModel, Qwen3VLForConditionalGeneration, Qwen3VLModel, Qwen3VLMoeForConditionalGeneration, "
        "Qwen3VLMoeModel, Qwen3_5ForConditionalGeneration, Qwen3_5Model, Qwen3_5MoeForConditionalGeneration, "
        "Qwen3_5MoeModel, InternVLForConditionalGeneration, InternVLModel, Gemma3ForConditionalGeneration, "
        "Gemma3Model, Mistral3ForConditionalGeneration, Mistral3Model"
    )
    with pytest.raises(TypeError) as error:
        apply_manager(VipLlavaForConditionalGeneration(cfg))
    assert f"supports {expected}; got VipLlavaForConditionalGeneration" in str(error.value)
    with pytest.raises(TypeError, match="got Linear"):
        apply_manager(torch.nn.Linear(2, 2))


def test_applying_twice_is_refused():
    model = apply_manager(tiny_model())
    with pytest.raises(RuntimeError, match="already has managers"):
        apply_manager(model)
    assert len(get_managers(model)) == 2


def test_concatenated_feature_layers_are_refused():
    model = tiny_model(vision_feature_layer=[-2, -1])
    with pytest.raises(
        ValueError,
        match=r"needs a single vision feature layer \(an int or a list of one\), got "
        r"vision_feature_layer=\[-2, -1\]",
    ):
        apply_manager(model)


@pytest.mark.parametrize("listed", [[-1], [-2], [4]])
def test_a_list_of_one_feature_layer_is_that_layer(listed):
    """transformers concatenates the listed layers before the projector: one listed layer is that layer, so the
    model, its managers and their terms are those of the int."""
    from support.helpers import make_batch, randomize

    single = apply_manager(tiny_model(vision_feature_layer=listed[0]))
    as_list = apply_manager(tiny_model(vision_feature_layer=listed))
    assert [m.vision_layers for m in get_managers(as_list)] == [m.vision_layers for m in get_managers(single)]
    randomize(single)
    as_list.load_state_dict(single.state_dict())
    batch = make_batch(single, [(40, 80), (28, 28)])
    with torch.no_grad():
        assert torch.equal(as_list(**batch).logits, single(**batch).logits)


def test_apply_on_peft_model_is_refused():
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="before get_peft_model"):
        apply_manager(peft_model)


def test_keyword_overrides_on_a_config():
    model = apply_manager(tiny_model(), ManagerConfig(vision_layers="all"), interval=2)
    managers = get_managers(model)
    assert [m.layer_idx for m in managers] == [0, 2, 4, 6]
    assert managers[0].vision_layers == (1, 2, 3, 4, 5, 6)
