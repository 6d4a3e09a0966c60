"""transformers' `PixtralProcessor` (Mistral3, Pixtral-12B), importable with or without torchvision.

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
