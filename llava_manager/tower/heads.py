"""ManagerTower's task models: pre-training (MLM + ITM), VQAv2, SNLI-VE, NLVR2 and Flickr30K retrieval (ITC + ITM).

Each class is a `ManagerTowerPreTrainedModel` with the backbone in `self.managertower` (`ManagerTowerModel`) and
its head under the attribute name of the official code (github.com/LooperXX/ManagerTower, `src/modules/
mt_module.py`, `heads.py`, `objectives.py`), so the official checkpoints map by prefix:

    ManagerTowerForMaskedLM             mlm_score          transformers' BridgeTowerMLMHead (not tied), on text_features
    ManagerTowerForImageTextMatching    itm_score          transformers' BridgeTowerITMHead(2D), on pooler_output
    ManagerTowerForPreTraining          mlm_score, itm_score; loss = mlm_loss + itm_loss (unweighted)
    ManagerTowerForQuestionAnswering    vqa_classifier     Linear(2D, 2D s), LN, GELU, Linear(2D s, num_labels); BCE * C
    ManagerTowerForVisualEntailment     snli_classifier    Linear(2D, 2D s), LN, GELU, Linear(2D s, 3); CE
    ManagerTowerForNLVR2                nlvr2_classifier   Linear(4D, 2D s), LN, GELU, Linear(2D s, 2); CE
    ManagerTowerForImageTextRetrieval   itc_text_head.fc, itc_image_head.fc (Linear(D_text|D_vision, 256)),
                                        temperature (0.07, clamped to [0.001, 0.5]), itm_score; loss = itc + itm

(D = `config.hidden_size`, s = `config.head_hidden_scale`; the official key names are `vqa_classifier.{0,1,3}`,
`snli_classifier.*`, `nlvr2_classifier.*`, `itm_score.fc`, `mlm_score.{transform,decoder,bias}`, `temperature`;
the ITC heads are `cross_modal_itc_{text,image}_head.fc` there.) The heads are the same code for every
`manager_type`, "bridge" included, so BridgeTower and ManagerTower compare under one implementation. New layers are
initialised as BridgeTower's (`_init_weights`: Linear N(0, 0.05 * initializer_factor), zero bias, LayerNorm 1 / 0);
the official code used N(0, 0.02).

`retrieval_scores(model, image_batches, text_batches, k)` is the official Flickr30K evaluation
(`compute_irtr_itm_itc_recall`): ITC similarities for every image-text pair, the top k of each image and of each
text re-scored by the ITM positive logit, -100 elsewhere, the elementwise max of the two; `metrics.retrieval_recall`
turns the matrix into TR@k / IR@k.
"""

from __future__ import annotations

import contextvars
import copy
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.models.bridgetower.modeling_bridgetower import (
    BridgeTowerContrastiveHead,
    BridgeTowerITMHead,
    BridgeTowerMLMHead,
)

from .config import ManagerTowerConfig
from .modeling import ManagerTowerModel, ManagerTowerPreTrainedModel

IGNORE_INDEX = -100
ITC_TEMPERATURE = 0.07  # the official `temperature` (src/config.py), learnable, clamped to [0.001, 0.5] every step
TEMPERATURE_RANGE = (0.001, 0.5)
NOT_RANKED = -100.0  # the score of a pair outside the top k in retrieval evaluation (official)
SNLI_VE_CLASSES = 3
NLVR2_CLASSES = 2


# ---------------------------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class ManagerTowerTaskOutput(ModelOutput):
    """Output of the single-head task models.

    loss: the task loss, when `labels` are given.
    logits: MLM B x T x V; ITM B x 2; VQA B x num_labels; SNLI-VE B x 3; NLVR2 B x 2.
    hidden_states / attentions / aggregation_weights: the backbone's (`ManagerTowerModelOutput`), when asked for;
        NLVR2 gives a pair (first image's pass, second image's pass) of each.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    aggregation_weights: tuple | None = None


@dataclass
class ManagerTowerPreTrainingOutput(ModelOutput):
    """loss = mlm_loss + itm_loss (those whose labels were given); mlm_logits B x T x V, itm_logits B x 2."""

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    itm_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None


@dataclass
class ManagerTowerRetrievalOutput(ModelOutput):
    """Output of `ManagerTowerForImageTextRetrieval`.

    loss = itc_loss + itm_loss (with `return_loss`).
    logits_per_text: B x B, ITC logits text -> image (cosine similarity / temperature); logits_per_image its transpose.
    itm_logits: with `return_loss`, 3B x 2 for the pairs [(T, I), (T, I_neg), (T_neg, I)], labels `itm_labels`
        = [1] * B + [0] * 2B; without, B x 2 for the given pairs.
    text_embeds / image_embeds: the L2-normalised ITC features, B x contrastive_hidden_size.
    hidden_states / attentions / aggregation_weights: the backbone's, for the given (positive) pairs, when asked for.
    """

    loss: torch.Tensor | None = None
    itc_loss: torch.Tensor | None = None
    itm_loss: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    aggregation_weights: tuple | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces


def classifier(in_features: int, hidden: int, num_classes: int) -> nn.Sequential:
    """The official task classifier: Linear, LayerNorm, GELU (exact), Linear (state-dict keys 0, 1, 3)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU(),
                         nn.Linear(hidden, num_classes))


def head_width(config: ManagerTowerConfig) -> int:
    """The classifiers' hidden width: 2 D * head_hidden_scale (the published VQAv2 / SNLI-VE runs after
    pre-training used 2, NLVR2 1)."""
    return 2 * config.hidden_size * int(getattr(config, "head_hidden_scale", 1))


def _flag(value: bool | None, config, name: str) -> bool:
    return bool(getattr(config, name, False) if value is None else value)


def _finish(output: ModelOutput, return_dict: bool | None):
    return output if return_dict is not False else output.to_tuple()


class _TaskModel(ManagerTowerPreTrainedModel):
    """A backbone `managertower` and helpers to run it. The forwards take named arguments only (a misspelt batch key
    fails loudly); their losses are plain means, so `Trainer` divides them by the gradient-accumulation steps."""

    accepts_loss_kwargs = False

    def _encode(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, image_embeds=None,
                image_token_type_idx=None, interpolate_pos_encoding=False, output_hidden_states=None,
                output_attentions=None, output_aggregation_weights=None):
        return self.managertower(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask,
            image_embeds=image_embeds, image_token_type_idx=image_token_type_idx,
            interpolate_pos_encoding=interpolate_pos_encoding, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            output_aggregation_weights=output_aggregation_weights, return_dict=True)

    def _extras(self, out, output_hidden_states, output_attentions, output_aggregation_weights) -> dict:
        """The backbone outputs that were asked for (the backbone computes hidden states and attentions anyway)."""
        return dict(
            hidden_states=out.hidden_states if _flag(output_hidden_states, self.config, "output_hidden_states")
            else None,
            attentions=out.attentions if _flag(output_attentions, self.config, "output_attentions") else None,
            aggregation_weights=out.aggregation_weights if output_aggregation_weights else None,
        )


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.to(logits.device).reshape(-1),
                           ignore_index=IGNORE_INDEX)


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

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pixel_values=None, pixel_mask=None,
                image_embeds=None, labels=None, interpolate_pos_encoding=False, output_hidden_states=None,
                output_attentions=None, output_aggregation_weights=None, return_dict=None):
        """labels: B x T token ids, -100 where not masked."""
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, image_embeds, None,
                           interpolate_pos_encoding, output_hidden_states, output_attentions,
                           output_aggregation_weights)
        logits = self.mlm_score(out.text_features)
        loss = _mlm_loss(logits, labels) if labels is not None else None
        return _finish(ManagerTowerTaskOutput(loss=loss, logits=logits, **self._extras(
            out, output_hidden_states, output_attentions, output_aggregation_weights)), return_dict)


class ManagerTowerForImageTextMatching(_TaskModel):
    """Image-text matching (`itm_score`, BridgeTower's ITM head, Linear(2D, 2)) on the pooled [text; image]
    features; CE over `labels` (1 = the text describes the image)."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.itm_score = BridgeTowerITMHead(config.hidden_size * 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pixel_values=None, pixel_mask=None,
                image_embeds=None, labels=None, interpolate_pos_encoding=False, output_hidden_states=None,
                output_attentions=None, output_aggregation_weights=None, return_dict=None):
        """labels: B, long in {0, 1}."""
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, image_embeds, None,
                           interpolate_pos_encoding, output_hidden_states, output_attentions,
                           output_aggregation_weights)
        logits = self.itm_score(out.pooler_output)
        loss = F.cross_entropy(logits, labels.to(logits.device).long()) if labels is not None else None
        return _finish(ManagerTowerTaskOutput(loss=loss, logits=logits, **self._extras(
            out, output_hidden_states, output_attentions, output_aggregation_weights)), return_dict)


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

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pixel_values=None, pixel_mask=None,
                mlm_input_ids=None, mlm_labels=None, itm_pixel_values=None, itm_pixel_mask=None, itm_labels=None,
                labels=None, interpolate_pos_encoding=False, return_dict=None):
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
                passes[key] = self._encode(text, attention_mask, image, image_mask,
                                           interpolate_pos_encoding=interpolate_pos_encoding)
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
        return _finish(ManagerTowerPreTrainingOutput(loss=loss, mlm_loss=mlm_loss, itm_loss=itm_loss,
                                                     mlm_logits=mlm_logits, itm_logits=itm_logits), return_dict)


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning heads


class ManagerTowerForQuestionAnswering(_TaskModel):
    """VQAv2 (`vqa_classifier` on the pooled [text; image] features, `config.num_labels` answers: 3129 for the
    official answer vocabulary). `labels` are the soft scores B x num_labels (`data.VQACollator`); loss =
    BCEWithLogits (mean over B x num_labels) * num_labels, as the official `compute_vqa`."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.vqa_classifier = classifier(config.hidden_size * 2, head_width(config), config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pixel_values=None, pixel_mask=None,
                image_embeds=None, labels=None, interpolate_pos_encoding=False, output_hidden_states=None,
                output_attentions=None, output_aggregation_weights=None, return_dict=None):
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, image_embeds, None,
                           interpolate_pos_encoding, output_hidden_states, output_attentions,
                           output_aggregation_weights)
        logits = self.vqa_classifier(out.pooler_output)
        loss = None
        if labels is not None:
            labels = labels.to(device=logits.device, dtype=logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, labels) * labels.shape[1]
        return _finish(ManagerTowerTaskOutput(loss=loss, logits=logits, **self._extras(
            out, output_hidden_states, output_attentions, output_aggregation_weights)), return_dict)


class ManagerTowerForVisualEntailment(_TaskModel):
    """SNLI-VE (`snli_classifier`, 3 classes: contradiction 0, neutral 1, entailment 2, as `data.SNLI_VE_LABELS`) on
    the pooled features; CE."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        self.snli_classifier = classifier(config.hidden_size * 2, head_width(config), SNLI_VE_CLASSES)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pixel_values=None, pixel_mask=None,
                image_embeds=None, labels=None, interpolate_pos_encoding=False, output_hidden_states=None,
                output_attentions=None, output_aggregation_weights=None, return_dict=None):
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, image_embeds, None,
                           interpolate_pos_encoding, output_hidden_states, output_attentions,
                           output_aggregation_weights)
        logits = self.snli_classifier(out.pooler_output)
        loss = F.cross_entropy(logits, labels.to(logits.device).long()) if labels is not None else None
        return _finish(ManagerTowerTaskOutput(loss=loss, logits=logits, **self._extras(
            out, output_hidden_states, output_attentions, output_aggregation_weights)), return_dict)


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
            new.weight[old.num_embeddings:].copy_(old.weight[1:2].expand(rows - old.num_embeddings, -1))
        new.weight.requires_grad_(old.weight.requires_grad)
        self.managertower.token_type_embeddings = new
        self.config.num_token_types = rows
        self.managertower.config.num_token_types = rows

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pixel_values=None, pixel_mask=None,
                pixel_values_2=None, pixel_mask_2=None, image_embeds=None, image_embeds_2=None, labels=None,
                interpolate_pos_encoding=False, output_hidden_states=None, output_attentions=None,
                output_aggregation_weights=None, return_dict=None):
        if pixel_values_2 is None and image_embeds_2 is None:
            raise ValueError("ManagerTowerForNLVR2 needs the second image (pixel_values_2).")
        outs = [self._encode(input_ids, attention_mask, pixels, mask, embeds, index, interpolate_pos_encoding,
                             output_hidden_states, output_attentions, output_aggregation_weights)
                for index, (pixels, mask, embeds) in enumerate(
                    [(pixel_values, pixel_mask, image_embeds), (pixel_values_2, pixel_mask_2, image_embeds_2)],
                    start=1)]
        logits = self.nlvr2_classifier(torch.cat([o.pooler_output for o in outs], dim=-1))
        loss = F.cross_entropy(logits, labels.to(logits.device).long()) if labels is not None else None
        extras = [self._extras(o, output_hidden_states, output_attentions, output_aggregation_weights)
                  for o in outs]
        pairs = {key: (extras[0][key], extras[1][key]) if extras[0][key] is not None else None for key in extras[0]}
        return _finish(ManagerTowerTaskOutput(loss=loss, logits=logits, **pairs), return_dict)


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval


class ManagerTowerForImageTextRetrieval(_TaskModel):
    """Image-text retrieval as the official Flickr30K fine-tuning (`compute_itm_itc`, ALBEF-style): ITC + ITM.

    ITC: `itc_text_head.fc` on the text tower's last layer at `<s>` (`text_unimodal[:, 0]`, before any cross-modal
    projection) and `itc_image_head.fc` on CLIP's `ln_post` of the last vision layer at the class token
    (`image_unimodal[:, 0]`), both L2-normalised; logits = similarity / `temperature` (clamped to [0.001, 0.5] at
    each forward, without gradient, as the official code). Pairs whose `image_ids` agree are positives; targets are
    uniform over the positives; itc_loss = (CE_image->text + CE_text->image) / 2.

    ITM: for each text one negative image, for each image one negative text, drawn (`torch.multinomial`, from
    `generator` or the global RNG) from the softmax of the ITC logits with the positives zeroed; `itm_score` on
    [(T, I), (T, I_neg), (T_neg, I)] with labels [1] * B + [0] * 2B; CE. loss = itc_loss + itm_loss.

    The negatives go through the whole backbone again (one pass of 2B pairs; the official default reuses the cached
    unimodal layers and reruns only the cross-modal part, the same numbers in eval mode); the batch is not gathered
    across processes (the official code all-gathers the ITC features and draws negatives from the global batch)."""

    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        self.managertower = ManagerTowerModel(config)
        width = int(getattr(config, "contrastive_hidden_size", 256))
        self.itc_text_head = BridgeTowerContrastiveHead(config.text_config.hidden_size, width)
        self.itc_image_head = BridgeTowerContrastiveHead(config.vision_config.hidden_size, width)
        self.temperature = nn.Parameter(torch.tensor(ITC_TEMPERATURE))
        self.itm_score = BridgeTowerITMHead(config.hidden_size * 2)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, ManagerTowerForImageTextRetrieval):
            init.constant_(module.temperature, ITC_TEMPERATURE)

    # -- the pieces, also used by `retrieval_scores` ------------------------------------------------------------
    def text_itc_features(self, input_ids, attention_mask=None) -> torch.Tensor:
        """L2-normalised ITC features of texts from the text tower alone, B x contrastive_hidden_size."""
        return self._itc_text(self.managertower.encode_text(input_ids, attention_mask))

    def image_itc_features(self, pixel_values, interpolate_pos_encoding=False) -> torch.Tensor:
        """L2-normalised ITC features of images from the vision tower alone, B x contrastive_hidden_size."""
        return self._itc_image(self.managertower.encode_image(pixel_values, interpolate_pos_encoding))

    def _itc_text(self, text_unimodal):
        return F.normalize(self.itc_text_head(text_unimodal[:, 0]), dim=-1, p=2)

    def _itc_image(self, image_unimodal):
        return F.normalize(self.itc_image_head(image_unimodal[:, 0]), dim=-1, p=2)

    def itm_logits(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None,
                   interpolate_pos_encoding=False) -> torch.Tensor:
        """ITM logits (B x 2) of the given pairs; column 1 is the retrieval score."""
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask,
                           interpolate_pos_encoding=interpolate_pos_encoding)
        return self.itm_score(out.pooler_output)

    def clamp_temperature(self) -> None:
        with torch.no_grad():
            self.temperature.clamp_(*TEMPERATURE_RANGE)

    # -- training ---------------------------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pixel_values=None, pixel_mask=None,
                image_ids=None, return_loss=True, generator: torch.Generator | None = None,
                interpolate_pos_encoding=False, output_hidden_states=None, output_attentions=None,
                output_aggregation_weights=None, return_dict=None):
        """B matched pairs (text b describes image b). image_ids: B ids, pairs with equal ids are all positives
        (captions of the same image); default: only the diagonal. Without `return_loss`: the ITC logits and the ITM
        logits of the given pairs, no negatives."""
        self.clamp_temperature()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, None, None,
                           interpolate_pos_encoding, output_hidden_states, output_attentions,
                           output_aggregation_weights)
        text_embeds, image_embeds = self._itc_text(out.text_unimodal), self._itc_image(out.image_unimodal)
        logits_per_text = text_embeds @ image_embeds.t() / self.temperature
        logits_per_image = logits_per_text.t()
        positive_itm = self.itm_score(out.pooler_output)
        extras = self._extras(out, output_hidden_states, output_attentions, output_aggregation_weights)
        if not return_loss:
            return _finish(ManagerTowerRetrievalOutput(
                logits_per_text=logits_per_text, logits_per_image=logits_per_image, itm_logits=positive_itm,
                text_embeds=text_embeds, image_embeds=image_embeds, **extras), return_dict)

        batch = input_ids.shape[0]
        ids = torch.arange(batch) if image_ids is None else torch.as_tensor(image_ids).view(-1)
        ids = ids.to(logits_per_text.device)
        positives = ids[:, None] == ids[None, :]
        targets = positives.float() / positives.float().sum(dim=1, keepdim=True)
        itc_loss = (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2

        with torch.no_grad():
            weights_t2i = F.softmax(logits_per_text.float(), dim=1).masked_fill(positives, 0)
            weights_i2t = F.softmax(logits_per_image.float(), dim=1).masked_fill(positives, 0)
        negative_images = sample_negatives(weights_t2i, generator)  # one image per text
        negative_texts = sample_negatives(weights_i2t, generator)  # one text per image
        negative_pixel_mask = None
        if pixel_mask is not None:
            negative_pixel_mask = torch.cat([pixel_mask[negative_images], pixel_mask])
        negatives = self._encode(
            torch.cat([input_ids, input_ids[negative_texts]]),
            torch.cat([attention_mask, attention_mask[negative_texts]]),
            torch.cat([pixel_values[negative_images], pixel_values]), negative_pixel_mask,
            interpolate_pos_encoding=interpolate_pos_encoding)
        itm_logits = torch.cat([positive_itm, self.itm_score(negatives.pooler_output)])
        itm_labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)])
        itm_labels = itm_labels.to(itm_logits.device)
        itm_loss = F.cross_entropy(itm_logits, itm_labels)
        return _finish(ManagerTowerRetrievalOutput(
            loss=itc_loss + itm_loss, itc_loss=itc_loss, itm_loss=itm_loss, logits_per_text=logits_per_text,
            logits_per_image=logits_per_image, itm_logits=itm_logits, itm_labels=itm_labels,
            text_embeds=text_embeds, image_embeds=image_embeds, **extras), return_dict)


def sample_negatives(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row, drawn from the row's (unnormalised) `weights`; a row with nothing left (every candidate a
    positive) draws uniformly, as the official fallback (weights + 1e-5)."""
    empty = weights.sum(dim=1, keepdim=True) <= 0
    weights = torch.where(empty, torch.ones_like(weights), weights)
    if generator is not None and generator.device != weights.device:
        weights = weights.to(generator.device)
    return torch.multinomial(weights, 1, generator=generator).view(-1).to(empty.device)


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval evaluation


def _field(batch: Any, key: str):
    if isinstance(batch, torch.Tensor):
        return batch if key in ("pixel_values", "input_ids") else None
    return batch.get(key) if hasattr(batch, "get") else None


@torch.no_grad()
def retrieval_scores(model: ManagerTowerForImageTextRetrieval, image_batches: Iterable, text_batches: Iterable,
                     k: int = 128, batch_size: int | None = None, progress: bool = True,
                     return_itc: bool = False):
    """The official Flickr30K scores (`compute_irtr_itm_itc_recall`): n_images x n_texts.

    image_batches: iterable of dicts with `pixel_values` (and optionally `pixel_mask`), or of pixel tensors;
    text_batches: iterable of dicts with `input_ids` (and `attention_mask`), or of id tensors. Texts of batches of
    different lengths are padded to the longest with the pad token, masked.

    1. ITC similarities of every image and text, from the unimodal towers (`image_itc_features`, `text_itc_features`).
    2. For each image, its top-k texts by ITC are re-scored by the ITM positive logit (`itm_score(...)[:, 1]`, the
       raw logit), the other texts get -100; for each text likewise its top-k images.
    3. The result is the elementwise max of the two matrices.

    A pair in both top-k sets is scored once (the same number in eval mode). Each pair goes through the whole backbone
    (`batch_size` pairs at a time, default k); a tqdm bar follows the re-ranking. The model runs in eval mode (its
    mode is restored after). `return_itc=True` also returns the ITC similarity matrix."""
    from tqdm.auto import tqdm

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        pixels, pixel_masks, image_feats = [], [], []
        for batch in image_batches:
            values = _field(batch, "pixel_values").to(device)
            pixels.append(values)
            mask = _field(batch, "pixel_mask")
            pixel_masks.append(None if mask is None else mask.to(device))
            image_feats.append(model.image_itc_features(values))
        texts, image_feats = [], torch.cat(image_feats)
        text_feats = []
        for batch in text_batches:
            ids = _field(batch, "input_ids").to(device)
            mask = _field(batch, "attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask.to(device)
            texts.append((ids, mask))
            text_feats.append(model.text_itc_features(ids, mask))
        text_feats = torch.cat(text_feats)
        pixels = torch.cat(pixels)
        pixel_mask = None if any(m is None for m in pixel_masks) else torch.cat(pixel_masks)
        length = max(ids.shape[1] for ids, _ in texts)
        pad = model.config.text_config.pad_token_id
        pad = 1 if pad is None else pad
        input_ids = torch.cat([F.pad(ids, (0, length - ids.shape[1]), value=pad) for ids, _ in texts])
        attention_mask = torch.cat([F.pad(mask, (0, length - mask.shape[1]), value=0) for _, mask in texts])

        sims = image_feats.float() @ text_feats.float().t()
        n_images, n_texts = sims.shape
        top_texts = sims.topk(min(k, n_texts), dim=1).indices  # per image
        top_images = sims.topk(min(k, n_images), dim=0).indices  # per text
        i2t_ranked = torch.zeros_like(sims, dtype=torch.bool).scatter_(1, top_texts, True)
        t2i_ranked = torch.zeros_like(sims, dtype=torch.bool).scatter_(0, top_images, True)
        pairs = (i2t_ranked | t2i_ranked).nonzero()
        itm = torch.full_like(sims, NOT_RANKED)
        chunk = batch_size or k
        for part in tqdm(pairs.split(chunk), desc="ITM re-ranking", unit="batch", disable=not progress):
            image, text = part[:, 0], part[:, 1]
            logits = model.itm_logits(input_ids[text], attention_mask[text], pixels[image],
                                      None if pixel_mask is None else pixel_mask[image])
            itm[image, text] = logits[:, 1].float()
        i2t = torch.where(i2t_ranked, itm, torch.full_like(itm, NOT_RANKED))
        t2i = torch.where(t2i_ranked, itm, torch.full_like(itm, NOT_RANKED))
        scores = torch.maximum(i2t, t2i)
    finally:
        model.train(was_training)
    return (scores, sims) if return_itc else scores


__all__ = [
    "ManagerTowerForImageTextMatching",
    "ManagerTowerForImageTextRetrieval",
    "ManagerTowerForMaskedLM",
    "ManagerTowerForNLVR2",
    "ManagerTowerForPreTraining",
    "ManagerTowerForQuestionAnswering",
    "ManagerTowerForVisualEntailment",
    "ManagerTowerPreTrainingOutput",
    "ManagerTowerRetrievalOutput",
    "ManagerTowerTaskOutput",
    "retrieval_scores",
    "sample_negatives",
]
