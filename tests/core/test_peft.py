"""LoRA on the LLM with the managers trainable through peft's `modules_to_save`, saved and reloaded."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from support.helpers import make_batch, randomize, tiny_model

from llava_manager import apply_manager, get_managers

LORA = dict(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", modules_to_save=["managers"])


def test_lora_keeps_managers_trainable_and_used(tmp_path):
    model = apply_manager(tiny_model())
    batch = make_batch(model, [(40, 80), (28, 28)])
    peft_model = get_peft_model(model, LoraConfig(**LORA))
    managers = get_managers(peft_model)
    assert len(managers) == 2 and all(m.weight.requires_grad for m in managers)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert not any("vision_tower" in n or "embed_tokens" in n for n in trainable)
    assert sum(".managers." in n for n in trainable) == 2  # the trainable copies only

    peft_model.train()
    loss = peft_model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in managers)

    # Non-zero managers and LoRA, then a save / reload round trip through peft's own files.
    randomize(peft_model)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
        base_only = tiny_model()(**batch).logits
    assert (expected - base_only).abs().max() > 1e-3
    peft_model.save_pretrained(tmp_path)

    reloaded = PeftModel.from_pretrained(apply_manager(tiny_model()), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)
    for a, b in zip(get_managers(reloaded), get_managers(peft_model)):
        assert torch.equal(a.weight, b.weight)


def test_disabled_adapters_fall_back_to_original_managers():
    model = apply_manager(tiny_model())
    batch = make_batch(model, [(40, 80)])
    peft_model = get_peft_model(model, LoraConfig(**LORA)).eval()
    randomize(peft_model)
    with torch.no_grad():
        with_adapter = peft_model(**batch).logits
        with peft_model.disable_adapter():
            assert all(m.weight.abs().sum() == 0 for m in get_managers(peft_model))
            without = peft_model(**batch).logits
        base = tiny_model()(**batch).logits
    assert torch.equal(without, base)
    assert not torch.equal(with_adapter, base)
