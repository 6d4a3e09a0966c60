"""Computational budget of ManagerTower (paper Table VI: no VLP, fine-tuned on VQAv2, 384 x 384 images, text length
50): parameters and FLOPs of BridgeTower (BT*), ManagerTower with SAUM, with AAUM on the own query C^V ("aaum_own")
and with AAUM on the fused query (C^V, C^T) ("aaum", the published ManagerTower), each built at the BASE
configuration (`ManagerTowerConfig(manager_type=..., vision_config=dict(image_size=384))`, random weights).

    rows = tower_budget()                    # parameters and FLOPs of the four BASE models (about 1.3 GB each, fp32)
    rows = tower_budget(flops=False)         # parameters only, on the meta device (no memory, under a second)
    print(format_table(rows))

Parameters: every parameter of `ManagerTowerModel` (the backbone; no task head, as Table VI), counted exactly on the
meta device. The official count (LooperXX/ManagerTower, src/modules/mt_module.py and heads.py shapes) of the same
backbone has 40,448 more parameters in BT*, unused leftovers of CLIP's text model (positional embedding 77 x 512,
`ln_final`), and the ITC
temperature (1), which transformers' BridgeTower does not have; and every official manager has an unused
`softmax_temperature_cross` (1 each, 12 in all), which this model does not create. "official" adds those back:
BT* 326,540,544 + 40,449 = 326,580,993 (Table VI 326.58M); SAUM +188,952 - 12; AAUM (fused) +12,062,292 - 12.

FLOPs: one forward pass at batch 1 (one image_size^2 image, `text_length` text tokens, no padding), eval mode, no
gradient, on real random weights, counted by `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
multiply-add; the numbers here are multiply-adds (MACs), torch's count / 2, the unit fvcore calls "flop" and the paper
reports. Two counts:

- `macs`: what torch's counter counts: matrix products (mm, addmm, bmm: every linear layer and the eager attention of
  the text and cross-modal layers), convolutions (CLIP's patch embedding) and scaled-dot-product attention (CLIP's
  `nn.MultiheadAttention`; on the CPU its kernel, `_scaled_dot_product_flash_attention_for_cpu`, is not in torch's
  table and is counted here with torch's own SDPA formula; the multi-head-attention fast path is turned off while
  counting so that the in/out projections are seen as matrix products).
- `layer_norm_macs`: LayerNorms at fvcore's default rule (`aten::layer_norm`: 5 per element with an affine weight,
  4 without), which torch's counter does not count and fvcore does. `fvcore_macs` = `macs + layer_norm_macs` is the
  count comparable to Table VI. Neither counts other elementwise ops (softmax, GELU, additions, the temperature
  scaling, the managers' weighted sums), nor embedding look-ups: fvcore ignores them too.

Most of the SAUM overhead over BT* is LayerNorm (one LN per managed layer in every manager, 41 per modality, against
BT*'s 6); the fused query's cross-attention (q and k projections, QK^T, AV) and controller are the AAUM overhead,
`fused_query_macs` (the official heads.py shapes: about 0.83 G per cross-modal layer, 4.17 G in all at BASE).

At BASE (384, 50) the "+LN" count is 101.25 / 101.34 / 101.35 / 105.52 G for bridge / saum / aaum_own / aaum, Table
VI's to the digit. The counted AAUM - SAUM matmul MACs equal
`fused_query_macs` exactly (4.1702 G; own query 0.0144 G).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..config import ManagerTowerConfig
from ..modeling import ManagerTowerModel

# name -> (label, config overrides)
VARIANTS = {
    "bridge": ("BridgeTower (BT*)", dict(manager_type="bridge")),
    "saum": ("ManagerTower, SAUM", dict(manager_type="saum")),
    "aaum_own": ("ManagerTower, AAUM, query C^V", dict(manager_type="aaum", aaum_query="own")),
    "aaum": ("ManagerTower, AAUM, query (C^V, C^T)", dict(manager_type="aaum", aaum_query="fused_concat")),
}
# Table VI: (parameters in M, FLOPs in G as fvcore counts them, i.e. multiply-adds)
PAPER = {"bridge": (326.58, 101.25), "saum": (326.77, 101.34), "aaum_own": (326.77, 101.35), "aaum": (338.64, 105.52)}
# Parameters the official count has and this model does not (see the module doc).
OFFICIAL_ONLY_BT = 40_448 + 1  # CLIP text leftovers + ITC temperature
UNUSED_TEMPERATURES_PER_MANAGER = 1  # softmax_temperature_cross

PAPER_SETTING = "BASE, 384 x 384, text length 50"

FOOTNOTE = """\
Parameters: ManagerTowerModel (no task head), counted on the meta device. "official" adds what the official count
has and this model lacks: BT*'s 40,448 unused CLIP-text parameters and the ITC temperature (1), and one unused
`softmax_temperature_cross` per manager (12 in all) in the ManagerTower rows.
FLOPs: one forward, batch 1, random weights, eval, in G multiply-adds (torch's FlopCounterMode / 2; fvcore's "flop").
"matmul": what torch's counter counts: linear layers, attention products (CLIP's SDPA included), the patch
convolution. "+LN": plus LayerNorm at fvcore's default rule (5 per element), the count comparable to Table VI.
Neither counts elementwise ops (softmax, GELU, additions, the managers' weighted sums) or embeddings, as fvcore.
Paper columns: Table VI (BASE, 384 x 384, text length 50, fvcore)."""


@dataclass
class TowerBudgetRow:
    name: str
    label: str
    parameters: int
    official_parameters: int  # + the parameters only the official model has (module doc)
    paper_parameters_m: float
    paper_gflops: float
    macs: int | None = None  # matmul + convolution + attention multiply-adds (torch's count / 2)
    layer_norm_macs: int | None = None  # LayerNorm at fvcore's rule
    analytic_fused_query_macs: int | None = None  # `fused_query_macs` of this config (AAUM rows)
    parameters_ratio: float | None = None  # against bridge
    flops_ratio: float | None = None  # fvcore_macs against bridge
    paper_flops_ratio: float | None = None

    @property
    def fvcore_macs(self) -> int | None:
        return None if self.macs is None else self.macs + self.layer_norm_macs

    def as_dict(self) -> dict:
        return {**asdict(self), "fvcore_macs": self.fvcore_macs}


# ---------------------------------------------------------------------------------------------------------------------
# Configs and parameters


def budget_config(name: str, config_overrides: dict | None = None, image_size: int = 384) -> ManagerTowerConfig:
    """The config of variant `name` (`VARIANTS`): BASE (the `ManagerTowerConfig` defaults) with `config_overrides`,
    the variant's manager settings and `vision_config.image_size = image_size` (position embeddings for
    (image_size / patch_size)^2 + 1 tokens)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown budget variant {name!r}; one of {list(VARIANTS)}")
    kwargs = dict(config_overrides or {})
    vision = kwargs.pop("vision_config", None) or {}
    vision = dict(vision) if isinstance(vision, dict) else vision.to_dict()
    vision["image_size"] = image_size
    return ManagerTowerConfig(**kwargs, **VARIANTS[name][1], vision_config=vision)


def count_parameters(config: ManagerTowerConfig) -> int:
    """Exact parameter count of `ManagerTowerModel(config)`, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = ManagerTowerModel(config)
    return sum(p.numel() for p in model.parameters())


def official_parameters(config: ManagerTowerConfig, parameters: int) -> int:
    """`parameters` plus what the official model has and this one lacks (module doc)."""
    managers = 0 if config.manager_type == "bridge" else 2 * config.num_hidden_layers
    return parameters + OFFICIAL_ONLY_BT + managers * UNUSED_TEMPERATURES_PER_MANAGER


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's SDPA formula (QK^T and AV, 2 per MAC) for the CPU kernel torch's table lacks."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _layer_norm_flop(input_shape, normalized_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    """fvcore's `norm_flop_counter`: 5 per element with an affine weight, else 4; times 2 (torch's unit)."""
    return 2 * math.prod(input_shape) * (5 if weight_shape is not None else 4)


LAYER_NORM_OPS = (torch.ops.aten.native_layer_norm,)
EXTRA_FLOP_FORMULAS = {
    # upstream: see llava_manager/upstream.py
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    torch.ops.aten.native_layer_norm: _layer_norm_flop,
}


@contextmanager
def _no_mha_fastpath():
    """nn.MultiheadAttention's fused inference kernel would hide its projections from the counter."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def count_macs(fn, *args, **kwargs) -> dict:
    """Run `fn(*args, **kwargs)` under torch's FlopCounterMode (with the CPU SDPA kernel and LayerNorm added, module
    doc) and return {"macs": matmul + convolution + attention multiply-adds, "layer_norm_macs": LayerNorm at fvcore's
    rule, "by_op": {op name: multiply-adds}, "output": fn's result}."""
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with _no_mha_fastpath(), counter:
        output = fn(*args, **kwargs)
    by_op = {op: flops for op, flops in counter.get_flop_counts()["Global"].items()}
    layer_norm = sum(flops for op, flops in by_op.items() if op in LAYER_NORM_OPS)
    total = counter.get_total_flops()
    return {
        "macs": (total - layer_norm) // 2,
        "layer_norm_macs": layer_norm // 2,
        "by_op": {str(op): flops // 2 for op, flops in by_op.items()},
        "output": output,
    }


def image_tokens(config: ManagerTowerConfig, image_size: int | None = None) -> int:
    vision = config.vision_config
    return ((image_size or vision.image_size) // vision.patch_size) ** 2 + 1


def fused_query_macs(config: ManagerTowerConfig, text_length: int, image_length: int | None = None) -> int:
    """Analytic matmul multiply-adds that AAUM adds over SAUM in one forward at batch 1 (from the official heads.py /
    bert_model.py shapes): in each
    cross-modal layer after the first, per modality (own length L, the other's L'), the fused query's q projection
    L D^2, k projection L' D^2, QK^T and AV 2 L L' D, and the controller L (2D or D) N; "own" has the controller
    L D N only. 0 for the other manager types."""
    if config.manager_type != "aaum":
        return 0
    d, n = config.hidden_size, config.num_managed_layers
    image_length = image_tokens(config) if image_length is None else image_length
    total = 0
    for own, other in ((text_length, image_length), (image_length, text_length)):
        if config.aaum_query == "own":
            total += own * d * n
        else:
            width = 2 * d if config.aaum_query == "fused_concat" else d
            total += own * d * d + other * d * d + 2 * own * other * d + own * width * n
    return total * (config.num_hidden_layers - 1)


def random_inputs(
    config: ManagerTowerConfig, image_size: int, text_length: int, device="cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    """One sample: `text_length` random token ids (no padding) and one random image_size^2 image."""
    text = config.text_config
    if text_length + (text.pad_token_id or 0) + 1 > text.max_position_embeddings:  # RoBERTa's position offset
        raise ValueError(
            f"text_length {text_length} does not fit the text model's {text.max_position_embeddings} positions"
        )
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, text.vocab_size, (1, text_length), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(1, 3, image_size, image_size, generator=g).to(device),
    }


def forward_macs(
    config: ManagerTowerConfig, image_size: int = 384, text_length: int = 50, device="cpu", seed: int = 0
) -> dict:
    """`count_macs` of one forward of `ManagerTowerModel(config)` (random weights, eval, no grad) on
    `random_inputs`; also "parameters", counted on the built model."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = ManagerTowerModel(config)
    model.eval()
    inputs = random_inputs(config, image_size, text_length, device, seed)
    with torch.no_grad():
        counts = count_macs(lambda: model(**inputs))  # noqa: F821 (model is deleted after the count)
    counts.pop("output")
    counts["parameters"] = sum(p.numel() for p in model.parameters())
    del model
    return counts


def tower_budget(
    config_overrides: dict | None = None,
    image_size: int = 384,
    text_length: int = 50,
    device: str = "cpu",
    *,
    flops: bool = True,
    variants=None,
    seed: int = 0,
    progress: bool = False,
) -> list[TowerBudgetRow]:
    """Table VI: one `TowerBudgetRow` per variant (default all of `VARIANTS`: bridge, saum, aaum_own, aaum), each
    model built from `budget_config(name, config_overrides, image_size)`. `flops=False` counts parameters only (on the
    meta device: fast, no memory). With FLOPs each model is built once with random weights on `device`, run once
    and freed before the next (BASE: about 1.3 GB in fp32). Ratios are against "bridge" when it is among the rows.
    The paper columns are Table VI's (BASE, 384 x 384, text length 50) whatever the arguments."""
    names = list(variants or VARIANTS)
    rows = []
    iterator = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="budget")
    for name in iterator:
        config = budget_config(name, config_overrides, image_size)
        parameters = count_parameters(config)
        row = TowerBudgetRow(
            name=name,
            label=VARIANTS[name][0],
            parameters=parameters,
            official_parameters=official_parameters(config, parameters),
            paper_parameters_m=PAPER[name][0],
            paper_gflops=PAPER[name][1],
        )
        if flops:
            counts = forward_macs(config, image_size, text_length, device, seed)
            if counts["parameters"] != parameters:  # the meta count and the built model must agree
                raise RuntimeError(f"{name}: {counts['parameters']} parameters built, {parameters} on meta")
            row.macs, row.layer_norm_macs = counts["macs"], counts["layer_norm_macs"]
            if config.manager_type == "aaum":
                row.analytic_fused_query_macs = fused_query_macs(config, text_length, image_tokens(config, image_size))
        rows.append(row)
    base = next((r for r in rows if r.name == "bridge"), None)
    for row in rows:
        row.paper_flops_ratio = row.paper_gflops / PAPER["bridge"][1]
        if base is not None:
            row.parameters_ratio = row.parameters / base.parameters
            if row.macs is not None:
                row.flops_ratio = row.fvcore_macs / base.fvcore_macs
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Printing


def _aligned(header: list[str], body: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells):
        return (
            "| "
            + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def format_table(rows: list[TowerBudgetRow], footnote: bool = True) -> str:
    """A markdown table (columns aligned), with `FOOTNOTE` and, for AAUM rows with FLOPs, the counted AAUM - SAUM
    matmul delta next to the analytic `fused_query_macs`."""
    base = next((r for r in rows if r.name == "bridge"), None)
    with_flops = any(r.macs is not None for r in rows)
    header = ["model", "params", "Δ params", "official", "paper"]
    counted = [r.fvcore_macs for r in rows if r.macs is not None]
    unit, scale = ("G", 1e9) if counted and max(counted) >= 1e8 else ("M", 1e6)
    if with_flops:
        header += [f"{unit}MACs matmul", f"{unit}MACs +LN", "× BT*", "paper G", "paper × BT*"]
    body = []
    for r in rows:
        delta = "" if base is None or r is base else f"{r.parameters - base.parameters:+,}"
        cells = [
            r.label,
            f"{r.parameters:,}",
            delta,
            f"{r.official_parameters / 1e6:.2f}M",
            f"{r.paper_parameters_m:.2f}M",
        ]
        if with_flops:
            if r.macs is None:
                cells += ["", "", ""]
            else:
                ratio = "" if r.flops_ratio is None else f"{r.flops_ratio:.3f}"
                cells += [f"{r.macs / scale:.2f}", f"{r.fvcore_macs / scale:.2f}", ratio]
            cells += [f"{r.paper_gflops:.2f}", f"{r.paper_flops_ratio:.3f}"]
        body.append(cells)
    text = _aligned(header, body, right=set(range(1, len(header))))
    if not footnote:
        return text
    notes = [FOOTNOTE]
    saum = next((r for r in rows if r.name == "saum" and r.macs is not None), None)
    for r in rows:
        if saum is not None and r.analytic_fused_query_macs is not None:
            notes.append(
                f"{r.label} - SAUM: {(r.macs - saum.macs) / scale:.4f} {unit} matmul MACs counted, "
                f"{r.analytic_fused_query_macs / scale:.4f} {unit} by the official arithmetic "
                f"(fused_query_macs)."
            )
    return text + "\n\n" + "\n".join(notes)


__all__ = [
    "PAPER",
    "VARIANTS",
    "TowerBudgetRow",
    "budget_config",
    "count_macs",
    "count_parameters",
    "format_table",
    "forward_macs",
    "fused_query_macs",
    "official_parameters",
    "random_inputs",
    "tower_budget",
]
