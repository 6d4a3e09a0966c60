"""A tiny random LLaVA-OneVision checkpoint laid out exactly like the published llava-hf ones.

`write_published_checkpoint(directory, variant)` writes the files of ``llava-hf/llava-onevision-qwen2-0.5b-si-hf``
(``variant="si"``) or ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf`` (``variant="ov"``) with their published names
and field values; only sizes are shrunk (hidden sizes, layer counts, intermediate sizes, image and patch size, the
grid pinpoints in proportion, ``num_image_tokens`` accordingly). The token ids are the real ones: vocabulary
151,936 (tied embeddings, as published), ``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>``
151645, ``<image>`` 151646, ``<video>`` 151647. Everything is built offline in code; nothing is downloaded.

Sources (Hub pages as stored by the ``docs`` search corpus, huggingface.co/<repo>/...; transformers' own code):

- File list (main, both repos; identical names and sizes except the weights): ``tree/main`` of both repos lists
  ``added_tokens.json`` 122 B, ``chat_template.json`` 826 B ("Update chat_template.json"), ``config.json``
  2.59 kB, ``generation_config.json`` 126 B, ``merges.txt``, ``model.safetensors`` 1.79 GB, ``preprocessor_config.json``
  1.73 kB, ``processor_config.json`` 178 B ("no chat template [here]"), ``special_tokens_map.json`` 367 B,
  ``tokenizer.json``, ``tokenizer_config.json`` 1.7 kB, ``vocab.json``, ``video_processor/preprocessor_config.json``
  428 B (tree/main/video_processor of both repos), plus README.md, llava_onevision_arch.png and onnx/ (not
  written here). There is no ``chat_template.jinja`` and no ``video_preprocessor_config.json``.
- ``config.json``: blame of llava-onevision-qwen2-0.5b-ov-hf@66d62be (2,591 B, 194 lines, begins
  ``"_name_or_path": "/raid/raushan/ov-500"``); the field set follows the 7B sibling's "Upload
  LlavaOnevisionForConditionalGeneration" diff (llava-onevision-qwen2-7b-ov-hf commit bd59bb6: ``ignore_index``
  -100, ``image_token_index`` 151646, ``projector_hidden_act`` gelu, ``tie_word_embeddings`` false at the top and
  true in text_config, ``torch_dtype`` float16, ``transformers_version`` 4.45.0.dev0,
  ``use_image_newline_parameter`` true, ``vision_aspect_ratio`` anyres_max_9, default-valued sub-config fields
  dropped), the text_config values from Qwen/Qwen2-0.5B-Instruct's config.json (copies at
  huggingface.co/harry85/Qwen2-0.5B-Instruct, lewtun/qwen2-0.5B-lr-3e-6), the vision_config and
  ``num_image_tokens`` 729 / ``vision_feature_select_strategy`` full from transformers'
  ``models/llava_onevision/convert_llava_onevision_weights_to_hf.py``, the pinpoints from transformers'
  ``LlavaOnevisionConfig`` default (384..2304 step 384). ``json.dumps(..., indent=2, sort_keys=True)`` of exactly
  that dict is 2,591 bytes, the published size. ``_name_or_path`` (the converter's local path) is left out.
- ``chat_template.json``: transformers ``tests/models/llava_onevision/test_processor_llava_onevision.py``
  (``prepare_processor_dict`` template, and ``test_chat_template`` which loads llava-hf/llava-onevision-qwen2-7b-ov-hf
  and expects ``"<|im_start|>user <image>\\nWhat is shown in this image?<|im_end|><|im_start|>assistant\\n"``);
  the diff of llava-hf/llava-onevision-qwen2-72b-ov-hf commit fa707d0 "Update chat_template.json" (old
  ``role + '\\n'`` / ``'<image>\\n'`` template to the new ``role + ' '`` one); zjysteven/lmms-finetune
  ``collators/llava_onevision.py``, which adapts it from
  .../llava-onevision-qwen2-0.5b-ov-hf/blob/main/chat_template.json.
  The saved file of that template is 826 bytes, the published size (the previous template gives 824, the size of
  the earlier "Upload processor" version).
- ``processor_config.json``: llava-onevision-qwen2-0.5b-ov-hf commit aeee280 "no chat template" (the diff shows the
  resulting file: image_token, num_image_tokens 729, processor_class, video_token, vision_feature_select_strategy;
  178 bytes). No ``vision_aspect_ratio`` key.
- ``preprocessor_config.json``: LlavaOnevisionImageProcessor as the converter saves it (transformers 4.45 fields:
  do_convert_rgb, do_normalize, do_pad, do_rescale, do_resize, image_grid_pinpoints, image_mean/std 0.5, resample 3,
  rescale_factor 1/255, size 384x384, processor_class); 1,732 bytes, the published 1.73 kB.
- ``video_processor/preprocessor_config.json``: the same 428-byte file copied in
  huggingface.co/Code2Logic/Game-RL-LLaVA-OV-7B (video_processor/preprocessor_config.json), same size as llava-hf's.
- ``generation_config.json``: blob pages of both repos (``_from_model_config`` true, bos 151643, eos 151645,
  transformers_version 4.45.0.dev0).
- ``added_tokens.json``: llava-hf/llava-onevision-qwen2-7b-si-hf blob (122 B; the 0.5B files have the same size).
- ``special_tokens_map.json``: llava-hf/llava-onevision-qwen2-0.5b-si-hf blob/main (367 B): additional_special_tokens
  <|im_start|>, <|im_end|>; eos <|im_end|>; pad <|endoftext|>. No bos, no unk, no image/video entries.
- ``tokenizer_config.json``: Qwen/Qwen2-0.5B-Instruct's (copy at YashJain/GitAI-Qwen2-0.5B-Instruct-MLX-v1, 1.3 kB;
  the converter starts from that tokenizer) plus ``<image>``/``<video>`` in added_tokens_decoder and
  ``processor_class``; that is 1,695 bytes (published 1.7 kB; the August version with ``<image>`` only computes to
  1,521, published 1.52 kB). It keeps Qwen2's text-only chat template (system prompt "You are a helpful
  assistant.", ``message['content']`` concatenated) and has no padding_side (so right), model_max_length 32768.
- ``model.safetensors``: float16 (config ``torch_dtype``; the converter casts every tensor to float16), one file,
  no ``language_model.lm_head.weight`` (tied: 1.79 GB is ~0.9 B parameters in float16, an untied head would add
  ~0.27 GB), keys as transformers 4.45 names them (the converter's KEYS_TO_MODIFY_MAPPING + a strict
  ``load_state_dict``): ``language_model.model.*``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``,
  ``image_newline``. Written here by ``save_pretrained``, then the SigLIP prefix renamed (`_to_published_keys`).
- ``tokenizer.json`` / ``vocab.json`` / ``merges.txt``: a small byte-level BPE in Qwen2's layout (the 256 GPT-2
  byte symbols first, so " " is 220 and "\\n" 198 as in Qwen2, merges for the words the tests and the shapes data
  use), padded with unreachable filler entries to Qwen2's 151,643 regular tokens, so that the specials get their
  real ids.

si and ov: the stored pages show the same file names, sizes and processor/tokenizer contents for both; they differ
in the weights (here: the seed) and in config.json's ``_name_or_path`` (ov's is "/raid/raushan/ov-500"; si's was not
in the stored pages; neither is written). transformers 5 reads both layouts of the keys, the legacy
``torch_dtype``/``ignore_index``/``use_image_newline_parameter`` keys, and the legacy chat_template.json.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

PUBLISHED_REPOS = {
    "si": "llava-hf/llava-onevision-qwen2-0.5b-si-hf",
    "ov": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
}

# chat_template.json, "chat_template" (current main of both repos).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# tokenizer_config.json, "chat_template": Qwen2-0.5B-Instruct's text-only template, kept by the converter.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = {  # id -> content, as in tokenizer_config.json's added_tokens_decoder
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151646: "<image>",
    151647: "<video>",
}
NUM_REGULAR_TOKENS = 151643  # Qwen2's BPE vocabulary (vocab.json); the specials follow it
VOCAB_SIZE = 151936  # the model's embedding rows (Qwen2-0.5B pads its vocabulary)

# Sizes: published 0.5B values in the comments, the shrunk ones written here.
TINY_IMAGE_SIZE, TINY_PATCH_SIZE = 30, 7  # 4 x 4 patches per crop; 30 % 7 != 0 just as 384 % 14 != 0
TINY_NUM_IMAGE_TOKENS = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2  # 16 (real: (384 // 14) ** 2 = 729)


def pinpoints(side: int) -> list[list[int]]:
    """The published grid: every (h, w) in side * {1..6} (384 .. 2304 for side 384)."""
    return [[side * i, side * j] for i in range(1, 7) for j in range(1, 7)]


TEXT_SIZES = dict(
    hidden_size=56,
    intermediate_size=304,
    num_hidden_layers=4,
    max_window_layers=4,
    num_attention_heads=14,
    num_key_value_heads=2,
)  # real: 896, 4864, 24, 24, 14, 2
VISION_SIZES = dict(
    hidden_size=64,
    intermediate_size=272,
    num_hidden_layers=4,
    num_attention_heads=16,
    image_size=TINY_IMAGE_SIZE,
    patch_size=TINY_PATCH_SIZE,
)  # real: 1152, 4304, 26, 16, 384, 14
SEEDS = {"si": 0, "ov": 1}


def published_config(variant: str = "si") -> dict:
    """config.json as published, sizes shrunk."""
    _check(variant)
    text = {
        "_name_or_path": "Qwen/Qwen2-0.5B-Instruct",
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "model_type": "qwen2",
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "vocab_size": VOCAB_SIZE,
        **TEXT_SIZES,
    }
    vision = {"model_type": "siglip_vision_model", "vision_use_head": False, **VISION_SIZES}
    return {
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": pinpoints(TINY_IMAGE_SIZE),
        "image_token_index": 151646,
        "model_type": "llava_onevision",
        "projector_hidden_act": "gelu",
        "text_config": text,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.45.0.dev0",
        "use_image_newline_parameter": True,
        "video_token_index": 151647,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_config": vision,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    }


GENERATION_CONFIG = {
    "_from_model_config": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "transformers_version": "4.45.0.dev0",
}
PROCESSOR_CONFIG = {
    "image_token": "<image>",
    "num_image_tokens": TINY_NUM_IMAGE_TOKENS,
    "processor_class": "LlavaOnevisionProcessor",
    "video_token": "<video>",
    "vision_feature_select_strategy": "full",
}
_IMAGE_PROCESSOR_COMMON = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "LlavaOnevisionProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
}
PREPROCESSOR_CONFIG = {
    **_IMAGE_PROCESSOR_COMMON,
    "image_grid_pinpoints": pinpoints(TINY_IMAGE_SIZE),
    "image_processor_type": "LlavaOnevisionImageProcessor",
}
VIDEO_PREPROCESSOR_CONFIG = {**_IMAGE_PROCESSOR_COMMON, "image_processor_type": "LlavaOnevisionVideoProcessor"}
ADDED_TOKENS = {content: i for i, content in SPECIAL_TOKENS.items()}
_TOKEN_FLAGS = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
SPECIAL_TOKENS_MAP = {
    "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    "eos_token": {"content": "<|im_end|>", **_TOKEN_FLAGS},
    "pad_token": {"content": "<|endoftext|>", **_TOKEN_FLAGS},
}
TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "added_tokens_decoder": {
        str(i): {"content": c, **_TOKEN_FLAGS, "special": True} for i, c in SPECIAL_TOKENS.items()
    },
    "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    "bos_token": None,
    "chat_template": QWEN2_CHAT_TEMPLATE,
    "clean_up_tokenization_spaces": False,
    "eos_token": "<|im_end|>",
    "errors": "replace",
    "model_max_length": 32768,
    "pad_token": "<|endoftext|>",
    "processor_class": "LlavaOnevisionProcessor",
    "split_special_tokens": False,
    "tokenizer_class": "Qwen2Tokenizer",
    "unk_token": None,
}
# Qwen2's pre-tokenizer (tokenizer.json of Qwen/Qwen2-0.5B-Instruct; transformers' Qwen2Tokenizer uses the same).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Words that get whole-word merges (with and without a leading space); any other text falls back to bytes.
MERGED_WORDS = sorted(
    set(
        "system user assistant You are a helpful assistant What colour is the shape in image Where Hi Describe this "
        "shown red green blue yellow circle square triangle cross left right top bottom middle white black grey "
        "background on A How many sides does have four three Is round yes no ? . ,".split()
    )
)


def _check(variant: str) -> None:
    if variant not in PUBLISHED_REPOS:
        raise ValueError(f"variant must be one of {sorted(PUBLISHED_REPOS)}, got {variant!r}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable symbol table (Qwen2 uses it; its vocabulary starts with these 256 symbols)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE as the `tokenizers` model applies it: merge the lowest-ranked adjacent pair until none applies."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def merge_whole(forms, vocab: dict, merges: list, ranks: dict, new_id=None) -> None:
    """Adds to `merges` (and `ranks`) what joins each symbol sequence of `forms` into one token, and each joined piece
    to `vocab` (at `new_id()`, else at the next index): each form is segmented with the merges so far, then its pieces
    are joined left to right with new, lowest-ranked merges, so words added earlier keep their own (higher-ranked)
    merges and stay whole."""
    for symbols in forms:
        pieces = _bpe(symbols, ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            assert pair not in ranks, pair  # BPE would have applied it
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], new_id() if new_id else len(vocab))
            pieces = _bpe(symbols, ranks)


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary of exactly NUM_REGULAR_TOKENS entries and its merges; every word of
    MERGED_WORDS (alone or after a space) becomes one token."""
    byte_symbols = _bytes_to_unicode()
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols.values())}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    forms = [[byte_symbols[b] for b in form.encode("utf-8")] for w in MERGED_WORDS for form in (w, " " + w)]
    merge_whole(forms, vocab, merges, ranks)
    filler = 0
    while len(vocab) < NUM_REGULAR_TOKENS:  # unreachable entries: no merge produces them
        vocab[f"<|unused_{filler}|>"] = len(vocab)
        filler += 1
    return vocab, merges


def build_tokenizer_backend():
    """The `tokenizers.Tokenizer` saved as tokenizer.json: Qwen2's pipeline over the tiny vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = tiny_vocab_and_merges()
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
        )
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.add_special_tokens(
        [AddedToken(SPECIAL_TOKENS[i], special=True, normalized=False) for i in sorted(SPECIAL_TOKENS)]
    )
    assert backend.token_to_id("<image>") == 151646, "special token ids drifted"
    return backend, vocab, merges


def _write_json(path: Path, data: dict) -> None:
    """As transformers (4.45) writes its JSON files: indent 2, sorted keys, a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


@functools.lru_cache(maxsize=1)
def tokenizer_files() -> dict[str, str]:
    """The text of tokenizer.json, vocab.json and merges.txt (the same for both variants; built once)."""
    backend, vocab, merges = build_tokenizer_backend()
    return {
        "tokenizer.json": backend.to_str(pretty=True),
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
    }


def build_model(variant: str = "si"):
    """The tiny random model for `variant` (seeded; the global RNG is left as it was), in float16 like the
    published weights."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    _check(variant)
    config = LlavaOnevisionConfig.from_dict(published_config(variant))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEEDS[variant])
        model = LlavaOnevisionForConditionalGeneration(config)
    return model.to(torch.float16).eval()


def _to_published_keys(path: Path) -> None:
    """transformers 5 writes the SigLIP tower as ``vision_tower.*``; the published file (transformers 4.45, whose
    ``vision_tower`` is a ``SiglipVisionModel`` holding ``vision_model``; the converter loads its keys strictly)
    has ``vision_tower.vision_model.*``. Every other key is already as published: ``language_model.model.*``,
    ``multi_modal_projector.linear_{1,2}.*``, ``image_newline``, and no ``language_model.lm_head.weight`` (tied)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    renamed = {
        (
            "vision_tower.vision_model." + key[len("vision_tower.") :]
            if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model.")
            else key
        ): value
        for key, value in tensors.items()
    }
    save_file(renamed, str(path), metadata=metadata)


def write_published_checkpoint(directory: str | Path, variant: str = "si", weights_layout: str = "published") -> Path:
    """Write the tiny `variant` checkpoint ("si" or "ov") to `directory` in the published layout; returns it.

    The weights are written by `model.save_pretrained` (safetensors, float16, tied lm_head left out).
    ``weights_layout="published"`` then renames the SigLIP keys to the published ``vision_tower.vision_model.*``
    (see `_to_published_keys`); ``"transformers"`` keeps transformers 5's own ``vision_tower.*``. Both load to
    the same model."""
    import shutil
    import tempfile

    _check(variant)
    if weights_layout not in ("published", "transformers"):
        raise ValueError(f"weights_layout must be 'published' or 'transformers', got {weights_layout!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    model = build_model(variant)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # only model.safetensors is kept; the JSON files are written below
        shutil.move(str(Path(tmp) / "model.safetensors"), directory / "model.safetensors")
    if weights_layout == "published":
        _to_published_keys(directory / "model.safetensors")
    _write_json(directory / "config.json", published_config(variant))
    _write_json(directory / "generation_config.json", GENERATION_CONFIG)

    for name, text in tokenizer_files().items():
        (directory / name).write_text(text, encoding="utf-8")
    _write_json(directory / "tokenizer_config.json", TOKENIZER_CONFIG)
    _write_json(directory / "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    _write_json(directory / "added_tokens.json", ADDED_TOKENS)

    _write_json(directory / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _write_json(directory / "processor_config.json", PROCESSOR_CONFIG)
    _write_json(directory / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    _write_json(directory / "video_processor" / "preprocessor_config.json", VIDEO_PREPROCESSOR_CONFIG)
    return directory


PUBLISHED_FILES = (
    "added_tokens.json",
    "chat_template.json",
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "video_processor/preprocessor_config.json",
    "vocab.json",
)
