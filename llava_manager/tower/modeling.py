"""`ManagerTowerModel`: transformers' BridgeTower with managers in every cross-modal layer (paper Sec. III-IV).

The model is built from BridgeTower's own pieces under BridgeTowerModel's attribute names (text model, vision model,
cross-modal transforms, token-type embeddings, cross-modal layers, poolers). `manager_type="bridge"` keeps
BridgeTower's link towers and computes exactly what `BridgeTowerModel` computes. With managers, the link towers and
the two cross-modal input LayerNorms are gone, and each cross-modal layer l takes its input from a manager:

    U_i   = transform(T_i) + type_text + layer_emb_text[i]              i in the top N text layers (RoBERTa outputs)
    U'_i  = transform(ln_post(V_i)) + type_image + layer_emb_image[i]   the top N vision layers (CLIP's shared ln_post)
    C~_1  = SAUM(U)                               (SAM / SAUM / AAUM: all start with no previous cross-modal output)
    C~_l  = AAUM(U, C_{l-1}, C_{l-1}^other)       (SAUM(U, C_{l-1}); SAM(U, C_1..C_{l-1}))
    C_l   = cross_modal_layer_l(C~_l, C~_l^other)

How the paper (Eq. 4-11) and the official code (LooperXX/ManagerTower, HEAD 86e2372: src/modules/heads.py,
mt_module.py, bert_model.py) differ, and what this module does (default = what the published results used):

1. Fused query: the paper *replaces* the AAUM query C_{l-1} by CA(C_{l-1}, C_{l-1}^other) (Sec. III-C); the code
   *concatenates* [CA(...); C_{l-1}] and projects 2D -> N (heads.py `AAUE.linear_controller`). Default: the code
   (`aaum_query="fused_concat"`; Table VI's 338.64M parameters only add up with it); `"fused_replace"` is the
   paper's reading, `"own"` Table I's AAUM with the own query only.
2. The CA itself: one head, q and k projections, no value or output projection (paper footnote 20, code agree).
3. Masking in CA: the paper is silent; the code masks nothing, so the image manager also attends to padded text
   tokens. Default: unmasked; `mask_fused_query=True` masks them.
4. Noise: the paper has N(0, 1/6^2) on AAUM's pre-softmax weights only (Eq. 7); the code adds it in SAUM too, per
   sample, token and channel, before the temperature, in training only. Default: the code (`saum_noise=True`);
   `saum_noise=False` is the paper; `manager_noise_std` sets the std (None = 1/N).
5. "Initialised to 1/6": the code fills the pre-softmax weights with the constant 1/N, i.e. a uniform softmax
   (1/N effective weight per layer), and w_C (outside the softmax) with 1; AAUM's controller starts near 0 (so near
   uniform too). Both readings agree; this module does the same.
6. LayerNorms: the paper writes LN(V_i), LN(C_{l-1}); the code has one LN per unimodal layer, one for the own
   C_{l-1} (shared by the w_C term and the query) and one for the other modality's C_{l-1}. This module: the code.
7. Layer and type embeddings: "omitted for simplicity" in Eq. 8-11; the code adds token-type and layer-index
   embeddings to every projected unimodal layer before the managers. Default: the code (`layer_embeddings=True`).
8. Projection and ln_post: the code runs every managed vision layer through CLIP's one shared `ln_post`, then one
   shared linear projection per modality (`cross_modal_{text,image}_transform`), before the managers; the
   equations leave this out. This module: the code.
9. SAM (Eq. 4) is not in the code; it is built here from Sec. III-A (separate uniform initialisations 1/N and
   1/(l-1), separate temperatures).
10. The code's cross-modal layers use LayerNorm eps 1e-12 (RobertaConfig's default); transformers' BridgeTower
    builds them from `text_config` (1e-5). Default: BridgeTower's; `cross_layer_norm_eps=1e-12` is the code's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bridgetower.modeling_bridgetower import (
    BridgeTowerBertCrossLayer,
    BridgeTowerLinkTower,
    BridgeTowerModelOutput,
    BridgeTowerPooler,
    BridgeTowerPreTrainedModel,
    BridgeTowerTextModel,
    BridgeTowerVisionModel,
)

from .config import ManagerTowerConfig
from .managers import AAUM, SAM, SAUM


@dataclass
class ManagerTowerModelOutput(BridgeTowerModelOutput):
    """`BridgeTowerModelOutput`, plus:

    aggregation_weights: per cross-modal layer, `(text, image)` softmax weights on the N managed unimodal layers,
        each broadcastable to B x N x L x D (with `output_aggregation_weights=True`; None for "bridge").
    text_unimodal: B x T x D_text, the last text layer (the text tower's own output, before any projection).
    image_unimodal: B x P x D_vision, CLIP's `ln_post` of the last vision layer.
    """

    aggregation_weights: tuple | None = None
    text_unimodal: torch.Tensor | None = None
    image_unimodal: torch.Tensor | None = None


@dataclass
class TowerStates:
    """Every layer of both unimodal towers for a batch (`ManagerTowerModel.unimodal`), what `fuse` reads.

    text_states: the embeddings and every text layer's output, B x T x D_text each; attention_mask: B x T.
    image_states: `ln_pre` embeddings and every vision block's output, sequence first (P x B x D_vision each).
    """

    text_states: list
    attention_mask: torch.Tensor
    image_states: list

    def pairs(self, text_index: torch.Tensor, image_index: torch.Tensor) -> TowerStates:
        """Pair k = text `text_index[k]` with image `image_index[k]` (indices into this batch)."""
        if len(text_index) != len(image_index):
            raise ValueError(f"pairs: {len(text_index)} text indices for {len(image_index)} image indices.")
        return TowerStates(
            [s[text_index] for s in self.text_states],
            self.attention_mask[text_index],
            [s[:, image_index] for s in self.image_states],
        )


class ManagerTowerPreTrainedModel(BridgeTowerPreTrainedModel):
    config_class = ManagerTowerConfig
    config: ManagerTowerConfig
    base_model_prefix = "managertower"
    # upstream: see llava_manager/upstream.py
    _no_split_modules = ["BridgeTowerSelfAttention", "BridgeTowerResidualAttention", "SAUM", "AAUM", "SAM"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, (SAUM, AAUM, SAM)):
            module.reset_parameters()  # 1/N, 1 and the temperature: the official initial values
            return
        if isinstance(module, nn.Linear) and id(module) in getattr(self, "_manager_linears", ()):
            init.normal_(module.weight, mean=0.0, std=0.02)  # the official code's init for manager layers
            init.zeros_(module.bias)
            return
        super()._init_weights(module)


def build_managers(config: ManagerTowerConfig) -> nn.ModuleList:
    """One manager per cross-modal layer for one modality, as `config.manager_type` says."""
    n, d = config.num_managed_layers, config.hidden_size
    common = dict(weight=config.manager_weight, temperature=config.manager_temperature, eps=config.layer_norm_eps)
    saum_noise = config.noise_std if config.saum_noise else 0.0
    managers = []
    for layer in range(config.num_hidden_layers):
        if config.manager_type == "sam":
            managers.append(SAM(d, n, layer, noise_std=saum_noise, **common))
        elif config.manager_type == "saum" or layer == 0:
            managers.append(SAUM(d, n, min(layer, 1), noise_std=saum_noise, **common))
        else:
            managers.append(
                AAUM(
                    d,
                    n,
                    noise_std=config.noise_std,
                    query=config.aaum_query,
                    mask_fused_query=config.mask_fused_query,
                    **common,
                )
            )
    return nn.ModuleList(managers)


class ManagerTowerModel(ManagerTowerPreTrainedModel):
    def __init__(self, config: ManagerTowerConfig):
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        if config.share_cross_modal_transformer_layers:
            self.cross_modal_text_transform = nn.Linear(text_config.hidden_size, config.hidden_size)
            self.cross_modal_image_transform = nn.Linear(vision_config.hidden_size, config.hidden_size)
        else:
            self.cross_modal_text_transform = nn.ModuleList(
                [nn.Linear(text_config.hidden_size, config.hidden_size) for _ in range(config.num_hidden_layers)]
            )
            self.cross_modal_image_transform = nn.ModuleList(
                [nn.Linear(vision_config.hidden_size, config.hidden_size) for _ in range(config.num_hidden_layers)]
            )
        self.token_type_embeddings = nn.Embedding(config.num_token_types, config.hidden_size)
        self.vision_model = BridgeTowerVisionModel(vision_config)
        self.text_model = BridgeTowerTextModel(text_config)
        cross_config = text_config
        if config.cross_layer_norm_eps is not None:
            cross_config = copy.deepcopy(text_config)
            cross_config.layer_norm_eps = config.cross_layer_norm_eps
        self.cross_modal_image_layers = nn.ModuleList(
            [BridgeTowerBertCrossLayer(cross_config) for _ in range(config.num_hidden_layers)]
        )
        self.cross_modal_text_layers = nn.ModuleList(
            [BridgeTowerBertCrossLayer(cross_config) for _ in range(config.num_hidden_layers)]
        )
        self.cross_modal_image_pooler = BridgeTowerPooler(config)
        self.cross_modal_text_pooler = BridgeTowerPooler(config)
        if config.manager_type == "bridge":
            self.cross_modal_text_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.cross_modal_image_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            links = 1 if config.share_link_tower_layers else config.num_hidden_layers - 1
            self.cross_modal_text_link_tower = nn.ModuleList([BridgeTowerLinkTower(config) for _ in range(links)])
            self.cross_modal_image_link_tower = nn.ModuleList([BridgeTowerLinkTower(config) for _ in range(links)])
            if config.share_link_tower_layers:  # BridgeTowerModel's layout: one module, not a list
                self.cross_modal_text_link_tower = self.cross_modal_text_link_tower[0]
                self.cross_modal_image_link_tower = self.cross_modal_image_link_tower[0]
        else:
            if config.layer_embeddings:
                self.layer_embeddings_text = nn.Embedding(text_config.num_hidden_layers, config.hidden_size)
                self.layer_embeddings_image = nn.Embedding(
                    len(self.vision_model.visual.transformer.resblocks), config.hidden_size
                )
            self.cross_modal_text_managers = build_managers(config)
            self.cross_modal_image_managers = build_managers(config)
            self._manager_linears = {
                id(m)
                for managers in (self.cross_modal_text_managers, self.cross_modal_image_managers)
                for m in managers.modules()
                if isinstance(m, nn.Linear)
            }
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    # -- the unimodal towers ---------------------------------------------------------------------------------------
    def _text_mask(self, input_ids, attention_mask, text_embeds):
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        extended = create_bidirectional_mask(
            config=self.config, inputs_embeds=text_embeds[:, 0:1, :], attention_mask=attention_mask
        )
        return attention_mask, extended

    def text_layers(self, input_ids, attention_mask=None):
        """Embeddings and every text layer's output (B x T x D_text each), the 2-D mask and the extended mask."""
        embeds = self.text_model.embeddings(input_ids=input_ids)
        attention_mask, extended = self._text_mask(input_ids, attention_mask, embeds)
        states = [embeds]
        for layer in self.text_model.encoder.layer:
            states.append(layer(states[-1], extended))
        return states, attention_mask, extended

    def image_layers(self, pixel_values=None, image_embeds=None, interpolate_pos_encoding=False):
        """`ln_pre` embeddings and every vision block's output, sequence first (P x B x D_vision), as BridgeTower."""
        visual = self.vision_model.visual
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("ManagerTowerModel needs pixel_values (or image_embeds).")
            embeds = visual.forward_pre(
                pixel_values.type(self.vision_model.dtype), interpolate_pos_encoding=interpolate_pos_encoding
            )
        else:
            embeds = image_embeds.permute(1, 0, 2)
        states = [embeds]
        for block in visual.transformer.resblocks:
            states.append(block(states[-1]).type(self.vision_model.dtype))
        return states

    def encode_text(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The text tower alone: its last layer, B x T x D_text."""
        return self.text_layers(input_ids, attention_mask)[0][-1]

    def encode_image(self, pixel_values, interpolate_pos_encoding=False) -> torch.Tensor:
        """The vision tower alone: `ln_post` of its last layer, B x P x D_vision."""
        states = self.image_layers(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        return self.vision_model.visual.forward_post(states[-1])

    def _ln_post(self, image_states, index, cache=None):
        """CLIP's ln_post of vision state `index`, batch first; `cache` keeps it for the rest of a forward."""
        if cache is not None and index in cache:
            return cache[index]
        out = self.vision_model.visual.forward_post(image_states[index])
        if cache is not None:
            cache[index] = out
        return out

    def _text_transform(self, x, layer):
        t = self.cross_modal_text_transform
        return t(x) if isinstance(t, nn.Linear) else t[layer](x)

    def _image_transform(self, x, layer):
        t = self.cross_modal_image_transform
        return t(x) if isinstance(t, nn.Linear) else t[layer](x)

    def _type_embedding(self, index: int, like: torch.Tensor) -> torch.Tensor:
        if not 0 <= index < self.config.num_token_types:
            raise ValueError(
                f"image_token_type_idx must be in 1..{self.config.num_token_types - 1} "
                f"(config.num_token_types = {self.config.num_token_types}), got {index}."
            )
        ids = torch.full((1,), index, dtype=torch.long, device=like.device)
        return self.token_type_embeddings(ids).expand_as(like)

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_token_type_idx: int | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_aggregation_weights: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ManagerTowerModelOutput | tuple:
        """As `BridgeTowerModel.forward` (`pixel_mask` and `token_type_ids` are accepted and unused, as there), plus
        `output_aggregation_weights`. `hidden_states` = (text states, image states (sequence first, as
        BridgeTower), cross-modal (text, image) pairs); `attentions` = the cross-modal layers' self-attentions.
        The same as `fuse(unimodal(...))`."""
        towers = self.unimodal(input_ids, attention_mask, pixel_values, image_embeds, interpolate_pos_encoding)
        return self.fuse(towers, image_token_type_idx, output_aggregation_weights, return_dict)

    def unimodal(
        self, input_ids, attention_mask=None, pixel_values=None, image_embeds=None, interpolate_pos_encoding=False
    ) -> TowerStates:
        """Both unimodal towers, every layer (`TowerStates`): what `fuse` needs, to be kept and paired again
        (`TowerStates.pairs`) without running the towers twice, as the official ITM negatives and retrieval
        re-ranking do."""
        if input_ids is None:
            raise ValueError("ManagerTowerModel needs input_ids (inputs_embeds are not supported, as in BridgeTower).")
        text_states, attention_mask, _ = self.text_layers(input_ids, attention_mask)
        image_states = self.image_layers(pixel_values, image_embeds, interpolate_pos_encoding)
        return TowerStates(text_states, attention_mask, image_states)

    def fuse(
        self,
        towers: TowerStates,
        image_token_type_idx: int | None = None,
        output_aggregation_weights: bool | None = None,
        return_dict: bool | None = None,
    ):
        """The cross-modal part of `forward` on unimodal states from `unimodal` (pair b: text b with image b)."""
        image_type = image_token_type_idx or 1
        text_states, attention_mask, image_states = towers.text_states, towers.attention_mask, towers.image_states
        _, text_mask = self._text_mask(None, attention_mask, text_states[0])
        post = {}  # ln_post of vision states, computed once per forward
        if self.config.manager_type == "bridge":
            cross, attentions, weights = self._bridge(text_states, image_states, text_mask, image_type, post)
        else:
            cross, attentions, weights = self._managed(
                text_states, image_states, attention_mask, text_mask, image_type, bool(output_aggregation_weights), post
            )
        text_features, image_features = cross[-1]
        pooled = torch.cat(
            [self.cross_modal_text_pooler(text_features), self.cross_modal_image_pooler(image_features)], dim=-1
        )
        output = ManagerTowerModelOutput(
            text_features=text_features,
            image_features=image_features,
            pooler_output=pooled,
            hidden_states=(tuple(text_states), tuple(image_states), tuple(cross)),
            attentions=tuple(attentions),
            aggregation_weights=tuple(weights) if output_aggregation_weights and weights else None,
            text_unimodal=text_states[-1],
            image_unimodal=self._ln_post(image_states, len(image_states) - 1, post),
        )
        return output if return_dict is not False else output.to_tuple()

    def _cross_layer(self, layer, text_in, image_in, text_mask):
        text_out = self.cross_modal_text_layers[layer](text_in, image_in, attention_mask=text_mask)
        image_out = self.cross_modal_image_layers[layer](image_in, text_in, encoder_attention_mask=text_mask)
        return (text_out[0], image_out[0]), (text_out[1], image_out[1])

    def _bridge(self, text_states, image_states, text_mask, image_type, post=None):
        """BridgeTowerModel.forward's cross-modal part: cross-modal layer k takes unimodal layer L - C + 1 + k
        (1-based), through LN(transform + type) for the first and the link towers LN(. + C_{k-1}) after."""
        c = self.config.num_hidden_layers
        first = len(self.text_model.encoder.layer) - c + 1
        text = self._text_transform(text_states[first], 0)
        text_type = self._type_embedding(0, text)
        text = self.cross_modal_text_layernorm(text + text_type)
        image = self._image_transform(self._ln_post(image_states, first, post), 0)
        image_type_emb = self._type_embedding(image_type, image)
        image = self.cross_modal_image_layernorm(image + image_type_emb)
        (t, v), attn = self._cross_layer(0, text, image, text_mask)
        cross, attentions = [(t, v)], [attn]
        shared = self.config.share_link_tower_layers
        for k in range(1, c):
            text_link = self.cross_modal_text_link_tower if shared else self.cross_modal_text_link_tower[k - 1]
            image_link = self.cross_modal_image_link_tower if shared else self.cross_modal_image_link_tower[k - 1]
            text_in = text_link(self._text_transform(text_states[first + k], k) + text_type, t, text_mask)
            image_in = self._image_transform(self._ln_post(image_states, first + k, post), k) + image_type_emb
            image_in = image_link(image_in, v, None)
            (t, v), attn = self._cross_layer(k, text_in, image_in, text_mask)
            cross.append((t, v))
            attentions.append(attn)
        return cross, attentions, []

    def managed_unimodal(self, text_states, image_states, image_type, post=None):
        """The top N layers of each tower in the cross-modal space: projected, plus the token-type and layer
        embeddings; B x N x T x D and B x N x P x D."""
        n = self.config.num_managed_layers
        text_idx = range(len(text_states) - 1 - n, len(text_states) - 1)  # 0-based layer numbers
        image_idx = range(len(image_states) - 1 - n, len(image_states) - 1)
        text = torch.stack([text_states[i + 1] for i in text_idx], dim=1)
        image = torch.stack([self._ln_post(image_states, i + 1, post) for i in image_idx], dim=1)
        text = self._text_transform(text, 0)
        image = self._image_transform(image, 0)
        text = text + self._type_embedding(0, text[:, 0])[:, None]
        image = image + self._type_embedding(image_type, image[:, 0])[:, None]
        if self.config.layer_embeddings:
            device = text.device
            text = text + self.layer_embeddings_text(torch.tensor(list(text_idx), device=device))[None, :, None]
            image = image + self.layer_embeddings_image(torch.tensor(list(image_idx), device=device))[None, :, None]
        return text, image

    def _managed(self, text_states, image_states, attention_mask, text_mask, image_type, want_weights, post=None):
        if not isinstance(self.cross_modal_text_transform, nn.Linear):
            raise ValueError(
                "managers aggregate layers through one shared projection per modality: "
                "share_cross_modal_transformer_layers must be True with managers."
            )
        text_uni, image_uni = self.managed_unimodal(text_states, image_states, image_type, post)
        kind = self.config.manager_type
        cross, attentions, weights = [], [], []
        for layer in range(self.config.num_hidden_layers):
            text_manager = self.cross_modal_text_managers[layer]
            image_manager = self.cross_modal_image_managers[layer]
            if layer == 0:
                text_in, text_w = text_manager(text_uni)
                image_in, image_w = image_manager(image_uni)
            elif kind == "sam":
                text_in, text_w = text_manager(text_uni, torch.stack([c[0] for c in cross], dim=1))
                image_in, image_w = image_manager(image_uni, torch.stack([c[1] for c in cross], dim=1))
            else:
                t, v = cross[-1]
                text_in, text_w = text_manager(text_uni, t, other=v)
                image_in, image_w = image_manager(image_uni, v, other=t, other_mask=attention_mask)
            (t, v), attn = self._cross_layer(layer, text_in, image_in, text_mask)
            cross.append((t, v))
            attentions.append(attn)
            if want_weights:
                weights.append((text_w, image_w))
        return cross, attentions, weights
