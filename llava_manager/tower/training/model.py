"""The processor and the task model of a recipe: the embedded tiny default (`tiny_config`), a checkpoint (ours, any
task; or a transformers BridgeTower one, warm-started into `--manager_type`), or unimodal encoders (`--text_model` /
`--vision_model`), at `--image_size` (`set_image_size`).

Starting from `--model_name_or_path` is strict: only the new task head may be missing, only other tasks' heads
unexpected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import set_seed

from ...core.checkpoint import check_load
from ..config import ManagerTowerConfig
from ..data.synthetic import tiny_tower_processor
from .args import TowerArgs
from .tasks import TASK_HEADS, TASK_MODELS

logger = logging.getLogger(__name__)


def tiny_config(processor, manager_type: str = "aaum", head_hidden_scale: int = 1) -> ManagerTowerConfig:
    """The embedded default's model: a RoBERTa-like text tower (4 layers, width 64, the tiny tokenizer's vocabulary)
    and a CLIP-like vision tower (4 layers, width 128, 8 px patches of 32 px images), 2 cross-modal layers of width
    64 whose managers aggregate the top 3 unimodal layers."""
    tokenizer = processor.tokenizer
    return ManagerTowerConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=128,
            num_hidden_layers=4,
            patch_size=8,
            image_size=processor.image_processor.crop_size["shortest_edge"],
        ),
        hidden_size=64,
        num_attention_heads=2,
        num_hidden_layers=2,
        num_managed_layers=3,
        manager_type=manager_type,
        head_hidden_scale=head_hidden_scale,
    )


def _read_config(path: str) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"--model_name_or_path {path}: no config.json there (a save_pretrained directory "
            f"of a ManagerTower or BridgeTower model is expected)."
        )
    return json.loads(config_file.read_text())


def load_processor(args: TowerArgs):
    """The task's processor: the tiny one, the checkpoint's, or (unimodal start) the RoBERTa tokenizer with
    BridgeTower's CLIP-normalising image processor."""
    from transformers import AutoTokenizer, BridgeTowerImageProcessor, BridgeTowerProcessor

    m = args.model
    if args.tiny and m.processor_name_or_path is None:
        return tiny_tower_processor()
    source = m.processor_name_or_path or m.model_name_or_path
    if source is not None:
        return BridgeTowerProcessor.from_pretrained(source)
    size = m.image_size or 288
    return BridgeTowerProcessor(
        BridgeTowerImageProcessor(size={"shortest_edge": size}, crop_size={"shortest_edge": size}),
        AutoTokenizer.from_pretrained(m.text_model),
    )


def _task_config(config: ManagerTowerConfig, args: TowerArgs, label2ans: list[str] | None) -> ManagerTowerConfig:
    if args.model.head_hidden_scale is not None:
        config.head_hidden_scale = args.model.head_hidden_scale
    if label2ans is not None:
        config.num_labels = len(label2ans)
        config.id2label = dict(enumerate(label2ans))
        config.label2id = {a: i for i, a in enumerate(label2ans)}
    return config


def _check_start(task: str, info: dict, source: str) -> None:
    """Starting from another task's checkpoint: only this task's head may be new, only other heads left over."""
    heads = TASK_HEADS[task]
    missing = [k for k in info.get("missing_keys", ()) if k.split(".")[0] not in heads]
    unexpected = [
        k for k in info.get("unexpected_keys", ()) if k.startswith("managertower.") or k.split(".")[0] in heads
    ]
    mismatched = list(info.get("mismatched_keys", ()))
    if mismatched:
        raise ValueError(f"{source}: weights of another shape than the model's: {mismatched[:10]}")
    check_load(missing, unexpected, source)
    new = sorted({k.split(".")[0] for k in info.get("missing_keys", ())})
    if new:
        logger.info("new (initialised) heads: %s", new)


def set_image_size(model: nn.Module, processor, size: int) -> None:
    """Train and evaluate at `size` px: the vision position embeddings interpolated to the new patch grid (bicubic,
    class token kept: the official `adapt_position_encoding`), the config and the processor's resize and crop."""
    from ..weights import interpolate_position_embedding

    vision_config = model.config.vision_config
    patch = vision_config.patch_size
    if size % patch or size % 32:
        raise ValueError(f"--image_size {size} must be a multiple of the patch size {patch} and of 32")
    embeddings = model.managertower.vision_model.visual.embeddings
    if embeddings.image_size != size:
        grid = size // patch
        old = embeddings.position_embedding.weight
        new = nn.Embedding(grid * grid + 1, old.shape[1], device=old.device, dtype=old.dtype)
        with torch.no_grad():
            new.weight.copy_(interpolate_position_embedding(old.detach(), grid))
        new.weight.requires_grad_(old.requires_grad)
        embeddings.position_embedding = new
        embeddings.register_buffer(
            "position_ids", torch.arange(grid * grid + 1, device=old.device).expand((1, -1)), persistent=False
        )
        embeddings.image_size, embeddings.num_patches, embeddings.num_positions = size, grid * grid, grid * grid + 1
        logger.info("vision position embeddings interpolated from %d to %d px", vision_config.image_size, size)
        for config in {
            id(c): c for c in (vision_config, model.managertower.config.vision_config, embeddings.config)
        }.values():
            config.image_size = size
    image_processor = processor.image_processor
    image_processor.size = {"shortest_edge": size}
    image_processor.crop_size = {"shortest_edge": size}


def build_model(args: TowerArgs, processor, label2ans: list[str] | None = None):
    """The task model: the embedded tiny default, a checkpoint (ours, any task, loaded strictly; or a transformers
    BridgeTower, warm-started), or unimodal encoders (`weights.from_unimodal`)."""
    task, m = args.task, args.model
    cls = TASK_MODELS[task]
    set_seed(args.training.seed)
    if args.tiny:
        config = _task_config(
            tiny_config(processor, m.manager_type or "aaum", m.head_hidden_scale or 1), args, label2ans
        )
        model = cls._from_config(config)
        logger.info("embedded default: a tiny %s %s model", config.manager_type, cls.__name__)
    elif m.text_model is not None:
        model = _from_unimodal(args, cls, label2ans)
    else:
        raw = _read_config(m.model_name_or_path)
        if raw.get("model_type") == "bridgetower":
            model = _from_bridgetower(args, cls, raw, label2ans)
        elif raw.get("model_type") == ManagerTowerConfig.model_type:
            config = ManagerTowerConfig.from_pretrained(m.model_name_or_path)
            if m.manager_type is not None and m.manager_type != config.manager_type:
                raise ValueError(
                    f"--manager_type {m.manager_type}: {m.model_name_or_path} is a "
                    f"{config.manager_type} model; drop the flag (a ManagerTower checkpoint keeps its "
                    f"managers) or start from a BridgeTower / unimodal checkpoint."
                )
            same_task = cls.__name__ in (config.architectures or [])
            if same_task and "head_hidden_scale" not in args.given:
                m.head_hidden_scale = None  # keep the trained head's width
            if same_task and label2ans is not None and config.id2label and len(config.id2label) > 2:
                saved = [config.id2label[i] for i in range(len(config.id2label))]
                if saved != label2ans:
                    logger.info(
                        "VQA answer vocabulary: the checkpoint's %d answers (not the %d of the data)",
                        len(saved),
                        len(label2ans),
                    )
                label2ans = saved
            config = _task_config(config, args, label2ans)
            model, info = cls.from_pretrained(m.model_name_or_path, config=config, output_loading_info=True)
            _check_start(task, info, m.model_name_or_path)
        else:
            raise ValueError(
                f"{m.model_name_or_path}: model_type {raw.get('model_type')!r}; a managertower or "
                f"bridgetower checkpoint is expected."
            )
    if m.image_size is not None:
        set_image_size(model, processor, m.image_size)
    label2ans = [model.config.id2label[i] for i in range(model.config.num_labels)] if task == "vqav2" else None
    return model, label2ans


def _managed_layers(args: TowerArgs, text_layers: int, vision_layers: int) -> int:
    if args.model.num_managed_layers is not None:
        return args.model.num_managed_layers
    return min(6, text_layers, vision_layers)


def _from_bridgetower(args: TowerArgs, cls, raw: dict, label2ans):
    from ..weights import warm_start_from_bridgetower

    keep = {
        k: v
        for k, v in raw.items()
        if k not in ("model_type", "architectures", "transformers_version", "auto_map", "dtype", "torch_dtype")
    }
    n = _managed_layers(args, raw["text_config"]["num_hidden_layers"], raw["vision_config"]["num_hidden_layers"])
    config = _task_config(
        ManagerTowerConfig(**keep, manager_type=args.model.manager_type or "aaum", num_managed_layers=n),
        args,
        label2ans,
    )
    model = cls._from_config(config)
    report = warm_start_from_bridgetower(model, args.model.model_name_or_path)
    logger.info("warm start from BridgeTower %s: %s", args.model.model_name_or_path, report.summary())
    return model


def _from_unimodal(args: TowerArgs, cls, label2ans):
    try:
        from ..weights import from_unimodal
    except ImportError as error:  # pragma: no cover - the module is part of the package
        raise RuntimeError("--text_model / --vision_model need llava_manager.tower.weights.from_unimodal") from error
    from transformers import CLIPVisionModel, RobertaModel

    m = args.model
    text, vision = RobertaModel.from_pretrained(m.text_model), CLIPVisionModel.from_pretrained(m.vision_model)
    tc, vc = text.config, vision.config
    config = ManagerTowerConfig(
        text_config={
            k: getattr(tc, k)
            for k in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "hidden_act",
                "max_position_embeddings",
                "type_vocab_size",
                "layer_norm_eps",
                "pad_token_id",
                "bos_token_id",
                "eos_token_id",
            )
        },
        vision_config=dict(
            hidden_size=vc.hidden_size,
            num_hidden_layers=vc.num_hidden_layers,
            num_channels=vc.num_channels,
            patch_size=vc.patch_size,
            image_size=vc.image_size,
            layer_norm_eps=vc.layer_norm_eps,
        ),
        hidden_size=tc.hidden_size,
        num_attention_heads=tc.num_attention_heads,
        num_hidden_layers=m.num_cross_layers,
        manager_type=m.manager_type or "aaum",
        num_managed_layers=_managed_layers(args, tc.num_hidden_layers, vc.num_hidden_layers),
    )
    config = _task_config(config, args, label2ans)
    model, report = from_unimodal(config, text, vision, model_class=cls)
    logger.info("built from unimodal encoders %s + %s: %s", m.text_model, m.vision_model, report.summary())
    return model
