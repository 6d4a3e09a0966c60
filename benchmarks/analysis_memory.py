"""Peak memory of the attention analysis at the 0.5B-SI shape (random weights), one 384 x 384 sample, CPU.

    python benchmarks/analysis_memory.py

The analysis reduces each layer's attention inside its hook; for comparison the script then runs one forward with
`output_attentions=True`, which keeps every layer's attention until the forward returns. Peak resident memory is
read after each step (it only grows), so the second figure is only meaningful when it exceeds the first.
"""

from __future__ import annotations

import resource

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, LlavaOnevisionImageProcessorPil

from llava_manager import apply_manager
from llava_manager.analysis import collect
from llava_manager.analysis.inputs import encode
from llava_manager.families.llava_onevision import ONEVISION_PINPOINTS, onevision_0_5b_config
from llava_manager.processing.processors import build_processor
from llava_manager.synthetic.data import tiny_processor


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    tokenizer = tiny_processor().tokenizer  # a toy vocabulary is enough: the cost is in the image tokens
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 384, "width": 384}, image_grid_pinpoints=ONEVISION_PINPOINTS
    )
    processor = build_processor(image_processor, tokenizer, num_image_tokens=729, vision_feature_select_strategy="full")
    config = onevision_0_5b_config(
        image_token_index=processor.image_token_id, video_token_index=processor.video_token_id
    )
    torch.manual_seed(0)
    model = apply_manager(AutoModelForImageTextToText.from_config(config)).eval()
    samples = [(Image.new("RGB", (384, 384), (120, 30, 200)), "Describe the image in detail .")]
    inputs = encode(processor, *samples[0])
    tokens = inputs["input_ids"].shape[1]
    with torch.no_grad():
        model(**inputs)
    loaded = peak_gib()
    collect.attention_statistics(model, processor, samples)
    analysis = peak_gib()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    every_layer = peak_gib()
    per_layer = out.attentions[0].numel() * out.attentions[0].element_size() / 2**30
    print(f"0.5B-SI shape, fp32, one 384 x 384 image, {tokens} tokens; one layer's attention: {per_layer:.3f} GiB")
    print(f"peak RSS after a plain forward:                      {loaded:.2f} GiB")
    print(f"peak RSS after the attention analysis (per layer):    {analysis:.2f} GiB (+{analysis - loaded:.2f})")
    print(f"peak RSS after output_attentions=True (all 24 layers): {every_layer:.2f} GiB (+{every_layer - loaded:.2f})")


if __name__ == "__main__":
    main()
