"""Flickr30K image-text retrieval: the ITC + ITM model (`ManagerTowerForImageTextRetrieval`), its hard negatives
(`sample_negatives`) and the official evaluation (`retrieval_scores`: ITC top-k re-ranked by ITM)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerContrastiveHead, BridgeTowerITMHead

from ..config import ManagerTowerConfig
from ..modeling import ManagerTowerModel
from .base import ManagerTowerRetrievalOutput, _finish, _TaskModel

ITC_TEMPERATURE = 0.07  # the official `temperature` (src/config.py), learnable, clamped to [0.001, 0.5] every step
TEMPERATURE_RANGE = (0.001, 0.5)
NOT_RANKED = -100.0  # the score of a pair outside the top k in retrieval evaluation (official)


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

    The negatives reuse the unimodal layers of the batch's own pass (`TowerStates.pairs`) and rerun only the
    cross-modal part, as the official default does (so in training a negative pair shares its towers' dropout with
    the positive pass); the batch is not gathered across processes (the official code all-gathers the ITC features
    and draws negatives from the global batch)."""

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

    def itm_logits(
        self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, interpolate_pos_encoding=False
    ) -> torch.Tensor:
        """ITM logits (B x 2) of the given pairs; column 1 is the retrieval score."""
        out = self._encode(
            input_ids, attention_mask, pixel_values, pixel_mask, interpolate_pos_encoding=interpolate_pos_encoding
        )
        return self.itm_score(out.pooler_output)

    def clamp_temperature(self) -> None:
        with torch.no_grad():
            self.temperature.clamp_(*TEMPERATURE_RANGE)

    # -- training ---------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        image_ids=None,
        return_loss=True,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding=False,
        output_hidden_states=None,
        output_attentions=None,
        output_aggregation_weights=None,
        return_dict=None,
    ):
        """B matched pairs (text b describes image b). image_ids: B ids, pairs with equal ids are all positives
        (captions of the same image); default: only the diagonal. Without `return_loss`: the ITC logits and the ITM
        logits of the given pairs, no negatives."""
        self.clamp_temperature()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        backbone = self.managertower
        towers = backbone.unimodal(input_ids, attention_mask, pixel_values, None, interpolate_pos_encoding)
        out = backbone.fuse(towers, None, output_aggregation_weights, return_dict=True)
        text_embeds, image_embeds = self._itc_text(out.text_unimodal), self._itc_image(out.image_unimodal)
        logits_per_text = text_embeds @ image_embeds.t() / self.temperature
        logits_per_image = logits_per_text.t()
        positive_itm = self.itm_score(out.pooler_output)
        extras = self._extras(out, output_hidden_states, output_attentions, output_aggregation_weights)
        if not return_loss:
            return _finish(
                ManagerTowerRetrievalOutput(
                    logits_per_text=logits_per_text,
                    logits_per_image=logits_per_image,
                    itm_logits=positive_itm,
                    text_embeds=text_embeds,
                    image_embeds=image_embeds,
                    **extras,
                ),
                return_dict,
            )

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
        same = torch.arange(batch, device=negative_texts.device)  # [(T, I_neg), (T_neg, I)], towers not rerun
        negatives = backbone.fuse(
            towers.pairs(torch.cat([same, negative_texts]), torch.cat([negative_images, same])), return_dict=True
        )
        itm_logits = torch.cat([positive_itm, self.itm_score(negatives.pooler_output)])
        itm_labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)])
        itm_labels = itm_labels.to(itm_logits.device)
        itm_loss = F.cross_entropy(itm_logits, itm_labels)
        return _finish(
            ManagerTowerRetrievalOutput(
                loss=itc_loss + itm_loss,
                itc_loss=itc_loss,
                itm_loss=itm_loss,
                logits_per_text=logits_per_text,
                logits_per_image=logits_per_image,
                itm_logits=itm_logits,
                itm_labels=itm_labels,
                text_embeds=text_embeds,
                image_embeds=image_embeds,
                **extras,
            ),
            return_dict,
        )


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
def retrieval_scores(
    model: ManagerTowerForImageTextRetrieval,
    image_batches: Iterable,
    text_batches: Iterable,
    k: int = 128,
    batch_size: int | None = None,
    progress: bool = True,
    return_itc: bool = False,
):
    """The official Flickr30K scores (`compute_irtr_itm_itc_recall`): n_images x n_texts.

    image_batches: iterable of dicts with `pixel_values`, or of pixel tensors;
    text_batches: iterable of dicts with `input_ids` (and `attention_mask`), or of id tensors. Texts of batches of
    different lengths are padded to the longest with the pad token, masked.

    1. ITC similarities of every image and text, from the unimodal towers (`image_itc_features`, `text_itc_features`).
    2. For each image, its top-k texts by ITC are re-scored by the ITM positive logit (`itm_score(...)[:, 1]`, the
       raw logit), the other texts get -100; for each text likewise its top-k images.
    3. The result is the elementwise max of the two matrices.

    A pair in both top-k sets is scored once (the same number in eval mode). The pairs go `batch_size` at a time
    (default k), in image order; each batch runs the towers once per distinct image and text in it and the
    cross-modal part once per pair (`unimodal`, `TowerStates.pairs`, `fuse`), so an image is encoded about
    (its pairs / batch_size + 1) times, not once per pair; a tqdm bar follows the re-ranking. A `pixel_mask` is
    not read (BridgeTower ignores it). The model runs in eval mode (its mode is restored after). `return_itc=True` also
    returns the ITC similarity matrix."""
    from tqdm.auto import tqdm

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        pixels, image_feats = [], []
        for batch in image_batches:
            values = _field(batch, "pixel_values").to(device)
            pixels.append(values)
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
        backbone = model.managertower
        for part in tqdm(pairs.split(chunk), desc="ITM re-ranking", unit="batch", disable=not progress):
            image, text = part[:, 0], part[:, 1]
            images, image_at = image.unique(return_inverse=True)
            texts, text_at = text.unique(return_inverse=True)
            towers = backbone.unimodal(input_ids[texts], attention_mask[texts], pixels[images])
            out = backbone.fuse(towers.pairs(text_at, image_at), return_dict=True)
            itm[image, text] = model.itm_score(out.pooler_output)[:, 1].float()
        i2t = torch.where(i2t_ranked, itm, torch.full_like(itm, NOT_RANKED))
        t2i = torch.where(t2i_ranked, itm, torch.full_like(itm, NOT_RANKED))
        scores = torch.maximum(i2t, t2i)
    finally:
        model.train(was_training)
    return (scores, sims) if return_itc else scores
