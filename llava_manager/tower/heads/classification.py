"""The classification heads of fine-tuning: VQAv2 (`ManagerTowerForQuestionAnswering`), SNLI-VE
(`ManagerTowerForVisualEntailment`) and NLVR2 (`ManagerTowerForNLVR2`, with its third token type), each the official
`classifier` on the pooled features."""

from __future__ import annotations

import contextvars
import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ManagerTowerConfig
from ..modeling import ManagerTowerModel
from .base import ManagerTowerTaskOutput, _finish, _TaskModel, classifier, head_width

SNLI_VE_CLASSES = 3
NLVR2_CLASSES = 2


class ManagerTowerForQuestionAnswering(_TaskModel):
    """VQAv2 (`vqa_classifier` on the pooled [text; image] features, `config.num_labels` answers: 3129 for the
    official answer vocabulary). `labels` are the soft scores B x num_labels (`data.VQACollator`); loss =
    BCEWithLogits (mean over B x num_labels) * num_labels, as the official `compute_vqa`."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.vqa_classifier = classifier(config.hidden_size * 2, head_width(config), config.num_labels)
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
        logits = self.vqa_classifier(out.pooler_output)
        loss = None
        if labels is not None:
            labels = labels.to(device=logits.device, dtype=logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, labels) * labels.shape[1]
        return _finish(
            ManagerTowerTaskOutput(
                loss=loss,
                logits=logits,
                **self._extras(out, output_hidden_states, output_attentions, output_aggregation_weights),
            ),
            return_dict,
        )


class ManagerTowerForVisualEntailment(_TaskModel):
    """SNLI-VE (`snli_classifier`, 3 classes: contradiction 0, neutral 1, entailment 2, as `data.SNLI_VE_LABELS`) on
    the pooled features; CE."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.snli_classifier = classifier(config.hidden_size * 2, head_width(config), SNLI_VE_CLASSES)
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
        logits = self.snli_classifier(out.pooler_output)
        loss = F.cross_entropy(logits, labels.to(logits.device).long()) if labels is not None else None
        return _finish(
            ManagerTowerTaskOutput(
                loss=loss,
                logits=logits,
                **self._extras(out, output_hidden_states, output_attentions, output_aggregation_weights),
            ),
            return_dict,
        )


_KEEP_TOKEN_TYPES = contextvars.ContextVar("managertower_nlvr2_keep_token_types", default=False)


class ManagerTowerForNLVR2(_TaskModel):
    """NLVR2: the sentence with each of its two images (`pixel_values` with image token type 1, `pixel_values_2`
    with token type 2, as the official `compute_nlvr2`), `nlvr2_classifier` on [pooled_1; pooled_2] (4D), 2 classes
    (1 = True); CE.

    Token type 2 needs `config.num_token_types >= 3`. A config with 2 is copied with 3 by `__init__` (a fresh model
    then starts row 2 as a copy of row 1, the image type), and `from_pretrained` on a checkpoint with 2 rows (pre-
    training, another task) loads it as it is, then grows the embedding to 3 rows, row 2 = row 1 (the official code
    does the same after loading its pre-trained checkpoint); the saved config then says 3."""

    def __init__(self, config: ManagerTowerConfig):
        grow = config.num_token_types < 3 and not _KEEP_TOKEN_TYPES.get()
        if grow:
            config = copy.deepcopy(config)
            config.num_token_types = 3
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.nlvr2_classifier = classifier(config.hidden_size * 4, head_width(config), NLVR2_CLASSES)
        self.post_init()
        if grow:
            with torch.no_grad():
                weight = self.managertower.token_type_embeddings.weight
                if weight.device.type != "meta":
                    weight[2].copy_(weight[1])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        token = _KEEP_TOKEN_TYPES.set(True)
        try:
            loaded = super().from_pretrained(*args, **kwargs)
        finally:
            _KEEP_TOKEN_TYPES.reset(token)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.grow_token_types()
        return loaded

    def grow_token_types(self, rows: int = 3) -> None:
        """Give the backbone `rows` token types, the new ones copies of the image type (row 1)."""
        old = self.managertower.token_type_embeddings
        if old.num_embeddings >= rows:
            return
        new = nn.Embedding(rows, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight[: old.num_embeddings].copy_(old.weight)
            new.weight[old.num_embeddings :].copy_(old.weight[1:2].expand(rows - old.num_embeddings, -1))
        new.weight.requires_grad_(old.weight.requires_grad)
        self.managertower.token_type_embeddings = new
        self.config.num_token_types = rows
        self.managertower.config.num_token_types = rows

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        pixel_values_2=None,
        pixel_mask_2=None,
        image_embeds=None,
        image_embeds_2=None,
        labels=None,
        interpolate_pos_encoding=False,
        output_hidden_states=None,
        output_attentions=None,
        output_aggregation_weights=None,
        return_dict=None,
    ):
        if pixel_values_2 is None and image_embeds_2 is None:
            raise ValueError("ManagerTowerForNLVR2 needs the second image (pixel_values_2).")
        outs = [
            self._encode(
                input_ids,
                attention_mask,
                pixels,
                mask,
                embeds,
                index,
                interpolate_pos_encoding,
                output_hidden_states,
                output_attentions,
                output_aggregation_weights,
            )
            for index, (pixels, mask, embeds) in enumerate(
                [(pixel_values, pixel_mask, image_embeds), (pixel_values_2, pixel_mask_2, image_embeds_2)], start=1
            )
        ]
        logits = self.nlvr2_classifier(torch.cat([o.pooler_output for o in outs], dim=-1))
        loss = F.cross_entropy(logits, labels.to(logits.device).long()) if labels is not None else None
        extras = [self._extras(o, output_hidden_states, output_attentions, output_aggregation_weights) for o in outs]
        pairs = {key: (extras[0][key], extras[1][key]) if extras[0][key] is not None else None for key in extras[0]}
        return _finish(ManagerTowerTaskOutput(loss=loss, logits=logits, **pairs), return_dict)
