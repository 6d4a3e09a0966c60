"""The pre-training heads (paper Section IV-A; official `objectives.py` `compute_mlm`, `compute_itm`): masked
language modelling (`ManagerTowerForMaskedLM`), image-text matching (`ManagerTowerForImageTextMatching`) and both on
one backbone (`ManagerTowerForPreTraining`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerITMHead, BridgeTowerMLMHead

from ..config import ManagerTowerConfig
from ..modeling import ManagerTowerModel
from .base import ManagerTowerPreTrainingOutput, ManagerTowerTaskOutput, _finish, _TaskModel

IGNORE_INDEX = -100


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.to(logits.device).reshape(-1), ignore_index=IGNORE_INDEX
    )


# ---------------------------------------------------------------------------------------------------------------------
# Pre-training heads


class ManagerTowerForMaskedLM(_TaskModel):
    """Masked language modelling (`mlm_score`, BridgeTower's MLM head, not tied to the word embeddings, as the
    official code) on the final cross-modal text features; CE over `labels` (-100 ignored)."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.mlm_score = BridgeTowerMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_score.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_score.decoder = new_embeddings

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        image_embeds=None,
        labels=None,
        interpolate_pos_encoding=False,
        output_hidden_states=None,
        output_attentions=None,
        output_aggregation_weights=None,
        return_dict=None,
    ):
        """labels: B x T token ids, -100 where not masked."""
        out = self._encode(
            input_ids,
            attention_mask,
            pixel_values,
            pixel_mask,
            image_embeds,
            None,
            interpolate_pos_encoding,
            output_hidden_states,
            output_attentions,
            output_aggregation_weights,
        )
        logits = self.mlm_score(out.text_features)
        loss = _mlm_loss(logits, labels) if labels is not None else None
        return _finish(
            ManagerTowerTaskOutput(
                loss=loss,
                logits=logits,
                **self._extras(out, output_hidden_states, output_attentions, output_aggregation_weights),
            ),
            return_dict,
        )


class ManagerTowerForImageTextMatching(_TaskModel):
    """Image-text matching (`itm_score`, BridgeTower's ITM head, Linear(2D, 2)) on the pooled [text; image]
    features; CE over `labels` (1 = the text describes the image)."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.itm_score = BridgeTowerITMHead(config.hidden_size * 2)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        image_embeds=None,
        labels=None,
        interpolate_pos_encoding=False,
        output_hidden_states=None,
        output_attentions=None,
        output_aggregation_weights=None,
        return_dict=None,
    ):
        """labels: B, long in {0, 1}."""
        out = self._encode(
            input_ids,
            attention_mask,
            pixel_values,
            pixel_mask,
            image_embeds,
            None,
            interpolate_pos_encoding,
            output_hidden_states,
            output_attentions,
            output_aggregation_weights,
        )
        logits = self.itm_score(out.pooler_output)
        loss = F.cross_entropy(logits, labels.to(logits.device).long()) if labels is not None else None
        return _finish(
            ManagerTowerTaskOutput(
                loss=loss,
                logits=logits,
                **self._extras(out, output_hidden_states, output_attentions, output_aggregation_weights),
            ),
            return_dict,
        )


class ManagerTowerForPreTraining(_TaskModel):
    """MLM + ITM on one backbone, loss = mlm_loss + itm_loss (unweighted, as the official code).

    The official objectives (objectives.py `compute_mlm`, `compute_itm`) run two passes: MLM on the masked text with
    the matched image, ITM on the unmasked text with half of the images swapped. Inputs:

    - `input_ids`, `attention_mask`, `pixel_values`, `pixel_mask`: the text and its matched image.
    - `mlm_input_ids` (the masked text, same shape and mask as `input_ids`) and `mlm_labels` (-100 where not masked):
      the MLM pass, on `pixel_values`.
    - `itm_pixel_values` (`itm_pixel_mask`) and `itm_labels` (1 = matched): the ITM pass, on `input_ids`.
    - `labels`: MLM labels for `input_ids` themselves (an alias of `mlm_labels` when no `mlm_input_ids` are given).

    MLM runs on `mlm_input_ids` if given, else on `input_ids`, with `pixel_values`; ITM runs on `input_ids` with
    `itm_pixel_values` if given, else with `pixel_values`. When both come down to the same inputs (no
    `mlm_input_ids`, no `itm_pixel_values`: the one-pass batch of `data.PretrainCollator`, whose `input_ids` are
    masked, `pixel_values` partly swapped and `labels` -100 on the swapped samples) one backbone pass serves both.
    Only the objectives with inputs or labels run (`mlm_*` / `labels` alone: MLM only; `itm_*` alone: ITM only);
    with neither, both heads run on `input_ids` / `pixel_values`, without loss."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.mlm_score = BridgeTowerMLMHead(config)
        self.itm_score = BridgeTowerITMHead(config.hidden_size * 2)
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_score.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_score.decoder = new_embeddings

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        mlm_input_ids=None,
        mlm_labels=None,
        itm_pixel_values=None,
        itm_pixel_mask=None,
        itm_labels=None,
        labels=None,
        interpolate_pos_encoding=False,
        return_dict=None,
    ):
        if labels is not None and mlm_labels is not None:
            raise ValueError("ManagerTowerForPreTraining: give the MLM labels as `mlm_labels` or `labels`, not both.")
        mlm_labels = mlm_labels if mlm_labels is not None else labels
        want_mlm = mlm_input_ids is not None or mlm_labels is not None
        want_itm = itm_pixel_values is not None or itm_labels is not None
        if not want_mlm and not want_itm:
            want_mlm = want_itm = True
        passes = {}

        def run(text, image, image_mask):
            key = (id(text), id(image))
            if key not in passes:
                passes[key] = self._encode(
                    text, attention_mask, image, image_mask, interpolate_pos_encoding=interpolate_pos_encoding
                )
            return passes[key]

        mlm_logits = itm_logits = mlm_loss = itm_loss = None
        if want_mlm:
            text = mlm_input_ids if mlm_input_ids is not None else input_ids
            mlm_logits = self.mlm_score(run(text, pixel_values, pixel_mask).text_features)
            if mlm_labels is not None:
                mlm_loss = _mlm_loss(mlm_logits, mlm_labels)
        if want_itm:
            image = itm_pixel_values if itm_pixel_values is not None else pixel_values
            image_mask = itm_pixel_mask if itm_pixel_values is not None else pixel_mask
            itm_logits = self.itm_score(run(input_ids, image, image_mask).pooler_output)
            if itm_labels is not None:
                itm_loss = F.cross_entropy(itm_logits, itm_labels.to(itm_logits.device).long())
        losses = [x for x in (mlm_loss, itm_loss) if x is not None]
        loss = sum(losses[1:], losses[0]) if losses else None
        return _finish(
            ManagerTowerPreTrainingOutput(
                loss=loss, mlm_loss=mlm_loss, itm_loss=itm_loss, mlm_logits=mlm_logits, itm_logits=itm_logits
            ),
            return_dict,
        )
