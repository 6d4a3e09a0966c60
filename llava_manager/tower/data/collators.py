"""One collator per task: `TowerDataset` items -> a batch of BridgeTower model inputs (`input_ids`,
`attention_mask` from the tokenizer, at most `max_length` = 50 tokens, truncated; `pixel_values`, `pixel_mask` from
the image processor; by `encode_texts` / `encode_images`) and the task's targets:

- `PretrainCollator`: the caption and its image, + `mlm_input_ids` / `mlm_labels` (masked-language-modelling
  inputs and targets) and `itm_pixel_values` / `itm_pixel_mask` / `itm_labels` (1 = the caption's own image,
  0 = another sample's image).
- `VQACollator`: + `labels`, float soft scores over the answer vocabulary (BCE targets); none for test questions.
- `SNLIVECollator`: + `labels` (contradiction 0, neutral 1, entailment 2).
- `NLVR2Collator`: the left image as `pixel_values` / `pixel_mask`, the right as `pixel_values_2` / `pixel_mask_2`,
  + `labels` (1 = True).
- `RetrievalCollator`: image-caption pairs only (+ `image_ids` on request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .dataset import MAX_TEXT_LENGTH, encode_images, encode_texts
from .vqav2 import vqa_targets

IGNORE_INDEX = -100  # the label of a position without a target (`mlm_labels`)


@dataclass
class _TowerCollator:
    """Text of `record[text_key]` and the first image of each item (`TowerDataset` items)."""

    processor: Any
    max_length: int = MAX_TEXT_LENGTH
    padding: str | bool = "longest"
    text_key = "text"

    def texts(self, items: list[dict]) -> list[str]:
        return [item["record"][self.text_key] for item in items]

    def encode(self, items: list[dict], images: list[Image.Image] | None = None) -> dict[str, torch.Tensor]:
        batch = encode_texts(self.processor, self.texts(items), self.max_length, self.padding)
        batch.update(encode_images(self.processor, images or [item["images"][0] for item in items]))
        return batch


def itm_pairs(image_keys: list[Any], generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[int]]:
    """Image-text matching in a batch: (itm_labels, image_order). As ManagerTower's `compute_itm`
    (src/modules/objectives.py), half the batch (B - B // 2 samples, chosen at random) gets another sample's image,
    label 0, the rest keep their own, label 1; here the other image comes from the batch, drawn among the samples
    whose image (`image_keys`) differs, and a sample with none stays matched. Sample i is shown image
    `image_order[i]`."""
    size = len(image_keys)
    labels, order = torch.ones(size, dtype=torch.long), list(range(size))
    for i in torch.randperm(size, generator=generator)[: size - size // 2].tolist():
        others = [j for j in range(size) if image_keys[j] != image_keys[i]]
        if others:
            order[i] = others[int(torch.randint(len(others), (1,), generator=generator))]
            labels[i] = 0
    return labels, order


@dataclass
class PretrainCollator(_TowerCollator):
    """Masked language modelling + image-text matching on image-caption records (`read_image_captions`), in the
    two passes of ManagerTower's objectives.py: MLM on the masked caption with its own image, ITM on the unmasked
    caption with an image that is another sample's for half the batch.

    - `input_ids`, `attention_mask`, `pixel_values`, `pixel_mask`: the caption, unmasked, and its own image;
    - `mlm_input_ids`, `mlm_labels`: transformers' `DataCollatorForLanguageModeling` masking (as ManagerTower's
      datamodule_base.py): each text token with probability `mlm_probability` (0.15; never `<s>`, `</s>` or
      padding) becomes a target; of those 80% are replaced by `<mask>`, 10% by a random token, 10% kept;
      `mlm_labels` is -100 elsewhere;
    - `itm_pixel_values`, `itm_pixel_mask`, `itm_labels`: the images of `itm_pairs` (1 = the caption's own image).
      `itm=False` leaves the ITM keys out.

    Reproducible: the masking generator of the transformers collator is seeded with `seed` (+ the DataLoader
    worker id in a worker) and drives the ITM draws too; `seed=None` uses torch's global generator."""

    mlm_probability: float = 0.15
    itm: bool = True
    seed: int | None = 0
    masker: Any = field(init=False, repr=False)
    text_key = "caption"

    def __post_init__(self) -> None:
        from transformers import DataCollatorForLanguageModeling

        self.masker = DataCollatorForLanguageModeling(
            tokenizer=self.processor.tokenizer,
            mlm=True,
            mlm_probability=self.mlm_probability,
            seed=self.seed,
            return_tensors="pt",
        )

    def generator(self) -> torch.Generator | None:
        if self.masker.seed is not None and self.masker.generator is None:
            self.masker.create_rng()
        return self.masker.generator

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        generator = self.generator()
        batch = encode_texts(self.processor, self.texts(items), self.max_length, self.padding, special_tokens_mask=True)
        batch["mlm_input_ids"], batch["mlm_labels"] = self.masker.torch_mask_tokens(
            batch["input_ids"].clone(), special_tokens_mask=batch.pop("special_tokens_mask")
        )
        images = [item["images"][0] for item in items]
        batch.update(encode_images(self.processor, images))
        if self.itm:
            itm_labels, order = itm_pairs([item["record"]["image"] for item in items], generator)
            swapped = encode_images(self.processor, [images[j] for j in order])
            batch["itm_pixel_values"], batch["itm_pixel_mask"] = swapped["pixel_values"], swapped["pixel_mask"]
            batch["itm_labels"] = itm_labels
        return batch


@dataclass
class VQACollator(_TowerCollator):
    """VQAv2 questions (`read_vqav2` records) with `labels` = [batch, len(label2ans)] float soft scores
    (`vqa_targets`; zero for answers outside the vocabulary), the BCE targets of ManagerTower's `compute_vqa`. A
    batch of test questions (no annotations) has no `labels`."""

    label2ans: list[str] = field(default_factory=list)
    text_key = "question"

    def __post_init__(self) -> None:
        self.ans2label = {answer: i for i, answer in enumerate(self.label2ans)}

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.encode(items)
        annotated = [item["record"].get("answer_counts") is not None for item in items]
        if any(annotated) and not all(annotated):
            raise ValueError("a VQA batch mixes annotated and test questions")
        if all(annotated):
            labels = torch.zeros(len(items), len(self.label2ans))
            for row, item in enumerate(items):
                indices, scores = vqa_targets(item["record"], self.ans2label)
                labels[row, indices] = torch.tensor(scores)
            batch["labels"] = labels
        return batch


@dataclass
class SNLIVECollator(_TowerCollator):
    """SNLI-VE (`read_snli_ve` records): the hypothesis with the premise image; `labels` long (`SNLI_VE_LABELS`)."""

    text_key = "hypothesis"

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.encode(items)
        batch["labels"] = torch.tensor([item["record"]["label"] for item in items], dtype=torch.long)
        return batch


@dataclass
class NLVR2Collator(_TowerCollator):
    """NLVR2 (`read_nlvr2` records): the sentence with the left image (`pixel_values`, `pixel_mask`) and with the
    right image (`pixel_values_2`, `pixel_mask_2`), as ManagerTower's `compute_nlvr2` runs the pair (sentence,
    image) twice; `labels` long, 1 = True."""

    text_key = "sentence"

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.encode(items)
        right = encode_images(self.processor, [item["images"][1] for item in items])
        batch["pixel_values_2"], batch["pixel_mask_2"] = right["pixel_values"], right["pixel_mask"]
        batch["labels"] = torch.tensor([item["record"]["label"] for item in items], dtype=torch.long)
        return batch


@dataclass
class RetrievalCollator(_TowerCollator):
    """Image-caption pairs for retrieval fine-tuning (`caption_pairs` records); with `return_image_ids`, also
    `image_ids` (the pairs' `image_index`, to tell captions of the same image apart when drawing negatives; not a
    model input)."""

    return_image_ids: bool = False
    text_key = "caption"

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.encode(items)
        if self.return_image_ids:
            batch["image_ids"] = torch.tensor([item["record"]["image_index"] for item in items], dtype=torch.long)
        return batch
