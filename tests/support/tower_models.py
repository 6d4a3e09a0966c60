"""Tiny ManagerTower / BridgeTower configs built in code, shared by the tower tests."""

from __future__ import annotations

import torch


def tiny_tower_kwargs(**overrides) -> dict:
    """Text: 4 layers of width 32; vision: 4 layers of width 64 (a multiple of 64, as BridgeTower needs), 32 px
    images of 16 px patches (5 tokens); 2 cross-modal layers of width 32."""
    kwargs = dict(
        text_config=dict(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        vision_config=dict(hidden_size=64, num_hidden_layers=4, patch_size=16, image_size=32),
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_tower_config(**overrides):
    """A `ManagerTowerConfig` with N = 3 managed layers, not the number of cross-modal layers (2)."""
    from llava_manager.tower import ManagerTowerConfig

    overrides.setdefault("num_managed_layers", 3)
    return ManagerTowerConfig(**tiny_tower_kwargs(**overrides))


def tiny_inputs(batch: int = 2, length: int = 7, seed: int = 0) -> dict:
    """Random ids (the second sample padded after 5 tokens) and pixels for the tiny configs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(batch, 3, 32, 32, generator=g)}
