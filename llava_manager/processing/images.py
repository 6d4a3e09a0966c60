"""Images as users have them, made into what the LLaVA models read: RGB, upright, and a size the model can lay out.

- `to_rgb(image)`: EXIF orientation applied (`ImageOps.exif_transpose`), then RGB. Transparency (RGBA, LA, PA,
  P with a transparent index) is composited on white by transformers' own `image_transforms.convert_to_rgb`; the
  premultiplied modes La / RGBa are unpremultiplied first. 16-bit images (I;16, I;16B, I;16L, I;16N) are scaled
  0..65535 -> 0..255 (PIL's `convert` would clip everything above 255 to white); 32-bit integer images (I) are
  scaled the same way when a value exceeds 255, else taken as 8-bit values; 32-bit float images (F) in 0..1 are
  scaled by 255, others taken as 8-bit values (clipped; NaN -> 0). 1-bit, L, P, CMYK, YCbCr, LAB, HSV: PIL's own
  conversion (no ICC colour management, as LLaVA's own data pipeline).
- `open_image(path)`: opens, decodes and converts; a missing, undecodable or oversized file raises `ImageError`
  with a short `reason` ("missing image", "corrupt image", "unsupported image"). It also takes the encoded image
  itself (bytes, e.g. an image column of parquet shards; `name` labels it in errors).
- `unsupported_reason(processor, image, config=None)`: before any model call, whether the model can represent the
  image: None, or why not. It compares the processor's image-token count (`processor._get_number_of_features`, the
  function `replace_image_token` uses) with the model's own feature layout (`pack_image_features` of the model's
  family, OneVision's or NeXT's, run on zero features of the right shape; no vision tower). With transformers 5.23
  the two agree for every OneVision size tried (tiny layout: all sizes 1..199 px; 0.5B-SI layout: ~580,000 sizes,
  sides 1..5000 px, aspect ratios up to 4000:1; real forwards of both layouts at 1x1, 1x4000, 4000x1, 12x2400,
  2400x12, 4000x3000), so today only empty (0-pixel) images are refused; the comparison guards against the
  token/feature mismatches earlier versions had for some aspect ratios (transformers issues #34625, #35775). It
  costs about a millisecond per image. LLaVA-NeXT and NeXT-Video are checked the same way; LLaVA-1.5 writes one
  fixed count per image (one resized crop), so only its empty images are refused.

Independent of lmms-eval and of the training code.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image, ImageFile, ImageOps

from ..families import FAMILIES
from .processors import family_of_processor

logger = logging.getLogger(__name__)

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


class ImageError(ValueError):
    """An image that cannot be used; `reason` is a short category ("missing image", "corrupt image",
    "unsupported image"), `detail` says which image and why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _to_8_bit(image: Image.Image) -> Image.Image:
    """High-bit-depth single-band images (I;16*, I, F) as mode L, scaled rather than clipped (see the module doc)."""
    if image.mode in SIXTEEN_BIT_MODES:
        image, scale = image.convert("I"), 255 / 65535
    elif image.mode == "I":
        scale = 255 / 65535 if image.getextrema()[1] > 255 else 1.0
    else:  # F
        high = image.getextrema()[1]
        scale = 255.0 if high == high and high <= 1.0 else 1.0  # high == high: not NaN
    # A linear `point` is computed by PIL in the image's own mode; + 0.5 rounds, convert("L") clips to 0..255.
    return image.point(lambda value: value * scale + 0.5).convert("L")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` upright (EXIF orientation applied) and in RGB, as a new image; see the module doc for each mode."""
    from transformers.image_transforms import convert_to_rgb

    if not isinstance(image, Image.Image):
        raise TypeError(f"to_rgb takes a PIL image, got {type(image).__name__}.")
    try:
        image = ImageOps.exif_transpose(image)  # a new image, upright
    except Exception as error:  # broken EXIF data: the pixels are still good
        logger.warning("ignoring the unreadable EXIF orientation of an image: %s", error)
        image = image.copy()
    if image.mode in PREMULTIPLIED:
        image = image.convert(PREMULTIPLIED[image.mode])
    if image.mode in SIXTEEN_BIT_MODES + ("I", "F"):
        image = _to_8_bit(image)
    if image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    return Image.fromarray(convert_to_rgb(image, return_numpy=True), "RGB")


def _load_whole(image: Image.Image) -> None:
    """`image.load()`, refusing truncated files even where a library has set PIL's process-wide
    `ImageFile.LOAD_TRUNCATED_IMAGES` (lmms-eval does at import), which would decode them half grey."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def open_image(path: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> Image.Image:
    """The image at `path` decoded and converted by `to_rgb` (its first frame for animations and multi-page files).
    `path` may also be the encoded image itself (bytes, bytearray or memoryview: an image held in memory, such as
    the `{"bytes", "path"}` cells of a `datasets` Image column); `name` then labels it in errors.
    Raises `ImageError`: "missing image", "corrupt image" (PIL cannot decode it) or "unsupported image" (more
    pixels than PIL's decompression-bomb limit, `2 * Image.MAX_IMAGE_PIXELS`)."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        source, label = io.BytesIO(path), name or f"<{memoryview(path).nbytes} bytes>"
    else:
        path = Path(path)
        if not path.exists():
            raise ImageError("missing image", str(path))
        source = label = path
    try:
        with Image.open(source) as image:
            _load_whole(image)
            return to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageError("unsupported image", f"{label}: {error}") from error
    except Exception as error:  # PIL raises many types for a broken file
        raise ImageError("corrupt image", f"{label}: {error}") from error


def _family(processor, config) -> str | None:
    """The family whose layout is checked: the model config's when given, else the processor's; None when neither
    says (a processor of another class and no config: OneVision's check is tried, as before)."""
    if config is not None and getattr(config, "model_type", None):
        if config.model_type in FAMILIES:
            return config.model_type
    try:
        return family_of_processor(processor)
    except TypeError:
        return None


def _crop(processor) -> tuple[int, int]:
    """(height, width) of the processor's crops: `crop_size` where the image processor crops, else `size`."""
    image_processor = processor.image_processor
    size = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", False) else None
    size = size or image_processor.size
    height = size["height"] if size.get("height") else size["shortest_edge"]
    width = size["width"] if size.get("width") else size["shortest_edge"]
    return height, width


def _model_layout(processor, config, family: str | None = None):
    """What `pack_image_features` reads from the model: its config (given), or the same fields as the processor
    implies them (crop size, patch grid from `num_image_tokens` or `patch_size`, pinpoints, `vision_aspect_ratio`,
    the feature-select strategy and the CLS token the processor counts)."""
    if config is not None:
        return config
    crop, _ = _crop(processor)
    patch = getattr(processor, "patch_size", None) or crop // math.isqrt(processor.num_image_tokens)
    cls_tokens = getattr(processor, "num_additional_image_tokens", 0)
    return SimpleNamespace(
        model_type=family,
        image_grid_pinpoints=processor.image_processor.image_grid_pinpoints,
        vision_aspect_ratio=getattr(processor, "vision_aspect_ratio", "anyres_max_9"),
        vision_feature_select_strategy=getattr(processor, "vision_feature_select_strategy", None),
        vision_config=SimpleNamespace(
            image_size=crop, patch_size=patch, model_type="clip_vision_model" if cls_tokens else None
        ),
    )


def model_feature_count(config, height: int, width: int, multi_image: bool = False) -> int:
    """Image features the model packs for one `height` x `width` image (with newlines; for OneVision before the
    "default" strategy's first-token drop, for NeXT after it), by transformers' own `pack_image_features` on zero
    features: no vision tower. `config.model_type` picks the family (OneVision when it names none)."""
    if getattr(config, "model_type", None) in ("llava_next", "llava_next_video"):
        return _next_feature_count(config, height, width)
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        LlavaOnevisionModel,
        image_size_to_num_patches,
    )

    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    crops = (
        1 if multi_image else image_size_to_num_patches((height, width), config.image_grid_pinpoints, vision.image_size)
    )
    layout = SimpleNamespace(config=config)
    _, lengths = LlavaOnevisionModel.pack_image_features(
        layout,
        [torch.zeros(crops, side * side, 1)],
        torch.tensor([[height, width]]),
        image_newline=torch.zeros(1),
        vision_aspect_ratio=getattr(config, "vision_aspect_ratio", "anyres_max_9"),
    )
    return int(lengths[0])


def _next_feature_count(config, height: int, width: int) -> int:
    """LLaVA-NeXT (and NeXT-Video, whose images are NeXT's): every image has its grid crops, CLIP's CLS token is
    dropped by the "default" strategy before the packing."""
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, image_size_to_num_patches

    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    cls_tokens = 1 if getattr(vision, "model_type", None) == "clip_vision_model" else 0
    tokens = side * side + cls_tokens - (config.vision_feature_select_strategy == "default")
    crops = image_size_to_num_patches((height, width), config.image_grid_pinpoints, vision.image_size)
    _, lengths = LlavaNextModel.pack_image_features(
        SimpleNamespace(config=config),
        [torch.zeros(crops, tokens, 1)],
        torch.tensor([[height, width]]),
        config.vision_feature_select_strategy,
        image_newline=torch.zeros(1),
    )
    return int(lengths[0])


def processor_token_count(
    processor, height: int, width: int, multi_image: bool = False, family: str | None = None
) -> int:
    """Image tokens the processor writes for one `height` x `width` image, by the processor's own counting, as
    `replace_image_token` does: for OneVision before the "default" strategy's one-token drop, for NeXT after it."""
    family = family or _family(processor, None)
    crop_height, crop_width = _crop(processor)
    if family in ("llava_next", "llava_next_video"):
        # upstream: see llava_manager/upstream.py
        count = processor._get_number_of_features(height, width, crop_height, crop_width)
        return count - (processor.vision_feature_select_strategy == "default")
    if multi_image:
        return processor.num_image_tokens + 1  # base crop + newline, as `replace_image_token`
    return processor._get_number_of_features(height, width, crop_height, crop_width)


def unsupported_reason(processor, image: Image.Image, config=None, multi_image: bool = False) -> str | None:
    """None when the model can represent `image`, else why not, e.g. "empty image (0x5 pixels)" or "the processor
    writes 900 image tokens for a 12x2400 image (aspect ratio 200.0:1) but the model packs 892 features".

    `processor`: the model's processor (any family); `config`: the model's config (default: the layout the
    processor implies, so a processor / model disagreement goes unseen); `multi_image`: the image is one of several
    in a sample (OneVision: base crop only; the other families lay out every image alike). Call it on the image as
    the processor will get it (after `to_rgb`). LLaVA-1.5 writes the same token count for every image (one crop,
    resized), so for it only empty images are refused; NeXT and NeXT-Video are checked like OneVision. The other
    families' processors (Qwen-VL, InternVL, Gemma 3, Pixtral) count their tokens from the image processor's output
    (patch grid, tiles, a fixed count), which is what the model encodes: an empty image, or one the processor cannot
    lay out (`_get_num_multimodal_tokens` raises: Qwen's aspect ratio limit of 200:1), is refused."""
    width, height = image.size
    if width < 1 or height < 1:
        return f"empty image ({width}x{height} pixels)"
    family = _family(processor, config)
    if family == "llava":
        return None
    if family is not None and not FAMILIES[family].has_grids:
        # the processor writes its tokens from the image processor's own output (patch grid, tiles, one fixed count),
        # which is what the model encodes: only what the processor cannot lay out (e.g. Qwen's aspect ratio limit)
        count = getattr(processor, "_get_num_multimodal_tokens", None)  # Pixtral's processor has none
        try:
            count is None or count(image_sizes=[[height, width]])
        except ValueError as error:
            return f"the processor cannot lay out a {width}x{height} image: {error}"
        return None
    layout = _model_layout(processor, config, family)
    try:
        tokens = processor_token_count(processor, height, width, multi_image, family)
    except Exception as error:
        return f"the processor cannot count the image tokens of a {width}x{height} image: {error!r}"
    try:
        features = model_feature_count(layout, height, width, multi_image)
    except (AttributeError, TypeError) as error:  # transformers' internals moved: the run-time guard remains
        logger.warning("cannot check image sizes against the model's layout (%r); relying on run-time checks", error)
        return None
    except Exception as error:
        return f"the model cannot lay out a {width}x{height} image: {error!r}"
    if tokens != features:
        ratio = max(width, height) / min(width, height)
        return (
            f"the processor writes {tokens} image tokens for a {width}x{height} image (aspect ratio {ratio:.1f}:1) "
            f"but the model packs {features} features"
        )
    return None
