"""Tiny random checkpoints of the non-LLaVA families, and of Pixtral-12B (a LLaVA model with a Pixtral tower and
Pixtral's processor), laid out like their published Hub repos, for the load / train / evaluate paths
(`write_published_vlm(directory, name)`; `PUBLISHED_VLM` lists the names and families).

What is written for each: config.json in the published layout (the published field names and token ids; only sizes
shrunk: 2 decoder layers of 32, 2 vision layers of 24, small patches), generation_config.json, the processor files
under their published names (preprocessor_config.json, processor_config.json where the repo has one,
chat_template.json or chat_template.jinja), and a tokenizer (tokenizer.json, tokenizer_config.json,
special_tokens_map.json; vocab.json / merges.txt for the Qwen tokenizers) whose special tokens sit at their REAL ids:
the vocabularies are padded with unreachable filler entries to the published sizes (Qwen 151,643 regular tokens,
Qwen3.5 248,044, Gemma 3 262,144, Tekken 131,072 with its 1000 control tokens), so the model's embedding has the
published number of rows (Qwen2-VL-7B 152,064, Qwen2.5-VL-3B and Qwen3-VL 151,936, Qwen3.5 248,320, InternVL3-1B
151,674, Gemma 3 262,208, Mistral-Small-3.1 and Pixtral-12B 131,072). Ordinary words get
made-up ids (a tiny BPE over the words the tests use, byte fallback for the rest); only the special tokens' ids are
the real ones. Everything is built offline in code; nothing is downloaded. The sizes are shrunk further for the
Qwen3.5 ones (4 decoder layers, so that one is full attention) and the MoE ones (4 experts).

Real vs reconstructed (sources: /tmp/published_vlm/fixtures.md of this work, its raw/ copies, and the package's
`families` configs; "memory" = written from knowledge of the published files, not checked against a stored copy):

- Qwen2-VL-7B-Instruct. preprocessor_config.json: the published file (raw copy of Qwen's initial commit, via
  royleibov/Qwen2-VL-7B-Instruct-ZipNN-Compressed and Qwen/Qwen2-VL-2B) with patch_size 14 -> 4 and min/max_pixels
  scaled to the tiny patch (3136 = 4 tokens of 28 px -> 256 = 4 tokens of 8 px; 12845056 -> 4096 = 64 tokens, kept
  small for speed). chat_template.json: the Qwen2-VL template text, verbatim from two stored code copies (a GRPO
  trainer, code index id 37175924; github shell-nlp/gpt_server tests/test_chat_template.py, with the
  `add_vision_id` guard); the published file's JSON wrapping is as transformers writes it. config.json: the
  flat layout of the Qwen2-VL / Qwen2.5-VL files (text fields at the top, `rope_scaling` {"type": "mrope"}), token
  ids as published (config of Qwen/Qwen2-VL-7B-Instruct copies: bos 151643, eos 151645, vision_start 151652,
  vision_end 151653, vision 151654, image 151655, video 151656), vocab 152064. generation_config.json: NOT found for
  Qwen2-VL; written as transformers derives it from the config (bos 151643, eos 151645) [reconstructed].
- Qwen2.5-VL-3B-Instruct. config.json and generation_config.json: the verbatim copies (github
  zhanggaojian/Qwen2.5-VL-3B-LLMQ_Samples) with sizes shrunk; the generation config keeps its sampling settings
  (do_sample true, temperature 1e-6, repetition_penalty 1.05, eos [151645, 151643]), which a greedy evaluation must
  override (do_sample) or honour (the repetition penalty: model.generate applies it). preprocessor_config.json: the
  Qwen2-VL values (HF pages of Qwen2.5-VL derivatives show them), processor_class Qwen2_5_VLProcessor,
  image_processor_type Qwen2VLImageProcessor [the official file itself was not seen]. chat_template.json: the
  Qwen2-VL template [assumed identical; the Qwen2.5-VL file was not found].
- Qwen3-VL-8B-Instruct. config.json: the verbatim copy (github nikolay-grudanov/Team_5_AI_Tutor) with sizes shrunk
  (nested text_config, `rope_scaling` with mrope_interleaved, vision_config model_type "qwen3_vl" as there).
  generation_config.json: eos [151645, 151643], pad 151643 (the 2B's as quoted in fixtures.md, Q3S); its sampling
  fields are left out [partly reconstructed]. preprocessor_config.json: NOT found: patch 16 / merge 2 / temporal 2
  from config.json, mean/std 0.5 and the size keys [memory, unverified]. chat_template.json: NOT found:
  RECONSTRUCTED as Qwen2-VL's ChatML with `<|vision_start|><|image_pad|><|vision_end|>` per image and no default
  system turn (the Qwen3 instruct templates have none), without the tool-calling branches of the real one.
- Qwen3-VL-30B-A3B-Instruct (qwen3_vl_moe). config.json: the verbatim copy quoted in a stored model report (code
  index id 62501178117; raw/Qwen3-VL-30B-A3B-Instruct/config.json) with sizes shrunk: 2 decoder layers, 4 experts of
  16 (2 active) instead of 128 of 768 (8 active), DeepStack from vision blocks [0, 1] instead of [8, 16, 24];
  `rope_scaling` with mrope_interleaved and vision_config model_type "qwen3_vl_moe" as there. generation_config.json,
  preprocessor_config.json, chat_template.json and the tokenizer: Qwen3-VL-8B's above (same tokenizer and
  processor class) [NOT found for the 30B-A3B: reconstructed].
- Qwen3.5-27B (qwen3_5) and Qwen3.5-35B-A3B (qwen3_5_moe). NO official Qwen/Qwen3.5-* file was found in the stores:
  everything is RECONSTRUCTED from transformers 5.25's Qwen3_5Config / Qwen3_5MoeConfig defaults (image 248056,
  video 248057, vision_start 248053, vision_end 248054, vocab 248320; 256 experts of 512 with 8 active and a
  shared expert of 512 for the MoE) and the layout of derivative config.json pages on huggingface.co
  (MooreThreads/MusaCoder-27B, NexVeridian/OmniCoder-9B-5bit: nested text_config with attn_output_gate,
  full_attention_interval 4, layer_types [linear x 3, full], head_dim 256, top-level eos 248046 / pad 248044, text
  bos / eos 248044). Shrunk to 4 decoder layers (three linear-attention, one full-attention), head_dim 32 with a
  quarter rotary (mrope_section [2, 1, 1]), linear heads 2 key / 4 value of 8, 4 experts of 16 (2 active) and a
  shared expert of 16 for the MoE. vision_config model_type "qwen3_5" / "qwen3_5_moe" (transformers renames this
  old name to *_vision); deepstack_visual_indexes [] for the MoE (a stored qwen3_5_moe_vision fixture, code index id
  71121325654). Tokens: Qwen3's added tokens moved up by 96,401 (<|endoftext|> 248044, <|im_start|> 248045,
  <|im_end|> 248046, ..., <|vision_start|> 248053, <|image_pad|> 248056, <|video_pad|> 248057, <tool_call> 248058,
  ..., <think> 248068, </think> 248069), which matches every id the configs give; the others are unverified.
  The tokenizer.json uses transformers' Qwen3.5 pre-tokenizer regex; tokenizer_config.json says Qwen2Tokenizer,
  which transformers overrides with Qwen3_5Tokenizer for these model types. generation_config.json (eos [248046,
  248044], pad 248044), the processor (Qwen3VLProcessor, transformers' mapping for both model types, with
  Qwen3-VL's processor files) and the chat template (Qwen3-VL's reconstructed one: the real Qwen3.5 template, with
  its thinking block, is not reproduced): reconstructed by analogy with Qwen3-VL.
- Mistral-Small-3.1-24B-Instruct-2503 (mistral3; transformers' own PixtralProcessor, which
  `llava_manager.families.pixtral` imports without torchvision, on the PIL image processor). config.json: the
  published file as a stored NVIDIA/TensorRT-LLM test quotes it
  (tests/unittest/_torch/modeling/test_modeling_mistral.py, code index id 66981536: image_token_index 10,
  multimodal_projector_bias false, gelu projector, spatial_merge_size 2, vision_feature_layer -1, torch_dtype
  bfloat16, transformers_version 4.50.0.dev0, the text and vision fields), the shape of
  `families.mistral3.mistral_small_3_1_config`, sizes shrunk: Mistral 2 layers of 32 (4 heads of 8, 2 KV), vocab
  131072; Pixtral 2 layers of 24 (3 heads of 8), patch 14 -> 4, image_size 1540 (110 patches a side) -> 32 (8). It
  names no tie_word_embeddings: transformers 5's Mistral3Config then says True, and keeps the checkpoint's own lm_head
  apart with a warning, as for the real one (the fixture's lm_head is its own too). Its transformers_version (< 5)
  also draws transformers' warning that the tokenizer has Mistral's old, incorrect split regex (the one written here
  is already the corrected one). chat_template.json: VERBATIM: the template text of transformers'
  tests/models/mistral3/test_processing_mistral3.py (code index id 702005480, given there to the processor of
  hf-internal-testing/Mistral-Small-3.1-24B-Instruct-2503-only-processor) and of a stored chat_template.json (code
  index id 37629121341), identical (default system turn "You are Mistral Small 3 ..." with `strftime_now`, `[IMG]` per
  image, no generation prompt); transformers' integration tests of the published repo patch that
  `strftime_now("%Y-%m-%d")` in its processor's template (test_modeling_mistral3.py, code index id 54820432189).
  processor_config.json: the keys of the published file as mlx-vlm's conversion test quotes it (Blaizzy/mlx-vlm
  mlx_vlm/tests/test_convert.py, code index id 19716133365: image / break / end tokens, patch_size 14,
  PixtralProcessor) plus spatial_merge_size 2 (the config's; transformers PR 37019 made the processor read it [memory,
  that the published file has it]); patch 14 -> 4. preprocessor_config.json: the 2503 file was NOT found; written as a
  stored verbatim Magistral-Small-2509 preprocessor_config.json (code index id 59544285694: the same
  PixtralImageProcessor, CLIP mean / std, resample 3, patch_size {14, 14}, longest_edge 1540) with patch 14 -> 4 and
  longest_edge 1540 -> 32, the tiny tower's image_size [partly reconstructed]. generation_config.json: bos 1, eos 2,
  pad 11 [memory; Mistral-Small-24B-Instruct-2501's file (github OpenMOSE/RWKV-LM-RLHF
  main/tokenizer/mistralsmall3/generation_config.json, code index id 5451230696) has bos 1 / eos 2, plus sampling
  fields]. Tokenizer: real ids for Tekken v7's 1000 control tokens (<unk> 0, <s> 1, </s> 2, [INST] 3, [/INST] 4,
  [AVAILABLE_TOOLS] 5 .. [TOOL_CALLS] 9, [IMG] 10, <pad> 11, [IMG_BREAK] 12, [IMG_END] 13, [PREFIX] 14 .. [SUFFIX] 16,
  [SYSTEM_PROMPT] 17, [/SYSTEM_PROMPT] 18, [TOOL_CONTENT] 19 as meta-pytorch/tokenizers src/tekken.cpp lists them,
  code index id 7517730328, and <SPECIAL_20> .. <SPECIAL_999> as it fills the rest), and for the 256 bytes (byte b at
  1000 + b), the split pattern and the 131,072 ids of Mistral-Small-24B-Instruct-2501's tekken.json
  (OpenMOSE/RWKV-LM-RLHF main/tokenizer/mistralsmall3/tekken.json, code index id 66408240780; the same v7 tokenizer);
  transformers' processor test confirms <s> 1, [IMG] 10, [IMG_BREAK] 12, [IMG_END] 13 and the bytes "\\n" 1010, " "
  1032, ":" 1058, "?" 1063. tokenizer.json's pipeline (the pattern's Split, ByteLevel, `<s>` prepended),
  tokenizer_config.json (LlamaTokenizerFast, add_bos_token, pad <pad>: transformers' integration test pads batches
  with the published processor) and special_tokens_map.json: RECONSTRUCTED [memory]. tekken.json, params.json and the
  consolidated weights of the repo are not written.
- InternVL3-1B-hf. config.json: the transformers 5 layout of `families.internvl.internvl3_1b_config` (top level and
  text part from hf-internal-testing/tiny-processor-internvl; vision defaults [TFD]), sizes shrunk, image_token_id
  151667, vocab 151674. Tokens: Qwen2.5's 151643..151664, then <img> 151665, </img> 151666, <IMG_CONTEXT> 151667
  (config), <quad>/</quad>/<ref>/</ref>/<box>/</box> 151668..151673 [<img>, </img> and these: memory, consistent
  with vocab 151674]; <video> is given id 151674, outside the model's vocabulary [reconstructed]. processor_config
  (image_seq_length 256 -> 4), preprocessor_config (GotOcr2, 448 px tiles -> 16, ImageNet mean/std, crop_to_patches
  false, min/max_patches 1/12) and chat_template.json (ChatML, `<IMG_CONTEXT>\\n` per image): NOT found:
  RECONSTRUCTED from transformers' InternVL processor and its docs.
- gemma-3-4b-it. config.json: the published layout (`families.gemma3.gemma3_4b_it_config`: boi 255999,
  eoi 256000, image 262144, eos [1, 106], mm_tokens_per_image 256 -> 4), vocab 262208, SigLIP 896 px / 14 ->
  16 px / 4. Tokens at real ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, <start_of_turn> 105,
  <end_of_turn> 106, "\\n" 107, "\\n\\n" 108, <start_of_image> 255999, <end_of_image> 256000, <image_soft_token>
  262144 [memory; 255999 / 256000 / 262144 confirmed by config.json]. chat_template.json (`{{ bos_token }}`,
  `<start_of_turn>user\\n`, `<start_of_image>` per image, `model` for the assistant), processor_config
  (image_seq_length 256 -> 4) and preprocessor_config.json (Gemma3ImageProcessor, 896 -> 16, mean/std 0.5,
  resample 2, pan and scan off): NOT found: RECONSTRUCTED [memory of the published files and transformers'
  Gemma3Processor].
- pixtral-12b (mistral-community/pixtral-12b; family llava: `LlavaForConditionalGeneration`, Pixtral tower, Mistral
  text model, `PixtralProcessor` with no 2 x 2 merge). NO stored copy of the repo's own files was found; what is
  written comes from these stored sources: a conversion script of Pixtral-12B-2409 to this layout (code index id
  14260955010, its repository not named by the index; by its content the HF conversion of that time: MistralConfig
  head_dim 128, hidden 5120, intermediate 14336, 40 layers, 32 heads, 8 KV heads, max_position_embeddings 1024000,
  rms_norm_eps 1e-5, rope_theta 1e9, no sliding window, untied, vocab 131072, bos 1 / eos 2; PixtralVisionConfig's
  defaults; image_token_index 10, vision_feature_layer -1, vision_feature_select_strategy "full", image_seq_length
  1; a PreTrainedTokenizerFast over the Tekken ranks with the control tokens first, a Split + ByteLevel
  pre-tokenizer with the converter's default pattern, a ByteLevel post-processor, model_input_names input_ids /
  attention_mask), transformers' `convert_tekken_tokenizer` (code
  index id 263359846, the same converter), transformers' tests/models/pixtral/test_processing_pixtral.py (code index
  id 236848584: with the published processor a 500x316 image gives 640 [IMG] = 32 x 20 patches of 16 px, no merge;
  "USER: [IMG]\\nWhat's ..." tokenises to 21510, 1058 (":"), 1032 (" "), 10, 10, 12, 10, 10, 13 ([IMG], [IMG_BREAK],
  [IMG_END]), 1010 ("\\n"), ..., 1063 ("?"): bytes at 1000 + b and NO <s> put first by the tokenizer; it sets a pad
  token before padding) and tests/models/llava/test_modeling_llava.py (code index id 53414208379: the Pixtral
  integration tests write "<s>[INST]...[/INST]" themselves and set pad_token_id = eos_token_id before a batch), and
  the package's `families.llava.pixtral_12b_config` (from config.json copies on huggingface.co).
  config.json: those values in the transformers 4.45 layout (nested configs with their non-default fields only,
  transformers_version 4.45.0.dev0, ignore_index, projector_hidden_act gelu, torch_dtype bfloat16) [layout: memory],
  sizes shrunk: Mistral 2 layers of 32 (4 heads of 8, 2 KV; num_attention_heads is written because 4 is not the
  default), vocab 131072; Pixtral 2 layers of 24 (3 heads of 8), patch 16 -> 8, image_size 1024 (64 patches a side)
  -> 32 (4). The tower's hidden_act is the package factory's "gelu" (PixtralVisionConfig's default) [unverified:
  Mistral-Small-3.1's published vision_config says "silu"]. generation_config.json: bos 1, eos 2, as transformers
  derives it from that config [reconstructed]. preprocessor_config.json: PixtralImageProcessor as transformers 4.45
  saved it (CLIP mean / std, resample 3, patch_size {16, 16}, longest_edge 1024: the processor test's 640 tokens)
  with patch 16 -> 8 and longest_edge 1024 -> 32, the tiny tower's image_size [key set: memory].
  processor_config.json: the keys the Mistral-Small-3.1 file has (above; written before transformers PR 37019, so
  without spatial_merge_size: the processor's default 1 applies), patch_size 16 -> 8 [reconstructed by analogy].
  chat_template.json: the template text of transformers' convert_mistral3_weights_to_hf.py (code index id 840818590,
  VERBATIM, there on one line): `<s>`, an optional system message folded into the last user turn, per user turn
  `[INST]` + `[IMG]` per image and a text part's "content" or "text" + `[/INST]`, no default system turn, no
  generation prompt. That it is Pixtral-12B's current file (the same text over several lines; every tag trims the
  whitespace before it, so the rendering is the same) is memory: the repo's first template (a verbatim multi-line copy
  labelled "Chat template for Pixtral-12B-Instruct", code index id 1966125856) read a text part's "content" only,
  which vLLM PR 11891 replaced for "text" parts (vllm examples/template_pixtral_hf.jinja, code index id 343905311);
  a stored variant with both keys (code index id 19840093899) differs elsewhere. Tokenizer: tokenizer.json as that
  converter writes it (the pattern verbatim from the two converters, ByteLevel post-processor: no <s>), with Tekken's
  control tokens at their real ids: mistral_common's Tekkenizer list (code index id 1404795171) up to [SUFFIX] 16,
  then <SPECIAL_17> .. <SPECIAL_999> [17-19: memory, that the v7 tokens [SYSTEM_PROMPT], [/SYSTEM_PROMPT],
  [TOOL_CONTENT] postdate the conversion], the 256 bytes at 1000 + b; the words' ids are made up (the Mistral
  fixture's BPE, without the converter's ignore_merges). tokenizer_config.json (PreTrainedTokenizerFast, bos <s>,
  eos </s>, unk <unk>, no pad token, no chat template) and special_tokens_map.json: RECONSTRUCTED [memory, consistent
  with the tests above]. tekken.json, params.json and the consolidated weights of mistralai/Pixtral-12B-2409 are not
  part of the repo and are not written.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from support.published import (
    MERGED_WORDS,
    QWEN2_PRETOKENIZE_REGEX,
    _bytes_to_unicode,
    merge_whole,
    tiny_vocab_and_merges,
)

# name -> (family, published repo)
PUBLISHED_VLM = {
    "Qwen2-VL-7B-Instruct": ("qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct"),
    "Qwen2.5-VL-3B-Instruct": ("qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct"),
    "Qwen3-VL-8B-Instruct": ("qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct"),
    "Qwen3-VL-30B-A3B-Instruct": ("qwen3_vl_moe", "Qwen/Qwen3-VL-30B-A3B-Instruct"),
    "Qwen3.5-27B": ("qwen3_5", "Qwen/Qwen3.5-27B"),
    "Qwen3.5-35B-A3B": ("qwen3_5_moe", "Qwen/Qwen3.5-35B-A3B"),
    "InternVL3-1B-hf": ("internvl", "OpenGVLab/InternVL3-1B-hf"),
    "gemma-3-4b-it": ("gemma3", "google/gemma-3-4b-it"),
    "Mistral-Small-3.1-24B-Instruct-2503": ("mistral3", "mistralai/Mistral-Small-3.1-24B-Instruct-2503"),
    "pixtral-12b": ("llava", "mistral-community/pixtral-12b"),
}
_FLAGS = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

# ---- chat templates ------------------------------------------------------------------------------------------------
# Qwen2-VL's chat_template.json (verbatim text; see the module doc).
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# RECONSTRUCTED (see the module doc): Qwen3-VL's ChatML without a default system turn and without tools.
QWEN3_VL_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# RECONSTRUCTED: InternVL-hf's ChatML with `<IMG_CONTEXT>\n` per image (the processor expands it into a tile).
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
# RECONSTRUCTED (memory of gemma-3-4b-it's chat_template.json).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n"
)

# Mistral-Small-3.1's chat_template.json (verbatim text; see the module doc): a default system turn with today's
# date (`strftime_now`), `[IMG]` per image, no generation prompt (the turn ends with `[/INST]`).
MISTRAL3_TEMPLATE = (
    "{%- set today = strftime_now(\"%Y-%m-%d\") %}\n"
    "{%- set default_system_message = \"You are Mistral Small 3, a Large Language Model (LLM) "
    "created by Mistral AI, a French startup headquartered in Paris.\\nYour knowledge base was last "
    "updated on 2023-10-01. The current date is \" + today + \".\\n\\nWhen you're not sure about some "
    "information, you say that you don't have the information and don't make up anything.\\nIf the "
    "user's question is not clear, ambiguous, or does not provide enough context for you to "
    "accurately answer the question, you do not try to answer it right away and you rather ask the "
    "user to clarify their request (e.g. \\\"What are some good restaurants around me?\\\" => \\\"Where "
    "are you?\\\" or \\\"When is the next flight to Tokyo\\\" => \\\"Where do you travel from?\\\")\" %}\n"
    "\n"
    "{{- bos_token }}\n"
    "\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- if messages[0] is string %}\n"
    "        {%- set system_message = messages[0]['content'] %}\n"
    "        {%- set loop_messages = messages[1:] %}\n"
    "    {%- else %} \n"
    "        {%- set system_message = messages[0]['content'][0]['text'] %}\n"
    "        {%- set loop_messages = messages[1:] %}\n"
    "    {%- endif %}\n"
    "{%- else %}\n"
    "    {%- set system_message = default_system_message %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}\n"
    "\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "            {%- if message['content'] is string %}\n"
    "            {{- '[INST]' + message['content'] + '[/INST]' }}\n"
    "            {%- else %}\n"
    "                    {{- '[INST]' }}\n"
    "                    {%- for block in message['content'] %}\n"
    "                            {%- if block['type'] == 'text' %}\n"
    "                                    {{- block['text'] }}\n"
    "                            {%- elif block['type'] == 'image' or block['type'] == 'image_url' %}\n"
    "                                    {{- '[IMG]' }}\n"
    "                                {%- else %}\n"
    "                                    {{- raise_exception('Only text and image blocks are "
    "supported in message content!') }}\n"
    "                                {%- endif %}\n"
    "                        {%- endfor %}\n"
    "                    {{- '[/INST]' }}\n"
    "                {%- endif %}\n"
    "    {%- elif message['role'] == 'system' %}\n"
    "        {{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {%- if message['content'] is string %}\n"
    "            {{- message['content'] + eos_token }}\n"
    "        {%- else %}\n"
    "            {{- message['content'][0]['text'] + eos_token }}\n"
    "        {%- endif %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user, system and assistant roles are supported!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}"
)

# Pixtral-12B's chat template (the text of transformers' convert_mistral3_weights_to_hf.py, on one line; see the module
# doc): `<s>`, then per user turn `[INST]` + its parts (`[IMG]` per image, a text part's "content" or "text") +
# `[/INST]`; no default system turn, no generation prompt. Every tag trims the whitespace before it.
PIXTRAL_TEMPLATE = (
    '{%- if messages[0]["role"] == "system" %}{%- set system_message = messages[0]["content"] %}'
    "{%- set loop_messages = messages[1:] %}\n{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{%- endif %}"
    '{%- if message["role"] == "user" %}{%- if loop.last and system_message is defined %}'
    '{{- "[INST]" + system_message + "\n\n" }}{%- else %}{{ "[INST]" }}{%- endif %}{%- endif %}'
    '{%- if message["content"] is not string %}{%- for chunk in message["content"] %}'
    '{%- if chunk["type"] == "text" %}{%- if "content" in chunk %}{{- chunk["content"] }}'
    '{%- elif "text" in chunk %}{{- chunk["text"] }}{%- endif %}'
    '{%- elif chunk["type"] == "image" %}{{- "[IMG]" }}{%- else %}{{- raise_exception("Unrecognized content type!") }}'
    '{%- endif %}{%- endfor %}{%- else %}{{- message["content"] }}{%- endif %}'
    '{%- if message["role"] == "user" %}{{- "[/INST]" }}{%- elif message["role"] == "assistant" %}{{- eos_token}}'
    '{%- else %}{{- raise_exception("Only user and assistant roles are supported, with the exception of an initial '
    'optional system message!") }}{%- endif %}{%- endfor %}'
)

# ---- special tokens ------------------------------------------------------------------------------------------------
QWEN2_VL_SPECIALS = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151646: "<|object_ref_start|>",
    151647: "<|object_ref_end|>",
    151648: "<|box_start|>",
    151649: "<|box_end|>",
    151650: "<|quad_start|>",
    151651: "<|quad_end|>",
    151652: "<|vision_start|>",
    151653: "<|vision_end|>",
    151654: "<|vision_pad|>",
    151655: "<|image_pad|>",
    151656: "<|video_pad|>",
}
# Qwen2.5's added non-special tokens (tools, fill-in-the-middle), then Qwen3's.
QWEN2_5_EXTRA = {
    151657: "<tool_call>",
    151658: "</tool_call>",
    151659: "<|fim_prefix|>",
    151660: "<|fim_middle|>",
    151661: "<|fim_suffix|>",
    151662: "<|fim_pad|>",
    151663: "<|repo_name|>",
    151664: "<|file_sep|>",
}
QWEN3_EXTRA = {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}
INTERNVL_EXTRA = {
    151665: "<img>",
    151666: "</img>",
    151667: "<IMG_CONTEXT>",
    151668: "<quad>",
    151669: "</quad>",
    151670: "<ref>",
    151671: "</ref>",
    151672: "<box>",
    151673: "</box>",
    151674: "<video>",
}
NOT_SPECIAL = set(QWEN2_5_EXTRA.values()) | set(QWEN3_EXTRA.values())
GEMMA3_SPECIALS = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    4: "<mask>",
    105: "<start_of_turn>",
    106: "<end_of_turn>",
    255999: "<start_of_image>",
    256000: "<end_of_image>",
    262144: "<image_soft_token>",
}
GEMMA3_REGULAR = 262144  # the SentencePiece vocabulary; <image_soft_token> is added after it
# Tekken v7 (Mistral-Small-3.1): the first 1000 ids are control tokens, these 20 named and the rest <SPECIAL_i>; the
# regular vocabulary follows, its 256 single bytes first, in byte order (byte b at id 1000 + b), 131,072 ids in all.
TEKKEN_SPECIALS = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
}
TEKKEN_NUM_SPECIAL = 1000
# Pixtral-12B's Tekken (tekken.json of 2024-09, converted with mistral_common of then): the same control tokens up to
# [SUFFIX] 16; [SYSTEM_PROMPT], [/SYSTEM_PROMPT] and [TOOL_CONTENT] came with v7, so 17-19 are fillers there.
PIXTRAL_SPECIALS = {i: token for i, token in TEKKEN_SPECIALS.items() if i <= 16}
PIXTRAL_SPECIALS.update({i: f"<SPECIAL_{i}>" for i in range(len(PIXTRAL_SPECIALS), TEKKEN_NUM_SPECIAL)})
TEKKEN_SPECIALS.update({i: f"<SPECIAL_{i}>" for i in range(len(TEKKEN_SPECIALS), TEKKEN_NUM_SPECIAL)})
TEKKEN_VOCAB = 131072
# The split pattern of tekken.json's config (Mistral-Small-24B-Instruct-2501's, the same v7 tokenizer).
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# The split pattern of Pixtral-12B's tokenizer.json: the default of the converter that wrote it (the Llama-3-like
# regex transformers later called Mistral's incorrect one; see the module doc).
PIXTRAL_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN3_FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")  # Qwen3VLProcessor, no default system turn
QWEN3_5_FAMILIES = ("qwen3_5", "qwen3_5_moe")
# Qwen3.5's 248,320-row vocabulary: RECONSTRUCTED as Qwen3's added tokens moved up by 248044 - 151643, which puts
# <|endoftext|> at 248044 (the derivatives' pad / text eos), <|im_end|> at 248046 (their eos), <|vision_start|>,
# <|vision_end|>, <|image_pad|>, <|video_pad|> at transformers' defaults 248053, 248054, 248056, 248057.
QWEN3_5_REGULAR = 248044
QWEN3_5_SHIFT = QWEN3_5_REGULAR - 151643


# ---- configs (published layout, sizes shrunk) ------------------------------------------------------------------------
def _qwen_flat_text(vocab_size: int, tie: bool) -> dict:
    """The text fields of the flat Qwen2-VL / Qwen2.5-VL config.json, shrunk (published 3B: 2048 x 36 layers)."""
    return {
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": tie,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},  # published [16, 24, 24] of head_dim 128
        "vocab_size": vocab_size,
    }


def config_dict(name: str) -> dict:
    family, _ = PUBLISHED_VLM[name]
    if family == "qwen2_vl":
        return {
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            **_qwen_flat_text(152064, tie=False),
            "transformers_version": "4.41.2",
            "vision_config": {  # published: only in_chans, model_type, spatial_patch_size (the rest: defaults)
                "depth": 2,
                "embed_dim": 24,
                "hidden_size": 32,
                "mlp_ratio": 2,
                "num_heads": 3,
                "in_chans": 3,
                "model_type": "qwen2_vl",
                "patch_size": 4,
                "spatial_patch_size": 4,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
        }
    if family == "qwen2_5_vl":
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            **_qwen_flat_text(151936, tie=True),
            "transformers_version": "4.41.2",
            "vision_config": {
                "depth": 2,
                "hidden_act": "silu",
                "hidden_size": 24,
                "intermediate_size": 48,
                "num_heads": 3,
                "in_chans": 3,
                "out_hidden_size": 32,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "spatial_patch_size": 4,
                "window_size": 16,  # published 112 = 4 merged tokens of 28 px; here 2 of 8 px
                "fullatt_block_indexes": [1],  # published [7, 15, 23, 31]
                "tokens_per_second": 2,
                "temporal_patch_size": 2,
            },
        }
    if family == "qwen3_vl":
        return {
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "image_token_id": 151655,
            "model_type": "qwen3_vl",
            "text_config": {
                "attention_bias": False,
                "attention_dropout": 0.0,
                "bos_token_id": 151643,
                "dtype": "bfloat16",
                "eos_token_id": 151645,
                "head_dim": 8,
                "hidden_act": "silu",
                "hidden_size": 32,
                "initializer_range": 0.02,
                "intermediate_size": 64,
                "max_position_embeddings": 262144,
                "model_type": "qwen3_vl_text",
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "num_key_value_heads": 2,
                "rms_norm_eps": 1e-06,
                "rope_scaling": {"mrope_interleaved": True, "mrope_section": [2, 1, 1], "rope_type": "default"},
                "rope_theta": 5000000,
                "use_cache": True,
                "vocab_size": 151936,
            },
            "tie_word_embeddings": False,
            "transformers_version": "4.57.0.dev0",
            "video_token_id": 151656,
            "vision_config": {
                "deepstack_visual_indexes": [0, 1],  # published [8, 16, 24] of 27 blocks
                "depth": 2,
                "hidden_act": "gelu_pytorch_tanh",
                "hidden_size": 24,
                "in_channels": 3,
                "initializer_range": 0.02,
                "intermediate_size": 48,
                "model_type": "qwen3_vl",
                "num_heads": 3,
                "num_position_embeddings": 16,  # published 2304 = 48 x 48
                "out_hidden_size": 32,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            "vision_end_token_id": 151653,
            "vision_start_token_id": 151652,
        }
    if family == "qwen3_vl_moe":
        return {
            "architectures": ["Qwen3VLMoeForConditionalGeneration"],
            "image_token_id": 151655,
            "model_type": "qwen3_vl_moe",
            "text_config": {
                "attention_bias": False,
                "attention_dropout": 0.0,
                "bos_token_id": 151643,
                "decoder_sparse_step": 1,
                "dtype": "bfloat16",
                "eos_token_id": 151645,
                "head_dim": 8,  # published 128
                "hidden_act": "silu",
                "hidden_size": 32,  # published 2048
                "initializer_range": 0.02,
                "intermediate_size": 64,  # published 6144
                "max_position_embeddings": 262144,
                "mlp_only_layers": [],
                "model_type": "qwen3_vl_moe_text",
                "moe_intermediate_size": 16,  # published 768
                "norm_topk_prob": True,
                "num_attention_heads": 4,  # published 32
                "num_experts": 4,  # published 128
                "num_experts_per_tok": 2,  # published 8
                "num_hidden_layers": 2,  # published 48
                "num_key_value_heads": 2,  # published 4
                "rms_norm_eps": 1e-06,
                "rope_scaling": {"mrope_interleaved": True, "mrope_section": [2, 1, 1], "rope_type": "default"},
                "rope_theta": 5000000,
                "use_cache": True,
                "vocab_size": 151936,
            },
            "tie_word_embeddings": False,
            "transformers_version": "4.57.0.dev0",
            "video_token_id": 151656,
            "vision_config": {
                "deepstack_visual_indexes": [0, 1],  # published [8, 16, 24] of 27 blocks
                "depth": 2,
                "hidden_act": "gelu_pytorch_tanh",
                "hidden_size": 24,
                "in_channels": 3,
                "initializer_range": 0.02,
                "intermediate_size": 48,
                "model_type": "qwen3_vl_moe",
                "num_heads": 3,
                "num_position_embeddings": 16,  # published 2304 = 48 x 48
                "out_hidden_size": 32,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            "vision_end_token_id": 151653,
            "vision_start_token_id": 151652,
        }
    if family in QWEN3_5_FAMILIES:
        moe = family == "qwen3_5_moe"
        text = {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "attn_output_gate": True,
            "bos_token_id": 248044,
            "dtype": "bfloat16",
            "eos_token_id": 248044,
            "full_attention_interval": 4,
            "head_dim": 32,  # published 256 (a quarter of it rotary)
            "hidden_act": "silu",
            "hidden_size": 32,
            "initializer_range": 0.02,
            "layer_types": ["linear_attention"] * 3 + ["full_attention"],  # published: this, 16 (27B) / 10 times
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 8,  # published 128
            "linear_num_key_heads": 2,  # published 16
            "linear_num_value_heads": 4,  # published 32 (defaults; 48 in some derivatives)
            "linear_value_head_dim": 8,  # published 128
            "mamba_ssm_dtype": "float32",
            "max_position_embeddings": 262144,
            "model_type": "qwen3_5_moe_text" if moe else "qwen3_5_text",
            "num_attention_heads": 4,
            "num_hidden_layers": 4,  # one full-attention layer after three linear-attention ones
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_parameters": {
                "mrope_interleaved": True,
                "mrope_section": [2, 1, 1],  # of the 8 rotary dimensions (a quarter of head_dim 32)
                "partial_rotary_factor": 0.25,
                "rope_theta": 10000000,
                "rope_type": "default",
            },
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": 248320,
        }
        if moe:  # transformers' defaults: 256 experts, 8 active, 512 wide, a shared expert of 512
            text.update(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                        shared_expert_intermediate_size=16)  # fmt: skip
        else:
            text["intermediate_size"] = 64
        vision = {
            "depth": 2,  # defaults: 27 blocks of 1152, 16 px patches, 2304 position embeddings
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 24,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": 48,
            "model_type": family,  # as transformers expects old checkpoints to name it (it renames it *_vision)
            "num_heads": 3,
            "num_position_embeddings": 16,
            "out_hidden_size": 32,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        if moe:
            vision["deepstack_visual_indexes"] = []  # as a stored qwen3_5_moe_vision config has it
        return {
            "architectures": ["Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration"],
            "bos_token_id": None,
            "dtype": "bfloat16",
            "eos_token_id": 248046,
            "image_token_id": 248056,
            "model_type": family,
            "pad_token_id": 248044,
            "text_config": text,
            "tie_word_embeddings": False,
            "transformers_version": "5.2.0",
            "video_token_id": 248057,
            "vision_config": vision,
            "vision_end_token_id": 248054,
            "vision_start_token_id": 248053,
        }
    if family == "internvl":
        return {
            "architectures": ["InternVLForConditionalGeneration"],
            "downsample_ratio": 0.5,
            "image_seq_length": 4,  # published 256
            "image_token_id": 151667,
            "model_type": "internvl",
            "projector_hidden_act": "gelu",
            "text_config": {
                "architectures": ["Qwen2ForCausalLM"],
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "hidden_size": 32,
                "intermediate_size": 64,
                "max_position_embeddings": 32768,
                "model_type": "qwen2",
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "num_key_value_heads": 2,
                "rope_scaling": {"factor": 2.0, "rope_type": "dynamic"},
                "rope_theta": 1000000.0,
                "tie_word_embeddings": True,
                "torch_dtype": "bfloat16",
                "vocab_size": 151674,
            },
            "torch_dtype": "bfloat16",
            "vision_config": {
                "architectures": ["InternVisionModel"],
                "attention_bias": True,
                "hidden_size": 24,
                "image_size": [16, 16],  # published 448
                "intermediate_size": 48,
                "layer_scale_init_value": 0.1,
                "model_type": "internvl_vision",
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "patch_size": [4, 4],  # published 14
                "use_mean_pooling": True,
            },
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
        }
    if family == "gemma3":
        return {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "boi_token_index": 255999,
            "eoi_token_index": 256000,
            "eos_token_id": [1, 106],
            "image_token_index": 262144,
            "initializer_range": 0.02,
            "mm_tokens_per_image": 4,  # published 256
            "model_type": "gemma3",
            "text_config": {
                "head_dim": 8,
                "hidden_size": 32,
                "intermediate_size": 64,
                "model_type": "gemma3_text",
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "num_key_value_heads": 2,
                "query_pre_attn_scalar": 8,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 16,  # published 1024
                "vocab_size": 262208,
            },
            "torch_dtype": "bfloat16",
            "transformers_version": "4.50.0.dev0",
            "vision_config": {
                "hidden_size": 24,
                "image_size": 16,  # published 896
                "intermediate_size": 48,
                "model_type": "siglip_vision_model",
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "patch_size": 4,  # published 14
                "vision_use_head": False,
            },
        }
    if family == "mistral3":
        return {
            "architectures": ["Mistral3ForConditionalGeneration"],
            "image_token_index": 10,
            "model_type": "mistral3",
            "multimodal_projector_bias": False,
            "projector_hidden_act": "gelu",
            "spatial_merge_size": 2,
            "text_config": {
                "attention_dropout": 0.0,
                "head_dim": 8,  # published 128
                "hidden_act": "silu",
                "hidden_size": 32,  # published 5120
                "initializer_range": 0.02,
                "intermediate_size": 64,  # published 32768
                "max_position_embeddings": 131072,
                "model_type": "mistral",
                "num_attention_heads": 4,  # published 32
                "num_hidden_layers": 2,  # published 40
                "num_key_value_heads": 2,  # published 8
                "rms_norm_eps": 1e-05,
                "rope_theta": 1000000000.0,
                "sliding_window": None,
                "use_cache": True,
                "vocab_size": 131072,
            },
            "torch_dtype": "bfloat16",
            "transformers_version": "4.50.0.dev0",
            "vision_config": {
                "attention_dropout": 0.0,
                "head_dim": 8,  # published 64
                "hidden_act": "silu",
                "hidden_size": 24,  # published 1024
                "image_size": 32,  # published 1540 = 110 patches of 14 a side; here 8 patches of 4
                "initializer_range": 0.02,
                "intermediate_size": 48,  # published 4096
                "model_type": "pixtral",
                "num_attention_heads": 3,  # published 16
                "num_channels": 3,
                "num_hidden_layers": 2,  # published 24
                "patch_size": 4,  # published 14
                "rope_theta": 10000.0,
            },
            "vision_feature_layer": -1,
        }
    if family == "llava":  # Pixtral-12B: LLaVA with a Pixtral tower and a Mistral-Nemo text model
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "ignore_index": -100,
            "image_seq_length": 1,
            "image_token_index": 10,
            "model_type": "llava",
            "projector_hidden_act": "gelu",
            "text_config": {
                "head_dim": 8,  # published 128
                "hidden_size": 32,  # published 5120
                "intermediate_size": 64,  # published 14336
                "max_position_embeddings": 1024000,
                "model_type": "mistral",
                "num_attention_heads": 4,  # published: not written (MistralConfig's default, 32)
                "num_hidden_layers": 2,  # published 40
                "num_key_value_heads": 2,  # published 8
                "rms_norm_eps": 1e-05,
                "rope_theta": 1000000000.0,
                "sliding_window": None,
                "vocab_size": 131072,
            },
            "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0.dev0",
            "vision_config": {
                "head_dim": 8,  # published 64
                "hidden_act": "gelu",
                "hidden_size": 24,  # published: not written (PixtralVisionConfig's default, 1024)
                "image_size": 32,  # published 1024 = 64 patches of 16 a side; here 4 patches of 8
                "intermediate_size": 48,  # published: not written (default 4096)
                "model_type": "pixtral",
                "num_attention_heads": 3,  # published: not written (default 16)
                "num_hidden_layers": 2,  # published: not written (default 24)
                "patch_size": 8,  # published 16
                "rope_theta": 10000.0,
            },
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
        }
    raise KeyError(name)


GENERATION_CONFIGS = {
    "qwen2_vl": {"_from_model_config": True, "bos_token_id": 151643, "eos_token_id": 151645},
    "qwen2_5_vl": {
        "bos_token_id": 151643,
        "pad_token_id": 151643,
        "do_sample": True,
        "eos_token_id": [151645, 151643],
        "repetition_penalty": 1.05,
        "temperature": 1e-06,
        "transformers_version": "4.49.0",
    },
    "qwen3_vl": {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643},
    "qwen3_vl_moe": {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643},
    "qwen3_5": {"bos_token_id": 248044, "eos_token_id": [248046, 248044], "pad_token_id": 248044},
    "qwen3_5_moe": {"bos_token_id": 248044, "eos_token_id": [248046, 248044], "pad_token_id": 248044},
    "internvl": {"_from_model_config": True, "bos_token_id": 151643, "eos_token_id": 151645},
    "gemma3": {"bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106], "pad_token_id": 0},
    "mistral3": {
        "_from_model_config": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 11,
        "transformers_version": "4.50.0.dev0",
    },
    "llava": {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.45.0.dev0"},
}

QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 256, 4096  # published 3136 / 12845056 at 14 px patches; here 4 px patches


def processor_files(name: str) -> dict[str, dict]:
    """The processor's JSON files (name -> content) for `name`."""
    family, _ = PUBLISHED_VLM[name]
    if family in ("qwen2_vl", "qwen2_5_vl", *QWEN3_FAMILIES):
        clip = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
        mean, std = ([0.5] * 3, [0.5] * 3) if family in QWEN3_FAMILIES else clip
        processor_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}.get(
            family, "Qwen3VLProcessor"
        )
        preprocessor = {
            "min_pixels": QWEN_MIN_PIXELS,
            "max_pixels": QWEN_MAX_PIXELS,
            "patch_size": 4,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "image_mean": mean,
            "image_std": std,
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": processor_class,
        }
        template = QWEN3_VL_TEMPLATE if family in QWEN3_FAMILIES else QWEN2_VL_TEMPLATE
        return {"preprocessor_config.json": preprocessor, "chat_template.json": {"chat_template": template}}
    if family == "internvl":
        preprocessor = {
            "crop_size": None,
            "crop_to_patches": False,
            "do_center_crop": None,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.485, 0.456, 0.406],
            "image_processor_type": "GotOcr2ImageProcessorFast",
            "image_std": [0.229, 0.224, 0.225],
            "max_patches": 12,
            "min_patches": 1,
            "processor_class": "InternVLProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"height": 16, "width": 16},
        }
        return {
            "preprocessor_config.json": preprocessor,
            "processor_config.json": {"image_seq_length": 4, "processor_class": "InternVLProcessor"},
            "chat_template.json": {"chat_template": INTERNVL_TEMPLATE},
        }
    if family == "gemma3":
        preprocessor = {
            "do_convert_rgb": None,
            "do_normalize": True,
            "do_pan_and_scan": None,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Gemma3ImageProcessor",
            "image_seq_length": 4,
            "image_std": [0.5, 0.5, 0.5],
            "pan_and_scan_max_num_crops": None,
            "pan_and_scan_min_crop_size": None,
            "pan_and_scan_min_ratio_to_activate": None,
            "processor_class": "Gemma3Processor",
            "resample": 2,
            "rescale_factor": 0.00392156862745098,
            "size": {"height": 16, "width": 16},
        }
        return {
            "preprocessor_config.json": preprocessor,
            "processor_config.json": {"image_seq_length": 4, "processor_class": "Gemma3Processor"},
            "chat_template.json": {"chat_template": GEMMA3_TEMPLATE},
        }
    if family == "mistral3":
        preprocessor = {
            "crop_size": None,
            "data_format": "channels_first",
            "default_to_square": True,
            "device": None,
            "do_center_crop": None,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "PixtralImageProcessor",
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "input_data_format": None,
            "patch_size": {"height": 4, "width": 4},  # published 14
            "processor_class": "PixtralProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "return_tensors": None,
            "size": {"longest_edge": 32},  # published 1540, the tower's image_size
        }
        processor = {
            "image_break_token": "[IMG_BREAK]",
            "image_end_token": "[IMG_END]",
            "image_token": "[IMG]",
            "patch_size": 4,  # published 14
            "processor_class": "PixtralProcessor",
            "spatial_merge_size": 2,
        }
        return {
            "preprocessor_config.json": preprocessor,
            "processor_config.json": processor,
            "chat_template.json": {"chat_template": MISTRAL3_TEMPLATE},
        }
    if family == "llava":  # Pixtral-12B: PixtralProcessor, no 2 x 2 merge (its default spatial_merge_size 1)
        preprocessor = {
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "PixtralImageProcessor",
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "patch_size": {"height": 8, "width": 8},  # published 16
            "processor_class": "PixtralProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"longest_edge": 32},  # published 1024, the tower's image_size
        }
        processor = {
            "image_break_token": "[IMG_BREAK]",
            "image_end_token": "[IMG_END]",
            "image_token": "[IMG]",
            "patch_size": 8,  # published 16
            "processor_class": "PixtralProcessor",
        }
        return {
            "preprocessor_config.json": preprocessor,
            "processor_config.json": processor,
            "chat_template.json": {"chat_template": PIXTRAL_TEMPLATE},
        }
    raise KeyError(name)


# ---- tokenizers ------------------------------------------------------------------------------------------------------
def qwen_specials(family: str) -> dict[int, str]:
    if family == "qwen2_vl":
        return dict(QWEN2_VL_SPECIALS)
    if family == "qwen2_5_vl":
        return {**QWEN2_VL_SPECIALS, **QWEN2_5_EXTRA}
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        return {**QWEN2_VL_SPECIALS, **QWEN2_5_EXTRA, **QWEN3_EXTRA}
    if family in QWEN3_5_FAMILIES:
        return {i + QWEN3_5_SHIFT: token for i, token in qwen_specials("qwen3_vl").items()}
    if family == "internvl":
        return {**QWEN2_VL_SPECIALS, **QWEN2_5_EXTRA, **INTERNVL_EXTRA}
    raise KeyError(family)


@functools.cache
def _qwen_tokenizer_json(family: str) -> tuple[str, str, str]:
    """tokenizer.json, vocab.json and merges.txt of a Qwen2-style byte-level BPE (the tiny vocabulary of
    support.published, padded to 151,643 regular tokens, or 248,044 with Qwen3.5's pre-tokenizer for Qwen3.5) with
    the family's added tokens at their real ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = tiny_vocab_and_merges()
    regex = QWEN2_PRETOKENIZE_REGEX
    if family in QWEN3_5_FAMILIES:
        from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX as regex

        vocab = dict(vocab)
        filler = sum(token.startswith("<|unused_") for token in vocab)
        while len(vocab) < QWEN3_5_REGULAR:
            vocab[f"<|unused_{filler}|>"] = len(vocab)
            filler += 1
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )  # fmt: skip
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    specials = qwen_specials(family)
    backend.add_tokens(
        [AddedToken(specials[i], special=specials[i] not in NOT_SPECIAL, normalized=False) for i in sorted(specials)]
    )
    for i, token in specials.items():
        assert backend.token_to_id(token) == i, (token, i)
    vocab_json = json.dumps(vocab, ensure_ascii=False)
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return backend.to_str(pretty=True), vocab_json, merges_txt


def _qwen_tokenizer_config(family: str, template: str) -> dict:
    specials = qwen_specials(family)
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": c, **_FLAGS, "special": c not in NOT_SPECIAL} for i, c in sorted(specials.items())
        },
        "additional_special_tokens": [
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ],  # fmt: skip
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": {"qwen2_vl": 32768, "qwen2_5_vl": 131072, "internvl": 8192}.get(family, 262144),
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if family == "internvl":
        extra = {
            "context_image_token": "<IMG_CONTEXT>",
            "end_image_token": "</img>",
            "start_image_token": "<img>",
            "video_token": "<video>",
        }
        config.update(extra, extra_special_tokens=extra, processor_class="InternVLProcessor")
        config["additional_special_tokens"] += ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    return config


GEMMA_WORDS = sorted(
    set(
        "user model system You are a helpful assistant What colour is the shape in image Describe this red green "
        "blue yellow circle square triangle cross left right top bottom white black grey background on A How "
        "many sides does have four three Is round yes no ? . ,".split()
    )
)


@functools.lru_cache(maxsize=1)
def _gemma_tokenizer_json() -> str:
    """A SentencePiece-style BPE as Gemma 3's tokenizer.json has it (spaces as "▁", byte fallback, no
    pre-tokenizer, `<bos>` prepended), 262,144 entries with the specials at their real ids; ordinary pieces get
    made-up ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab = {token: i for i, token in GEMMA3_SPECIALS.items() if i < GEMMA3_REGULAR}
    free = (i for i in range(GEMMA3_REGULAR) if i not in GEMMA3_SPECIALS and i not in (107, 108))
    vocab["\n"], vocab["\n\n"] = 107, 108
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = next(free)
    chars = sorted(set("".join(GEMMA_WORDS)) | {"▁"})
    for c in chars:
        vocab.setdefault(c, next(free))
    merges, ranks = [("\n", "\n")], {("\n", "\n"): 0}
    merge_whole([list(form) for w in GEMMA_WORDS for form in (w, "▁" + w)], vocab, merges, ranks, lambda: next(free))
    used = set(vocab.values())
    filler = 0
    for i in range(GEMMA3_REGULAR):
        if i not in used:
            vocab[f"<unused_filler_{filler}>"] = i
            filler += 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    backend.add_special_tokens(
        [AddedToken(GEMMA3_SPECIALS[i], special=True, normalized=False) for i in sorted(GEMMA3_SPECIALS)]
    )
    for i, token in GEMMA3_SPECIALS.items():
        assert backend.token_to_id(token) == i, (token, i)
    assert backend.token_to_id("\n") == 107 and backend.token_to_id("\n\n") == 108
    return backend.to_str()


def _gemma_tokenizer_config() -> dict:
    extra = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": c, **_FLAGS, "special": True} for i, c in sorted(GEMMA3_SPECIALS.items())
        },
        **extra,
        "bos_token": "<bos>",
        "chat_template": GEMMA3_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>",
        "extra_special_tokens": extra,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "Gemma3Processor",
        "sp_model_kwargs": None,
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def _mistral3_words() -> list[str]:
    """The words that get whole-word merges in the Tekken fixture: the tests' words and those of the chat template's
    default system message (so that the prompt is not spelled out byte by byte)."""
    system = MISTRAL3_TEMPLATE.split('default_system_message = "')[1].split('" %}')[0].replace("\\n", " ")
    return sorted(set(MERGED_WORDS) | set(re.findall(r"[A-Za-z]+", system)))


@functools.lru_cache(maxsize=2)
def _tekken_tokenizer_json(pixtral: bool = False) -> str:
    """A byte-level BPE laid out as Tekken v7's tokenizer.json: the 1000 control tokens at ids 0-999, the 256 bytes
    at 1000 + byte value (their Tekken ranks + 1000), tekken's split pattern, `<s>` prepended; 131,072 entries.
    Ordinary words get made-up ids after the bytes (a tiny BPE over `_mistral3_words`), the rest is unreachable
    filler. `pixtral`: laid out as Pixtral-12B's instead (its control tokens, its converter's split pattern, no
    `<s>` prepended: the chat template writes it)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    specials, pattern = (PIXTRAL_SPECIALS, PIXTRAL_PATTERN) if pixtral else (TEKKEN_SPECIALS, TEKKEN_PATTERN)
    byte_symbols = _bytes_to_unicode()
    vocab = {token: i for i, token in specials.items()}
    for b in range(256):
        vocab[byte_symbols[b]] = TEKKEN_NUM_SPECIAL + b
    merges, ranks = [], {}
    forms = [[byte_symbols[b] for b in form.encode("utf-8")] for w in _mistral3_words() for form in (w, " " + w)]
    merge_whole(forms, vocab, merges, ranks)
    filler = 0
    while len(vocab) < TEKKEN_VOCAB:  # unreachable entries: no merge produces them
        vocab[f"<unused_filler_{filler}>"] = len(vocab)
        filler += 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    if pixtral:  # as its converter wrote it: byte-level offsets only
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
        )
    backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    backend.add_special_tokens([AddedToken(specials[i], special=True, normalized=False) for i in sorted(specials)])
    for i, token in specials.items():
        assert backend.token_to_id(token) == i, (token, i)
    assert backend.get_vocab_size() == TEKKEN_VOCAB
    return backend.to_str()


def _pixtral_tokenizer_config() -> dict:
    """Pixtral-12B's tokenizer_config.json: a PreTrainedTokenizerFast without a pad token (transformers' own Pixtral
    tests set one before padding) and without a chat template (the processor's chat_template.json has it)."""
    return {
        "added_tokens_decoder": {
            str(i): {"content": c, **_FLAGS, "special": True} for i, c in sorted(PIXTRAL_SPECIALS.items())
        },
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "processor_class": "PixtralProcessor",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }


def _tekken_tokenizer_config() -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": c, **_FLAGS, "special": True} for i, c in sorted(TEKKEN_SPECIALS.items())
        },
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "extra_special_tokens": {},
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "processor_class": "PixtralProcessor",
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


# ---- the checkpoint ----------------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_model(name: str, seed: int = 0):
    """The tiny random model of `name` from the written config (seeded; the global RNG is left as it was)."""
    import torch

    from llava_manager.families import FAMILIES

    family, _ = PUBLISHED_VLM[name]
    adapter = FAMILIES[family]
    config = adapter.config_class.from_dict(config_dict(name))
    if family == "mistral3":
        # The published checkpoint has its own lm_head (its config.json says nothing of tying; transformers 5's
        # Mistral3Config defaults to tying, and keeps two different saved matrices apart, with a warning).
        config.tie_word_embeddings = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = adapter.model_class(config)
        if family == "gemma3":  # Gemma 3 initialises its projection to zero: every image token would be 0
            weight = model.model.multi_modal_projector.mm_input_projection_weight
            with torch.no_grad():
                weight.normal_(std=0.3)
    return model.eval()


def write_published_vlm(directory: str | Path, name: str, seed: int = 0) -> Path:
    """Writes the tiny checkpoint `name` (a key of PUBLISHED_VLM) to `directory` in the published layout."""
    import shutil
    import tempfile

    import torch

    family, _ = PUBLISHED_VLM[name]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = build_model(name, seed).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # only the weights are kept; the JSON files are the published ones
        for file in Path(tmp).glob("*.safetensors*"):
            shutil.move(str(file), directory / file.name)
    _write_json(directory / "config.json", config_dict(name))
    _write_json(directory / "generation_config.json", GENERATION_CONFIGS[family])
    files = processor_files(name)
    for file, content in files.items():
        _write_json(directory / file, content)
    template = files["chat_template.json"]["chat_template"]
    if family == "gemma3":
        (directory / "tokenizer.json").write_text(_gemma_tokenizer_json(), encoding="utf-8")
        _write_json(directory / "tokenizer_config.json", _gemma_tokenizer_config())
        special = {"boi_token": "<start_of_image>", "bos_token": "<bos>", "eoi_token": "<end_of_image>",
                   "eos_token": "<eos>", "image_token": "<image_soft_token>", "pad_token": "<pad>",
                   "unk_token": "<unk>"}  # fmt: skip
    elif family == "mistral3":
        (directory / "tokenizer.json").write_text(_tekken_tokenizer_json(), encoding="utf-8")
        _write_json(directory / "tokenizer_config.json", _tekken_tokenizer_config())
        special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    elif family == "llava":  # Pixtral-12B
        (directory / "tokenizer.json").write_text(_tekken_tokenizer_json(pixtral=True), encoding="utf-8")
        _write_json(directory / "tokenizer_config.json", _pixtral_tokenizer_config())
        special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    else:
        tokenizer_json, vocab_json, merges_txt = _qwen_tokenizer_json(family)
        (directory / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (directory / "vocab.json").write_text(vocab_json, encoding="utf-8")
        (directory / "merges.txt").write_text(merges_txt, encoding="utf-8")
        _write_json(directory / "tokenizer_config.json", _qwen_tokenizer_config(family, template))
        special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    _write_json(directory / "special_tokens_map.json", special)
    return directory
