"""A tiny random BridgeTower checkpoint laid out like the published ``BridgeTower/bridgetower-base`` and
``BridgeTower/bridgetower-base-itm-mlm`` Hub repos.

`write_published_tower(folder, variant)` writes ``variant="base"`` (bridgetower-base, a `BridgeTowerModel`) or
``variant="itm-mlm"`` (bridgetower-base-itm-mlm, the backbone under ``bridgetower.`` plus the MLM and ITM heads) with
the published file names and field values; only sizes are shrunk (widths, depths, heads). Not shrunk, because the
published files fix them: the vocabulary (50,265 rows, ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>``
50264), the 514 text positions, the 288 px images of 16 px patches (the image processor has no size field in the
published preprocessor_config.json, so it resizes to its class default, 288), ``max_text_len`` 50,
``head_hidden_scale`` 2, ``drop_rate`` 0.1. Everything is built offline in code; nothing is downloaded.

Sources (Hub pages as stored by the ``docs`` search corpus, huggingface.co/<repo>/...):

- File list. ``BridgeTower/bridgetower-base`` tree at ca2e953 / fd48113 / ee0d70f (main's last commits are
  README edits after ca2e953 "Update weight names"): ``.gitattributes``, ``README.md``, ``config.json`` 1.51 kB,
  ``preprocessor_config.json`` 1.62 kB, ``pytorch_model.bin`` 1.31 GB (pickle imports: ``collections.OrderedDict``,
  ``torch.LongStorage``, ``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``), ``tokenizer.json`` 1.36 MB,
  ``vocab.json`` 899 kB. ``BridgeTower/bridgetower-base-itm-mlm`` tree at a706c06 / bedb3be and its commit list
  (refs/pr/4, whose base is main: ... 31f9ef2 "Update config.json", 9088235 "Change module names", c60f1ee "Remove
  image_size" (preprocessor_config.json), 9cfb41d "Add BridgeTowerVisionEmbeddings", README edits; the
  ``model.safetensors`` of SFconvertbot's "Adding `safetensors` variant" lives in that PR only): the same file names.
  So neither repo has ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``, ``processor_config.json``
  or safetensors weights on main; the tokenizer is tokenizer.json + vocab.json only ("roberta tokenizer config
  files", the sizes of FacebookAI/roberta-base's tokenizer.json and vocab.json).
- bridgetower-base ``config.json``: blame of main (1,507 bytes, 52 lines, no final newline, 4-space indent,
  ``"text_config":{`` without a space). Lines 1-36 are copied from the blame page
  (``share_cross_modal_transformer_layers`` ... ``position_embedding_type``); the page's excerpt stops there, so
  lines 37-52 are reconstructed from the blame's per-line commits (37-38, 43-44, 46, 48-49 from 58f5de4; 39-42, 45,
  47 and 51 from dec62c1 "Separate config into text and vision configs"; 50 from 7ad095b; the closing 52 from
  d86fad9) and the sibling files whose text is stored: itm-mlm commit 31f9ef2 (vision block ending
  ``"image_size": 288``, ``"stop_gradient": false``, ``"share_layernorm": true``, ``"remove_last_layer": false``,
  ``}``, ``}``) and bridgetower-large-itm-mlm-itc's config.json (blob/main; re-typed here it is exactly its
  published 1,498 bytes: text_config ends ``"use_cache": true, "classifier_dropout": null``; vision_config has
  ``hidden_size``, ``num_hidden_layers``, ``patch_size``, ``image_size``, ``initializer_factor``,
  ``stop_gradient``, ``share_layernorm``, ``remove_last_layer``). The reconstruction is 52 lines, 1,500 bytes at
  the published sizes (7 bytes short of 1,507: one value in lines 37-50 is not known exactly). No ``model_type``:
  lines 1-36 have none, line 51 (dec62c1, older than 845a530 "Add model_type to config", which has no line left)
  closes vision_config and line 52 closes the file; the fully known large sibling has none either. No
  ``architectures``, ``transformers_version`` or ``torch_dtype`` either.
- bridgetower-base-itm-mlm ``config.json``: the diffs of f803af9 (the legacy METER-style keys ``image_size``,
  ``link_tower_shared``, ``stop_gradient``, ``vocab_size`` and the top-level ``model_type`` removed; text_config ending
  at ``position_embedding_type``, ``"use_cache": true`` and ``"classifier_dropout": null`` removed) and 31f9ef2
  (the end of the file, 48 lines, 1.41 kB). Written with base's layout and top-level keys minus what f803af9
  removed: 1,411 bytes at the published sizes (the published 1.41 kB) in 49 lines (f803af9's hunk numbers suggest
  one top-level key fewer; which one is not in the stored pages).
- ``preprocessor_config.json``: not an image-processor config at all but the training config of the original
  (METER-style) code: raw text of bridgetower-base@ca2e953 and blob/main (``cache_dir`` "/tmp", ``downstream_fusion``,
  ..., ``image_size`` 288, ..., ``loss_names`` {..., "vqa": 1}, ``tokenizer`` "roberta-base", ``vit`` "ViT-B/16",
  ``vocab_size`` 50265; 1.62 kB, tab/8-space indented). No ``image_processor_type``, ``size``, ``image_mean``,
  ``crop_size``, ``size_divisor`` or ``do_*`` keys, so the image processor runs with its class defaults
  (shortest edge 288, size_divisor 32, centre crop, CLIP mean/std). Written here it is 1,622 bytes, the size the
  blame of itm-mlm@ab358db gives for the same text. itm-mlm's main is that text after c60f1ee "Remove image_size"
  (its ``image_size`` line dropped).
- ``tokenizer.json`` / ``vocab.json``: FacebookAI/roberta-base's layout (byte-level BPE, ``RobertaProcessing`` with
  ``sep`` ["</s>", 2] and ``cls`` ["<s>", 0], ``ByteLevel`` pre-tokenizer and decoder, added tokens ``<s>``,
  ``<pad>``, ``</s>``, ``<unk>`` and ``<mask>`` (lstrip) at 0, 1, 2, 3, 50264). Here a small byte-level BPE whose
  merges make the test sentences' words single tokens, padded with unreachable filler entries to roberta-base's
  50,265 ids so that ``<mask>`` keeps its id (the last one).
- ``pytorch_model.bin``: the published weights are a torch pickle (the pickle imports above), float32 (no
  ``torch_dtype``), last written in January 2023 ("Update weight names", "Add BridgeTowerVisionEmbeddings"), when
  transformers' RoBERTa-style text embeddings and CLIP-style vision embeddings registered ``position_ids`` as
  *persistent* buffers (non-persistent in transformers 5); int64 buffers are the only integer tensors a BridgeTower
  state dict can hold, and the pickle's ``torch.LongStorage`` says the file has some, so both are written here
  (inferred: which of the two the file holds is not in the stored pages). Key names otherwise as transformers 5
  names them (BridgeTower's module names have not changed since "Change module names" / "Add
  BridgeTowerVisionEmbeddings"). itm-mlm holds both heads (transformers' own docstring examples load it into
  ``BridgeTowerForMaskedLM`` and ``BridgeTowerForImageAndTextRetrieval``): ``mlm_score.*`` and ``itm_score.*``.
  Written here by transformers' own ``save_pretrained`` (transformers 5 writes only safetensors), then re-saved
  with ``torch.save`` under the published name with the buffers added (`_to_published_bin`); transformers 5 reads
  it with ``torch.load(weights_only=True)`` (torch >= 2.6). ``weights_layout="transformers"`` keeps transformers 5's
  own ``model.safetensors`` instead.
"""

from __future__ import annotations

import json
from pathlib import Path

PUBLISHED_REPOS = {
    "base": "BridgeTower/bridgetower-base",
    "itm-mlm": "BridgeTower/bridgetower-base-itm-mlm",
}
SEEDS = {"base": 0, "itm-mlm": 1}

VOCAB_SIZE = 50265  # roberta-base; published text_config.vocab_size
SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 50264}

# Sizes: the published base values in the comments, the shrunk ones written here. BridgeTower's vision model has
# hidden_size // 64 heads (hard-coded), so its width stays a multiple of 64; the cross-modal layers are built from
# text_config, so hidden_size == text_config.hidden_size as published (768 == 768).
SIZES = dict(
    hidden_size=32,  # 768
    num_attention_heads=2,  # 12
    num_hidden_layers=2,  # 6 cross-modal layers
    text_hidden_size=32,  # 768
    text_layers=6,  # 12
    text_heads=2,  # 12
    text_intermediate_size=64,  # 3072
    vision_hidden_size=64,  # 768
    vision_layers=6,  # 12
)

# config.json of bridgetower-base (see the module doc for which lines are copied and which reconstructed); the
# numbers are the only substitutions.
CONFIG_TEMPLATE = """{{
    "share_cross_modal_transformer_layers": true,
    "drop_rate": 0.1,
    "head_hidden_scale": 2,
    "hidden_act": "gelu",
    "hidden_size": {hidden_size},
    "input_image_embed_size": {vision_hidden_size},
    "input_text_embed_size": {text_hidden_size},
    "is_encoder_decoder": false,
    "layer_norm_eps": 1e-05,
    "share_link_tower_layers": false,
    "link_tower_type": "add",
    "max_text_len": 50,
    "mlp_ratio": 4,
    "num_attention_heads": {num_attention_heads},
    "num_hidden_layers": {num_hidden_layers},
    "tie_word_embeddings": false,
    "text_config_dict": null,
    "text_config":{{
      "architectures": ["BridgeTowerTextModel"],
      "vocab_size": 50265,
      "hidden_size": {text_hidden_size},
      "num_hidden_layers": {text_layers},
      "num_attention_heads": {text_heads},
      "intermediate_size": {text_intermediate_size},
      "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1,
      "attention_probs_dropout_prob": 0.1,
      "max_position_embeddings": 514,
      "type_vocab_size": 1,
      "initializer_range": 0.02,
      "layer_norm_eps": 1e-05,
      "pad_token_id": 1,
      "bos_token_id": 0,
      "eos_token_id": 2,
      "position_embedding_type": "absolute"{text_tail}    }},
    "vision_config_dict": null,
    "vision_config":{{
      "architectures": ["BridgeTowerVisionModel"],
      "hidden_size": {vision_hidden_size},
      "num_hidden_layers": {vision_layers},
      "patch_size": 16,
      "image_size": 288,
{vision_extra}      "stop_gradient": false,
      "share_layernorm": true,
      "remove_last_layer": false
    }}
}}"""
TEXT_TAIL = {  # base keeps use_cache / classifier_dropout; itm-mlm's f803af9 removed them
    "base": ',\n      "use_cache": true,\n      "classifier_dropout": null\n',
    "itm-mlm": "\n",
}
VISION_EXTRA = {"base": '      "initializer_factor": 1,\n', "itm-mlm": ""}


def published_config_text(variant: str = "base") -> str:
    """config.json as published (layout and keys), sizes shrunk."""
    _check(variant)
    text = CONFIG_TEMPLATE.format(**SIZES, text_tail=TEXT_TAIL[variant], vision_extra=VISION_EXTRA[variant])
    if variant == "base":
        return text  # no final newline (the blame's last line is the closing brace)
    return text + "\n"


def published_config(variant: str = "base") -> dict:
    return json.loads(published_config_text(variant))


# preprocessor_config.json: the training config of the original code (bridgetower-base raw@ca2e953), key order and
# values as published; written with its published indentation (a tab, then 8 spaces).
PREPROCESSOR_ITEMS = [
    ("cache_dir", "/tmp"),
    ("downstream_fusion", False),
    ("downstream_fusion_layers", 1),
    ("downstream_fusion_method", "elmo"),
    ("drop_rate", 0.1),
    ("freeze_RoBERTa", False),
    ("freeze_ViT", False),
    ("freeze_layer_count_roberta", False),
    ("freeze_layer_count_vit", False),
    ("head_hidden_scale", 2),
    ("hidden_size", 768),
    ("image_size", 288),
    ("input_text_embed_size", 768),
    ("link_tower_shared", False),
    ("link_tower_type", "add"),
    ("log_dir", "log_dir"),
    (
        "loss_names",
        {
            "contras": 0,
            "irtr": 0,
            "itm": 0,
            "mlm": 0,
            "mpp": 0,
            "nlvr2": 0,
            "snli": 0,
            "vcr": 0,
            "vcr_qar": 0,
            "vqa": 1,
        },
    ),
    ("max_text_len", 50),
    ("mlp_ratio", 4),
    ("model_type", "bridgetower"),
    ("num_heads", 12),
    ("num_layers", 6),
    ("num_nodes", 1),
    ("only_load_cross_modal_from_meter", False),
    ("patch_size", 16),
    ("resolution_before", 224),
    ("stop_gradient", False),
    ("task_head_layers", 2),
    ("test_only", False),
    ("tokenizer", "roberta-base"),
    ("unfreeze_RoBERTa_attention", False),
    ("unfreeze_RoBERTa_embeddings", False),
    ("unfreeze_RoBERTa_encoder", False),
    ("unfreeze_RoBERTa_layernorm", False),
    ("unfreeze_ViT_attention", False),
    ("unfreeze_ViT_layernorm", False),
    ("vit", "ViT-B/16"),
    ("vit_layernorm_init_from_vit", False),
    ("vit_layernorm_shared", True),
    ("vit_remove_last", False),
    ("vocab_size", 50265),
]


def published_preprocessor_text(variant: str = "base") -> str:
    _check(variant)
    items = [(k, v) for k, v in PREPROCESSOR_ITEMS if not (variant == "itm-mlm" and k == "image_size")]
    lines = []
    for i, (key, value) in enumerate(items):
        if key == "loss_names":
            inner = (",\n" + " " * 16).join(f'"{k}": {v}' for k, v in value.items())
            rendered = "{" + inner + "}"
        else:
            rendered = json.dumps(value)
        lines.append(("\t" if i == 0 else " " * 8) + f'"{key}":{rendered}' + ("," if i < len(items) - 1 else ""))
    return "{\n\t\t\n" + "\n".join(lines) + "\n}\n"


def published_preprocessor(variant: str = "base") -> dict:
    return json.loads(published_preprocessor_text(variant))


# Words that get whole-word merges (after a space, and capitalised at a sentence start); anything else falls back
# to byte-level pieces, as in any byte-level BPE.
MERGED_WORDS = sorted(
    set(
        "a the red green blue yellow circle square triangle shape on left right top bottom of in image picture is "
        "there what colour color how many sides does it have photo white black grey background yes no".split()
    )
)
CAPITALISED = sorted({w.capitalize() for w in MERGED_WORDS})


def _check(variant: str) -> None:
    if variant not in PUBLISHED_REPOS:
        raise ValueError(f"variant must be one of {sorted(PUBLISHED_REPOS)}, got {variant!r}")


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """roberta-base's id layout (specials 0-3, ``<mask>`` last) over a small byte-level BPE. A word is merged left to
    right ((prefix, next symbol)); merges only start at ``Ġ`` or a capital, so within a word only the pair at its
    start can merge and every chain completes."""
    from tokenizers import pre_tokenizers

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []

    def chain(word: str) -> None:
        for end in range(2, len(word) + 1):
            if word[:end] not in vocab:
                vocab[word[:end]] = len(vocab)
                merges.append((word[: end - 1], word[end - 1]))

    for word in MERGED_WORDS:
        chain("Ġ" + word)
    for word in CAPITALISED:
        chain(word)
    filler = 0
    while len(vocab) < SPECIAL_IDS["<mask>"]:
        vocab[f"<|unused_{filler}|>"] = len(vocab)
        filler += 1
    vocab["<mask>"] = SPECIAL_IDS["<mask>"]
    assert len(vocab) == VOCAB_SIZE
    return vocab, merges


def tokenizer_files() -> dict[str, str]:
    """tokenizer.json (roberta-base's pipeline over the tiny vocabulary) and vocab.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab, merges = tiny_vocab_and_merges()
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True)
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=True) for t in ("<s>", "<pad>", "</s>", "<unk>")]
    )
    backend.add_special_tokens([AddedToken("<mask>", special=True, lstrip=True, normalized=True)])
    assert {t: backend.token_to_id(t) for t in SPECIAL_IDS} == SPECIAL_IDS, "special token ids drifted"
    return {"tokenizer.json": backend.to_str(), "vocab.json": json.dumps(vocab, ensure_ascii=False)}


def build_model(variant: str = "base"):
    """The tiny random model(s) of `variant` (seeded; the global RNG is left as it was): a `BridgeTowerModel` for
    "base", for "itm-mlm" a `BridgeTowerForMaskedLM` and a `BridgeTowerForImageAndTextRetrieval` sharing one
    backbone (returned as a list)."""
    import torch
    from transformers import (
        BridgeTowerConfig,
        BridgeTowerForImageAndTextRetrieval,
        BridgeTowerForMaskedLM,
        BridgeTowerModel,
    )

    _check(variant)
    config = BridgeTowerConfig.from_dict(published_config(variant))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEEDS[variant])
        if variant == "base":
            return [BridgeTowerModel(config).eval()]
        mlm = BridgeTowerForMaskedLM(config).eval()
        itm = BridgeTowerForImageAndTextRetrieval(config).eval()
    itm.bridgetower.load_state_dict(mlm.bridgetower.state_dict())
    return [mlm, itm]


def _to_published_bin(safetensors_files: list[Path], target: Path, prefix: str) -> None:
    """Merge transformers' safetensors files into one ``pytorch_model.bin`` (torch.save, zip format) with the
    persistent ``position_ids`` buffers that transformers 4.27 wrote (int64, [1, positions])."""
    import torch
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in safetensors_files:
        for key, value in load_file(str(file)).items():
            if key in state:
                assert torch.equal(state[key], value), f"{key} differs between the heads' files"
            state[key] = value
    positions = state[f"{prefix}text_model.embeddings.position_embeddings.weight"].shape[0]
    state[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(positions).expand((1, -1)).contiguous()
    patches = state[f"{prefix}vision_model.visual.embeddings.position_embedding.weight"].shape[0]
    state[f"{prefix}vision_model.visual.embeddings.position_ids"] = torch.arange(patches).expand((1, -1)).contiguous()
    torch.save(dict(sorted(state.items())), target)


def write_published_tower(folder: str | Path, variant: str = "base", weights_layout: str = "published") -> Path:
    """Write the tiny `variant` checkpoint ("base" or "itm-mlm") into `folder` in the published layout; returns it.

    ``weights_layout="published"``: ``pytorch_model.bin`` as published (see the module doc);
    ``"transformers"``: transformers 5's own ``model.safetensors`` of the model (for "itm-mlm", of the
    `BridgeTowerForMaskedLM`, so without the ITM head)."""
    import shutil
    import tempfile

    _check(variant)
    if weights_layout not in ("published", "transformers"):
        raise ValueError(f"weights_layout must be 'published' or 'transformers', got {weights_layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = build_model(variant)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, model in enumerate(models):
            model.save_pretrained(Path(tmp) / str(i))  # only the weights are kept; the JSON files are written below
            files.append(Path(tmp) / str(i) / "model.safetensors")
        if weights_layout == "published":
            _to_published_bin(files, folder / "pytorch_model.bin", "" if variant == "base" else "bridgetower.")
        else:
            shutil.copyfile(files[0], folder / "model.safetensors")
    (folder / "config.json").write_text(published_config_text(variant), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(published_preprocessor_text(variant), encoding="utf-8")
    for name, text in tokenizer_files().items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


PUBLISHED_FILES = ("config.json", "preprocessor_config.json", "pytorch_model.bin", "tokenizer.json", "vocab.json")
