"""What the families with a Pixtral tower (Mistral3, Pixtral-12B) share: transformers' `PixtralProcessor`,
importable with or without torchvision, and random pixels of one image sized as its image processor sizes it.

The processor itself runs on its PIL image processor (`PixtralImageProcessorPil`), but its module imports one helper,
`get_resize_output_image_size`, from the torchvision image processor's module, so on a machine with only a CPU torch
`transformers.PixtralProcessor` is a placeholder that cannot be built. Where torchvision is missing, the processor's
module is imported with that one import answered by the PIL image processor's module, which defines the same helper
with the same signature: the class is transformers' own, unchanged.
"""

from __future__ import annotations

import importlib
import sys
from functools import cache

import numpy as np
import torch
from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size
from transformers.utils import is_torchvision_available

_MODULE = "transformers.models.pixtral.processing_pixtral"
_TORCHVISION_MODULE = "transformers.models.pixtral.image_processing_pixtral"
_PIL_MODULE = "transformers.models.pixtral.image_processing_pil_pixtral"


@cache
def pixtral_processor_class() -> type:
    """transformers' `PixtralProcessor` class (not the placeholder transformers exports without torchvision)."""
    if is_torchvision_available() or _MODULE in sys.modules:
        return importlib.import_module(_MODULE).PixtralProcessor
    pil = importlib.import_module(_PIL_MODULE)
    held = sys.modules.get(_TORCHVISION_MODULE)
    sys.modules[_TORCHVISION_MODULE] = pil  # answers `from .image_processing_pixtral import ...` for this import only
    try:
        module = importlib.import_module(_MODULE)
    finally:
        if held is None:
            del sys.modules[_TORCHVISION_MODULE]
        else:
            sys.modules[_TORCHVISION_MODULE] = held
    return module.PixtralProcessor


def pixtral_pixel_inputs(vision_config, height: int, width: int, batch_size: int, dtype, device) -> dict:
    """Random pixels of one `height` x `width` image per sample at its own size, as the Pixtral image processor sizes
    it (its own helper: scaled down to the tower's `image_size` at most, sides rounded up to whole patches), with the
    `image_sizes` the model splits them by."""
    shape = np.empty((height, width, 3), dtype=np.uint8)  # only its shape is read
    h, w = get_resize_output_image_size(shape, vision_config.image_size, vision_config.patch_size, "channels_last")
    return {
        "pixel_values": torch.randn(batch_size, 3, h, w, dtype=dtype, device=device),
        "image_sizes": torch.tensor([[h, w]] * batch_size, device=device),
    }
