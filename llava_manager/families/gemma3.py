"""Gemma 3 (`Gemma3ForConditionalGeneration`): a SigLIP tower (`vision_tower.vision_model.encoder.layers`) whose
`post_layernorm` output feeds the LLM through the multimodal projector (4 x 4 average pooling to 256 tokens, an
RMSNorm, a matmul). Every aggregated layer goes through `post_layernorm` and the projector, so the feature layer's
term is the model's own image tokens. Each image, and each Pan & Scan crop, is its own group of 256 tokens; the
forward takes `token_type_ids` (1 at image tokens) for the bidirectional attention inside each image."""

from __future__ import annotations

from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Model, Gemma3Processor
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from .base import Family, GroupedFeatures, tiny_vision


def gemma3_4b_it_config(**overrides) -> Gemma3Config:
    """The shape of google/gemma-3-4b-it: SigLIP 1152 x 27 layers at 896 px (256 tokens per image), Gemma 3
    2560 x 34 layers (4.30B parameters). From its config.json (a copy on huggingface.co:
    mlx-community/gemma-3-4b-it-bf16); the text fields it leaves out are `Gemma3TextConfig`'s defaults."""
    text = dict(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        sliding_window=1024,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        vocab_size=262208,
        query_pre_attn_scalar=256,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=1152,
        image_size=896,
        intermediate_size=4304,
        num_attention_heads=16,
        num_hidden_layers=27,
        patch_size=14,
        vision_use_head=False,
    )
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=256,
        boi_token_index=255999,
        eoi_token_index=256000,
        image_token_index=262144,
        eos_token_id=[1, 106],
    )
    return Gemma3Config(**{**kwargs, **overrides})


def gemma3_tiny_config(num_text_layers=8, num_vision_layers=6, vocab_size=128, **overrides) -> Gemma3Config:
    """A Gemma 3 small enough for a unit test: text 32 x `num_text_layers` (sliding and global layers), SigLIP
    24 x `num_vision_layers`, 16 px images of 4 px patches pooled to 4 tokens.

    Scaled like the published model (2560 wide, 8 x 256 heads) where the tiny width changes how it behaves:
    - the attention scale is 1 / sqrt(head_dim) (`query_pre_attn_scalar` = `head_dim`, as 256 = 256 there): the
      default 256 with 8-wide heads, after Gemma 3's q / k norms, kept the logits within about +-0.5;
    - the sliding window covers the image and the question after it in every layer (1024 for 256-token images
      there): with 16, the answer's position saw at most one of the image's 4 tokens in the 7 sliding layers;
    - the text weights are drawn with std 1 / sqrt(hidden_size) (0.02 = 1 / sqrt(2560) there): Gemma scales the
      embeddings by sqrt(hidden_size) and normalises every block's output (post-norms), so at 0.02 and 32 wide the
      token embeddings (norm ~0.6) were a tenth of each block's random output (norm ~5.7) instead of its equal.
    Embedded default, held-out exact match, seeds 42 / 1: 0.61 / - before; 0.55 / - with the zero projector drawn
    at random (`training.train.init_zero_projector`); 0.78 / - with the attention scale too; 0.945 / 0.74 with the
    window; 0.975 / 0.995 with the init (this config)."""
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_text_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        sliding_window=64,
        initializer_range=32**-0.5,
    )
    vision = tiny_vision("siglip_vision_model", num_vision_layers, vision_use_head=False)
    vision.update(image_size=16, patch_size=4)
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=vocab_size - 3,
        eoi_token_index=vocab_size - 2,
        image_token_index=vocab_size - 1,
        tie_word_embeddings=True,
    )
    kwargs.update(overrides)
    return Gemma3Config(**kwargs)


class Gemma3Adapter(Family):
    name = "gemma3"
    title = "Gemma 3"
    model_class = Gemma3ForConditionalGeneration
    base_class = Gemma3Model
    config_class = Gemma3Config
    processor_class = Gemma3Processor
    image_processor_class = Gemma3ImageProcessorPil
    token_type_key = "token_type_ids"
    published = {"gemma-3-4b-it": ("google/gemma-3-4b-it", gemma3_4b_it_config)}

    def feature_layer(self, config, num_vision_layers: int) -> int:
        return num_vision_layers  # the tower's last_hidden_state (after post_layernorm)

    def image_features(self, inner, hidden, call, manage) -> GroupedFeatures:
        tower = inner.vision_tower
        norm = getattr(tower, "vision_model", tower).post_layernorm
        return [list(inner.multi_modal_projector(norm(layer))) for layer in hidden]

    def tiny_config(self, **overrides) -> Gemma3Config:
        return gemma3_tiny_config(**overrides)

    def token_inputs(self, config, input_ids):
        return {"token_type_ids": (input_ids == config.image_token_id).long()}
