"""The embedded default for the training recipes: a synthetic "shapes" data set and a tiny processor of each LLaVA
family (`tiny_processor(family=...)`, `tiny_model_config`), made offline.

Each image is a coloured shape (circle, square, triangle, cross) on a plain background, at one of several sizes so
that anyres gives 1 to 4 grid crops; colours, size and position vary a little from image to image, so a held-out
image (`shapes_score`) is never a training image. Questions ask for the colour, the shape, or where it sits, so the
answer needs the image; a few samples are multi-turn, a few have no image. `write_shapes_dataset` writes LLaVA
conversation JSON (instruction data) and caption JSON (Stage-1 "plain" data) next to an image folder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
PLACES = ("left", "right", "top", "bottom", "middle")
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10), "grey": (128, 128, 128)}
SIZES = ((28, 28), (28, 56), (56, 28), (56, 56), (42, 42))  # (height, width) px
COLOUR_JITTER, BACKGROUND_JITTER = 24, 12  # per channel, in random images
GENERATOR_VERSION = 2  # recorded with a written data set: a folder made by another version is rewritten

QUESTIONS = {
    "colour": "What colour is the shape ?",
    "shape": "What shape is in the image ?",
    "place": "Where is the shape ?",
}
TEXT_ONLY = [
    ("How many sides does a square have ?", "four ."),
    ("How many sides does a triangle have ?", "three ."),
    ("Is a circle round ?", "yes ."),
]
TEMPLATE_WORDS = "system user assistant You are a helpful assistant . A on background the image shows".split()


def vocabulary() -> list[str]:
    """Every word the synthetic data and the chat template use, for the tiny tokenizer."""
    words = set(TEMPLATE_WORDS) | set(COLOURS) | set(SHAPES) | set(PLACES) | set(BACKGROUNDS)
    for text in list(QUESTIONS.values()) + [t for pair in TEXT_ONLY for t in pair]:
        words.update(text.split())
    return sorted(words)


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)


def draw_shape(
    shape: str, colour: str, place: str, background: str, size: tuple[int, int], rng: random.Random | None = None
) -> Image.Image:
    """A `colour` `shape` at `place` on a plain `background`, `size` = (height, width) px; the shape's width is half
    the shorter side. With `rng`, the colours vary a little (+-COLOUR_JITTER per channel, the background
    +-BACKGROUND_JITTER) and so do the shape's size and position (+- a quarter of its radius), so that no two
    random images need be the same."""
    height, width = size
    fill, back = COLOURS[colour], BACKGROUNDS[background]
    r = min(height, width) // 4
    dx = dy = 0
    if rng is not None:
        fill, back = _jitter(rng, fill, COLOUR_JITTER), _jitter(rng, back, BACKGROUND_JITTER)
        step = max(1, r // 4)
        r, dx, dy = r + rng.randint(-step, step), rng.randint(-step, step), rng.randint(-step, step)
    image = Image.new("RGB", (width, height), back)
    cx = {"left": width // 4, "right": 3 * width // 4}.get(place, width // 2) + dx
    cy = {"top": height // 4, "bottom": 3 * height // 4}.get(place, height // 2) + dy
    box = (cx - r, cy - r, cx + r, cy + r)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=fill)
        draw.rectangle((cx - r // 3, cy - r, cx + r // 3, cy + r), fill=fill)
    return image


def random_shape(rng: random.Random) -> tuple[Image.Image, dict[str, str]]:
    """One random image of the training distribution and what it shows (shape, colour, place, background)."""
    facts = {
        "shape": rng.choice(SHAPES),
        "colour": rng.choice(list(COLOURS)),
        "place": rng.choice(PLACES),
        "background": rng.choice(list(BACKGROUNDS)),
    }
    size = rng.choice(SIZES)
    return draw_shape(facts["shape"], facts["colour"], facts["place"], facts["background"], size, rng), facts


def write_shapes_dataset(folder: str | Path, num_samples: int = 512, seed: int = 0) -> dict[str, Path]:
    """Write `num_samples` samples under `folder`; returns the paths of `images/`, `instruct.json` (conversations)
    and `captions.json` (image-caption pairs). Deterministic for a given seed; a folder already written with the same
    size and seed is reused as it is."""
    folder = Path(folder)
    paths = {
        "image_folder": folder / "images",
        "instruct": folder / "instruct.json",
        "captions": folder / "captions.json",
    }
    made_with = {"num_samples": num_samples, "seed": seed, "generator": GENERATOR_VERSION}
    stamp = folder / "made_with.json"
    if stamp.exists() and json.loads(stamp.read_text()) == made_with and all(p.exists() for p in paths.values()):
        return paths
    paths["image_folder"].mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    instruct, captions = [], []
    for i in range(num_samples):
        if i % 16 == 15:  # a text-only sample now and then
            question, answer = rng.choice(TEXT_ONLY)
            instruct.append(
                {
                    "id": f"text-{i}",
                    "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                }
            )
            continue
        image, facts = random_shape(rng)
        shape, colour, place, background = facts["shape"], facts["colour"], facts["place"], facts["background"]
        name = f"{i:05d}.png"
        image.save(paths["image_folder"] / name)
        answers = {"colour": f"{colour} .", "shape": f"{shape} .", "place": f"{place} ."}
        asked = rng.sample(list(QUESTIONS), 2 if i % 4 == 0 else 1)  # every fourth sample is two turns
        turns = []
        for k, key in enumerate(asked):
            prompt = ("<image>\n" if k == 0 else "") + QUESTIONS[key]
            turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": answers[key]}]
        instruct.append({"id": f"shape-{i}", "image": name, "conversations": turns})
        caption = f"A {colour} {shape} on {background} background ."
        captions.append(
            {
                "id": f"caption-{i}",
                "image": name,
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption}],
            }
        )
    paths["instruct"].write_text(json.dumps(instruct, indent=1))
    paths["captions"].write_text(json.dumps(captions, indent=1))
    stamp.write_text(json.dumps(made_with))
    return paths


# The special tokens of each family's tiny tokenizer, under the names the published tokenizers give them: the
# tokenizer attributes the family's processor reads (`tokenizer` -> token), the tiny config's token-id fields
# (`config` -> token), the tokens of the family's conversation template (`template`, with `bos`, and `eos` where it
# is not `<|im_end|>`) and the words it writes (`words`). Keyed by the adapter's `image_processor_class` family group
# through `tiny_tokens(family)`.
# (A candidate adapter attribute: `Family.special_tokens`.)
QWEN_VL_TOKENS = dict(
    tokenizer={
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    },
    config={
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    },
)
INTERNVL_TOKENS = dict(
    tokenizer={
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    },
    config={"image_token_id": "<IMG_CONTEXT>"},
)
GEMMA3_TOKENS = dict(
    tokenizer={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    config={
        "image_token_index": "<image_soft_token>",
        "boi_token_index": "<start_of_image>",
        "eoi_token_index": "<end_of_image>",
    },
    template=("<start_of_turn>", "<end_of_turn>"),
    bos="<bos>",
    words=("model",),
)
PIXTRAL_TOKENS = dict(
    tokenizer={},
    config={"image_token_index": "[IMG]"},
    template=("[INST]", "[/INST]", "</s>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
    bos="<s>",
    eos="</s>",
    extra=("[IMG]", "[IMG_BREAK]", "[IMG_END]"),
)
FAMILY_TOKENS = {
    **dict.fromkeys(("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"), QWEN_VL_TOKENS),
    "internvl": INTERNVL_TOKENS,
    "gemma3": GEMMA3_TOKENS,
    "mistral3": PIXTRAL_TOKENS,
}
# The conversation format the embedded default of a family trains in (and `score` prompts in): the family's own
# chat format where the tiny tokenizer has its tokens (Gemma 3, Mistral3), else LLaVA-OneVision's ChatML
# ("qwen_1_5"), which is also the chat format of the Qwen-VL and InternVL checkpoints.
TINY_TEMPLATES = {"gemma3": "gemma", "mistral3": "mistral_v7"}


def tiny_template(family: str = "llava_onevision") -> str:
    """The conversation template (a `templates.TEMPLATES` key) of `family`'s embedded default."""
    return TINY_TEMPLATES.get(family, "qwen_1_5")


def tiny_tokenizer(family: str | None = None):
    """A word-level tokenizer over the synthetic vocabulary with the Qwen chat tokens and `<image>` / `<video>`;
    with a non-LLaVA `family` (`FAMILY_TOKENS`), that family's image tokens and template tokens instead of
    `<image>` / `<video>`, under their real names (the LLaVA families' tokenizer is unchanged). A family whose
    tokenizer transformers reloads in a class of its own (`reloaded_tokenizer_class`: Qwen3.5) gets a byte-level BPE
    of that class over the same words, so that the tokenizer saved with its model loads back the same."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = FAMILY_TOKENS.get(family)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<video>", "<image>"]
    plain = ["\n"] + vocabulary()
    extra: list[str] = []
    if tokens is not None:
        named = list(dict.fromkeys(tokens["tokenizer"].values()))
        extra = [t for t in (*named, *tokens.get("extra", ()), *tokens.get("template", ())) if t not in plain]
        extra += [t for t in ([tokens["bos"]] if tokens.get("bos") else []) if t not in extra]
        plain += [w for w in tokens.get("words", ()) if w not in plain]
    words = specials[:4] + plain + extra
    named_tokens = {"image_token": "<image>", "video_token": "<video>"} if tokens is None else tokens["tokenizer"]
    forced = reloaded_tokenizer_class(family)
    if forced is not None:  # the class transformers reloads this model type's tokenizer in, whatever was saved
        tokenizer = _byte_level_bpe(forced, plain, extra_special_tokens=dict(named_tokens))
        tokenizer.add_special_tokens({"additional_special_tokens": [*specials[:4], *extra]})
        return tokenizer
    vocab = {token: i for i, token in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Words split on spaces; newlines and punctuation are tokens of their own, as in the Qwen tokenizer.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"[\n.,?!]"), behavior="isolated"),
        ]
    )
    kwargs = {"bos_token": tokens["bos"]} if tokens is not None and tokens.get("bos") else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=(tokens or {}).get("eos", "<|im_end|>"),
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens=dict(named_tokens),
        **kwargs,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *extra]})
    return tokenizer


def reloaded_tokenizer_class(family: str | None):
    """The tokenizer class `AutoTokenizer` loads for `family`'s model type whatever a saved `tokenizer_config.json`
    names (Qwen3.5's `Qwen3_5Tokenizer`, which rebuilds a byte-level BPE from the saved vocabulary and merges), or
    None where the saved class is the one loaded back."""
    from transformers.models.auto import tokenization_auto as auto

    # upstream: see llava_manager/upstream.py
    if family not in auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS:
        return None
    name = auto.TOKENIZER_MAPPING_NAMES.get(family)
    return None if name in (None, "TokenizersBackend") else auto.tokenizer_class_from_name(name)


def _byte_level_bpe(tokenizer_class, words: list[str], **kwargs):
    """A byte-level BPE of `tokenizer_class` (a BPE class such as `Qwen3_5Tokenizer`) whose vocabulary holds the 256
    byte symbols and every word of `words`, bare and after a space, each built by merges from the left: what such a
    class rebuilds from its saved vocabulary and merges, so the tokenizer saved with a model loads back the same."""
    from tokenizers import pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    to_symbols = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for word in words:
        for text in (word, " " + word):
            symbols = "".join(piece for piece, _ in to_symbols.pre_tokenize_str(text))
            for end in range(2, len(symbols) + 1):
                if symbols[:end] not in vocab:
                    merges.append((symbols[: end - 1], symbols[end - 1]))
                    vocab[symbols[:end]] = len(vocab)
    return tokenizer_class(
        vocab=vocab, merges=merges, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>", **kwargs
    )


def _qwen_image_processor(adapter, config):
    """Patches, merge and temporal patch of the tiny ViT; images resized to multiples of patch x merge (8 px) between
    8 x 8 and 64 x 64 px (at most 64 merged tokens an image)."""
    vision = config.vision_config
    unit = vision.patch_size * vision.spatial_merge_size
    return adapter.image_processor_class(
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size,
        size={"shortest_edge": unit * unit, "longest_edge": (8 * unit) ** 2},
    )


def _tile_image_processor(adapter, config):
    """InternVL: tiles of the tiny tower's image size, the dynamic tiling (at most 4 tiles and a thumbnail)."""
    from ..families.internvl import square_size

    side = square_size(config.vision_config.image_size)
    return adapter.image_processor_class(
        size={"height": side, "width": side}, crop_to_patches=True, min_patches=1, max_patches=4
    )


def _square_image_processor(adapter, config):
    """Gemma 3: every image resized to the tower's square image size (no Pan & Scan)."""
    side = config.vision_config.image_size
    return adapter.image_processor_class(size={"height": side, "width": side})


def _pixtral_image_processor(adapter, config):
    """Pixtral: images at their own size, the longest side at most 4 merged patches."""
    vision = config.vision_config
    unit = vision.patch_size * config.spatial_merge_size
    return adapter.image_processor_class(size={"longest_edge": 4 * unit}, patch_size={"height": unit, "width": unit})


# How the tiny processor of a non-LLaVA family is sized, by its image processor (the adapter's
# `image_processor_class`): the image processor, and the processor's own settings from the tiny config.
TINY_IMAGE_PROCESSORS = {
    "Qwen2VLImageProcessorPil": (_qwen_image_processor, lambda config: {}),
    "GotOcr2ImageProcessorPil": (_tile_image_processor, lambda c: {"image_seq_length": c.image_seq_length}),
    "Gemma3ImageProcessorPil": (_square_image_processor, lambda c: {"image_seq_length": c.mm_tokens_per_image}),
    "PixtralImageProcessorPil": (
        _pixtral_image_processor,
        lambda c: {"patch_size": c.vision_config.patch_size, "spatial_merge_size": c.spatial_merge_size},
    ),
}


def _vlm_processor(family: str, adapter, tokenizer):
    """The processor of a non-LLaVA family over `tokenizer`, sized to the family's tiny config."""
    from ..processing.processors import build_processor

    config = adapter.tiny_config()
    name = adapter.image_processor_class.__name__
    if name not in TINY_IMAGE_PROCESSORS:
        raise ValueError(f"no tiny processor for {adapter.title} (image processor {name})")
    image_processor, settings = TINY_IMAGE_PROCESSORS[name]
    return build_processor(image_processor(adapter, config), tokenizer, family=family, **settings(config))


def tiny_processor(vision_feature_select_strategy: str | None = None, *, family: str = "llava_onevision"):
    """The processor of `family` (a `FAMILIES` key) for `tiny_model_config` models: `tiny_tokenizer()` and the
    family's PIL image processor sized to the family's tiny config (28 px crops of 7 px patches, its tiny pinpoints),
    so that the image tokens it writes are the features the model produces.

    - LLaVA-OneVision: `num_image_tokens=16`, anyres_max_9, the "full" strategy (SigLIP has no CLS token).
    - LLaVA-NeXT / NeXT-Video: `patch_size=7`, `num_additional_image_tokens=1` (CLIP's CLS), the "default" strategy.
    - Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5: the Qwen image processor with the tiny ViT's 4 px patches, 2 x 2
      merge and temporal patches of 2, images resized to multiples of 8 px up to 64 x 64 px.
    - InternVL: 32 px tiles (the tiny tower's), dynamic tiling up to 4 tiles and a thumbnail, 16 tokens a tile.
    - Gemma 3: 16 px images, 4 tokens an image (`mm_tokens_per_image`).
    - Mistral3 (Pixtral processor): images at their size, longest side 32 px, one token per 8 x 8 px.
    - LLaVA-1.5: as NeXT, one 28 px crop per image: resized (shortest side) and centre-cropped, as the llava-hf
      checkpoints' processor does. (Padding to a square first, LLaVA-1.5's original "pad", shrinks the shapes of
      wide images to a few pixels at 28 px: the default run then learnt only some colours, 0.54 / 0.78 held-out on
      seeds 42 / 1, against 0.995 centre-cropped.)

    `vision_feature_select_strategy` overrides the family's (the model config must then be built with the same)."""
    from ..families import get_family
    from ..processing.processors import build_processor

    adapter = get_family(family)
    if family in FAMILY_TOKENS:
        if vision_feature_select_strategy is not None:
            raise ValueError(f"{adapter.title} has no vision_feature_select_strategy to override.")
        return _vlm_processor(family, adapter, tiny_tokenizer(family))
    config = adapter.tiny_config()
    vision = config.vision_config
    strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
    crop = {"height": vision.image_size, "width": vision.image_size}
    tokenizer = tiny_tokenizer()
    if family == "llava_onevision":
        image_processor = adapter.image_processor_class(size=crop, image_grid_pinpoints=config.image_grid_pinpoints)
        patches = (vision.image_size // vision.patch_size) ** 2
        return build_processor(
            image_processor,
            tokenizer,
            family=family,
            num_image_tokens=patches,
            vision_feature_select_strategy=strategy,
            vision_aspect_ratio="anyres_max_9",
        )
    kwargs = dict(size={"shortest_edge": vision.image_size}, crop_size=crop)
    if adapter.has_grids:
        kwargs["image_grid_pinpoints"] = config.image_grid_pinpoints
    cls_tokens = 1 if vision.model_type == "clip_vision_model" else 0
    return build_processor(
        adapter.image_processor_class(**kwargs),
        tokenizer,
        family=family,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=cls_tokens,
    )


def tiny_model_config(processor, family: str | None = None, **overrides):
    """The tiny config of `family` (default: the family of `processor`) sized to `processor`'s vocabulary, with its
    image (and video) token ids and its feature-select strategy."""
    from ..families import get_family
    from ..processing.processors import family_of_processor

    family = family or family_of_processor(processor)
    adapter = get_family(family)
    tokenizer = processor.tokenizer
    if family in FAMILY_TOKENS:  # the token-id fields from the tokenizer's tokens of the same names
        ids = {
            field: tokenizer.convert_tokens_to_ids(token) for field, token in FAMILY_TOKENS[family]["config"].items()
        }
        config = adapter.tiny_config(vocab_size=len(tokenizer), **{**ids, **overrides})
        # the tiny tokenizer's BOS / end-of-turn / padding, not the published vocabulary's ids
        for target in {id(c): c for c in (config, config.get_text_config())}.values():
            for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
                setattr(target, name, getattr(tokenizer, name))
        return config
    kwargs = dict(
        vocab_size=len(tokenizer),
        image_token_index=processor.image_token_id,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
    )
    if adapter.has_video:
        kwargs["video_token_index"] = processor.video_token_id
    kwargs.update(overrides)
    return adapter.tiny_config(**kwargs)
