"""What the task models share: their outputs (`ManagerTowerTaskOutput`, `ManagerTowerPreTrainingOutput`,
`ManagerTowerRetrievalOutput`), `_TaskModel` (the backbone `managertower` and the helpers that run it), the official
task `classifier` and its width (`head_width`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ..config import ManagerTowerConfig
from ..modeling import ManagerTowerPreTrainedModel

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
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, num_classes)
    )


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

    def _encode(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        pixel_mask=None,
        image_embeds=None,
        image_token_type_idx=None,
        interpolate_pos_encoding=False,
        output_hidden_states=None,
        output_attentions=None,
        output_aggregation_weights=None,
    ):
        return self.managertower(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            image_embeds=image_embeds,
            image_token_type_idx=image_token_type_idx,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            output_aggregation_weights=output_aggregation_weights,
            return_dict=True,
        )

    def _extras(self, out, output_hidden_states, output_attentions, output_aggregation_weights) -> dict:
        """The backbone outputs that were asked for (the backbone computes hidden states and attentions anyway)."""
        return dict(
            hidden_states=out.hidden_states
            if _flag(output_hidden_states, self.config, "output_hidden_states")
            else None,
            attentions=out.attentions if _flag(output_attentions, self.config, "output_attentions") else None,
            aggregation_weights=out.aggregation_weights if output_aggregation_weights else None,
        )
