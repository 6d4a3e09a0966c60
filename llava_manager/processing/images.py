"""Images as users have them, made into what LLaVA-OneVision reads: RGB, upright, and a size the model can lay out.

- `to_rgb(image)`: EXIF orientation applied (`ImageOps.exif_transpose`), then RGB. Transparency (RGBA, LA, PA,
  P with a transparent index) is composited on white by transformers' own `image_transforms.convert_to_rgb`; the
  premultiplied modes La / RGBa are unpremultiplied first. 16-bit images (I;16, I;16B, I;16L, I;16N) are scaled
  0..65535 -> 0..255 (PIL's `convert` would clip everything above 255 to white); 32-bit integer images (I) are
  scaled the same way when a value exceeds 255, else taken as 8-bit values; 32-bit float images (F) in 0..1 are
  scaled by 255, others taken as 8-bit values (clipped; NaN -> 0). 1-bit, L, P, CMYK, YCbCr, LAB, HSV: PIL's own
  conversion (no ICC colour management, as LLaVA's own data pipeline).
- `open_image(path)`: opens, decodes and converts; a missing, undecodable or oversized file raises `ImageError`
  with a short `reason` ("missing image", "corrupt image", "unsupported image").
- `unsupported_reason(processor, image, config=None)`: before any model call, whether the model can represent the
  image: None, or why not. It compares the processor's image-token count (`processor._get_number_of_features`, the
  function `replace_image_token` uses) with the model's own feature layout (`LlavaOnevisionModel.pack_image_features`
  run on zero features of the right shape; no vision tower). With transformers 5.23 the two agree for every size
  tried (tiny layout: all sizes 1..199 px; 0.5B-SI layout: ~580,000 sizes, sides 1..5000 px, aspect ratios up to
  4000:1; real forwards of both layouts at 1x1, 1x4000, 4000x1, 12x2400, 2400x12, 4000x3000), so today only empty
  (0-pixel) images are refused; the comparison guards against the token/feature mismatches earlier versions had for
  some aspect ratios (transformers issues #34625, #35775). It costs about a millisecond per image.

Independent of lmms-eval and of the training code.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image, ImageOps

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


def open_image(path: str | Path) -> Image.Image:
    """The image at `path` decoded and converted by `to_rgb` (its first frame for animations and multi-page files).
    Raises `ImageError`: "missing image", "corrupt image" (PIL cannot decode it) or "unsupported image" (more
    pixels than PIL's decompression-bomb limit, `2 * Image.MAX_IMAGE_PIXELS`)."""
    path = Path(path)
    if not path.exists():
        raise ImageError("missing image", str(path))
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageError("unsupported image", f"{path}: {error}") from error
    except Exception as error:  # PIL raises many types for a broken file
        raise ImageError("corrupt image", f"{path}: {error}") from error


def _model_layout(processor, config):
    """What `pack_image_features` reads from the model: its config (given), or the same fields as the processor
    implies them (crop size, patch grid from `num_image_tokens`, pinpoints, `vision_aspect_ratio`)."""
    if config is not None:
        return config
    size = processor.image_processor.size
    crop = size["height"] if size.get("height") else size["shortest_edge"]
    side = math.isqrt(processor.num_image_tokens)
    return SimpleNamespace(
        image_grid_pinpoints=processor.image_processor.image_grid_pinpoints,
        vision_aspect_ratio=processor.vision_aspect_ratio,
        vision_config=SimpleNamespace(image_size=crop, patch_size=crop // side),
    )


def model_feature_count(config, height: int, width: int, multi_image: bool = False) -> int:
    """Image features the model packs for one `height` x `width` image (with newlines; before the "default"
    strategy's first-token drop), by transformers' own `pack_image_features` on zero features: no vision tower."""
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        LlavaOnevisionModel,
        image_size_to_num_patches,
    )

    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    crops = 1 if multi_image else image_size_to_num_patches(
        (height, width), config.image_grid_pinpoints, vision.image_size)
    layout = SimpleNamespace(config=config)
    _, lengths = LlavaOnevisionModel.pack_image_features(
        layout, [torch.zeros(crops, side * side, 1)], torch.tensor([[height, width]]),
        image_newline=torch.zeros(1), vision_aspect_ratio=getattr(config, "vision_aspect_ratio", "anyres_max_9"))
    return int(lengths[0])


def processor_token_count(processor, height: int, width: int, multi_image: bool = False) -> int:
    """Image tokens the processor writes for one `height` x `width` image (before the "default" strategy's
    one-token drop), by the processor's own counting, as `replace_image_token` does."""
    if multi_image:
        return processor.num_image_tokens + 1  # base crop + newline, as `replace_image_token`
    size = processor.image_processor.size
    crop_height = size["height"] if size.get("height") else size["shortest_edge"]
    crop_width = size["width"] if size.get("width") else size["shortest_edge"]
    return processor._get_number_of_features(height, width, crop_height, crop_width)


def unsupported_reason(processor, image: Image.Image, config=None, multi_image: bool = False) -> str | None:
    """None when the model can represent `image`, else why not, e.g. "empty image (0x5 pixels)" or "the processor
    writes 900 image tokens for a 12x2400 image (aspect ratio 200.0:1) but the model packs 892 features".

    `processor`: the model's `LlavaOnevisionProcessor`; `config`: the model's config (default: the layout the
    processor implies, so a processor / model disagreement goes unseen); `multi_image`: the image is one of several
    in a sample (base crop only). Call it on the image as the processor will get it (after `to_rgb`)."""
    width, height = image.size
    if width < 1 or height < 1:
        return f"empty image ({width}x{height} pixels)"
    layout = _model_layout(processor, config)
    try:
        tokens = processor_token_count(processor, height, width, multi_image)
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
        return (f"the processor writes {tokens} image tokens for a {width}x{height} image (aspect ratio {ratio:.1f}:1) "
                f"but the model packs {features} features")
    return None
