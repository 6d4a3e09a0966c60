"""The processor of a tower checkpoint, from the published BridgeTower layout as well as from our own saves.

The published BridgeTower repos (BridgeTower/bridgetower-base, -itm-mlm) ship `tokenizer.json`, `vocab.json` and a
`preprocessor_config.json` without `image_processor_type`, and a `config.json` without `model_type`: transformers 5
cannot resolve `BridgeTowerProcessor.from_pretrained` there ("Unrecognized image processor"), and `AutoTokenizer`
gives a tokenizer without RoBERTa's special tokens. So the processor is built by class: RoBERTa's tokenizer and
BridgeTower's image processor (its PIL backend where torchvision is missing), each read from the folder.
"""

from __future__ import annotations

from pathlib import Path

from transformers import BridgeTowerProcessor, RobertaTokenizer
from transformers.utils import is_torchvision_available

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def image_processor_class():
    """BridgeTower's image processor: the torchvision backend when installed, else the PIL one."""
    import transformers

    if is_torchvision_available():
        return transformers.BridgeTowerImageProcessor
    return transformers.BridgeTowerImageProcessorPil


def load_tower_processor(path: str | Path) -> BridgeTowerProcessor:
    """`BridgeTowerProcessor` of a checkpoint folder (published BridgeTower layout or a `save_pretrained` one)."""
    path = Path(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} has no tokenizer files (one of {TOKENIZER_FILES}); a tower checkpoint needs "
            f"RoBERTa's tokenizer next to its weights"
        )
    return BridgeTowerProcessor(
        image_processor=image_processor_class().from_pretrained(path), tokenizer=RobertaTokenizer.from_pretrained(path)
    )
