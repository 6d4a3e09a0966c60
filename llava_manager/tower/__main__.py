"""ManagerTower analyses as commands.

    python -m llava_manager.tower budget [--image-size 384] [--text-length 50] [--params-only] [--json rows.json]
    python -m llava_manager.tower weights CHECKPOINT_DIR --task TASK [--data PATH --image-folder DIR]
                                          [--out fig7.png] [--max-samples N]

budget: paper Table VI, parameters and FLOPs of BridgeTower and ManagerTower (SAUM, AAUM with the own query, AAUM
with the fused query) at the BASE configuration with random weights (`tower.analysis.budget`); `--params-only` counts
the parameters alone, on the meta device (instant, no memory). The full count builds the four BASE models one at a time
(about 1.3 GB each in fp32) and runs one forward each (about half a minute on two CPU cores).

weights: paper Fig. 7, the managers' aggregation weights averaged over a data set (`tower.analysis.figures`), for a
tower checkpoint saved with `save_pretrained` (`ManagerTowerModel` or any ManagerTower task model: the class named in
its config's `architectures`, its backbone analysed). TASK is one of pretrain, vqav2, snli_ve, nlvr2, flickr30k; --data
is what the task's reader takes (pretrain: the captions JSON; vqav2: a questions JSON, --image-folder the COCO root;
snli_ve: a .jsonl; nlvr2: a data/*.json, --image-folder the NLVR2 root; flickr30k: Karpathy's dataset JSON with
--split). Without --data a synthetic data set of the task is written to a temporary folder (`tower.data.synthetic`; its
evaluation split), so the command runs offline on any tiny checkpoint. The processor is the checkpoint's own when it has
one, else `tiny_tower_processor()`. Writes the PNG (--out) and the numbers as JSON (--json, default next to the PNG).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

import torch

TASKS = ("pretrain", "vqav2", "snli_ve", "nlvr2", "flickr30k")
# The split of each synthetic data set the weights are measured on (its evaluation split; pretraining has one).
SYNTHETIC_SPLITS = {"pretrain": None, "vqav2": "val_questions", "snli_ve": "dev", "nlvr2": "dev", "flickr30k": "test"}


# ---------------------------------------------------------------------------------------------------------------------
# budget


def budget(args) -> list:
    from .analysis.budget import format_table, tower_budget

    what = (
        "parameters only (meta device)"
        if args.params_only
        else (
            f"one forward, batch 1, {args.image_size} x {args.image_size} image, text length {args.text_length}, "
            f"random weights, {args.device}"
        )
    )
    print(f"ManagerTower budget (Table VI), BASE configuration; {what}")
    rows = tower_budget(
        image_size=args.image_size,
        text_length=args.text_length,
        device=args.device,
        flops=not args.params_only,
        progress=args.progress,
    )
    print(format_table(rows))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([r.as_dict() for r in rows], indent=1))
        print(f"json: {path}")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# weights


def model_class(config):
    """The class named in `config.architectures` when `llava_manager.tower` (or its `heads` module) has it, else
    `ManagerTowerModel` (which loads the backbone of a task checkpoint too: `base_model_prefix`)."""
    from transformers import PreTrainedModel

    from . import ManagerTowerModel

    modules = [importlib.import_module("llava_manager.tower")]
    try:
        modules.append(importlib.import_module("llava_manager.tower.heads"))
    except ImportError:
        pass
    for name in getattr(config, "architectures", None) or ():
        for module in modules:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
                return cls
    return ManagerTowerModel


def load_tower(path: str | Path, device: str = "cpu"):
    """(model, backbone) of a tower checkpoint directory, in fp32, eval."""
    from transformers import AutoConfig

    from .analysis.figures import backbone

    config = AutoConfig.from_pretrained(path)
    model = model_class(config).from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, backbone(model)


def load_processor(path: str | Path, config):
    """The checkpoint's `BridgeTowerProcessor` when it has one, else `tiny_tower_processor` at the model's image
    size; the tokenizer must fit the model's vocabulary."""
    from .data.processor import TOKENIZER_FILES, load_tower_processor
    from .data.synthetic import IMAGE_SIZE, tiny_tower_processor

    if any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        processor = load_tower_processor(path)
    else:
        size = config.vision_config.image_size
        processor = tiny_tower_processor(size if size % 32 == 0 else IMAGE_SIZE)
    vocab = config.text_config.vocab_size
    if len(processor.tokenizer) > vocab:
        raise ValueError(
            f"the processor's tokenizer has {len(processor.tokenizer)} tokens, more than the model's "
            f"vocabulary ({vocab}); save the model's processor into {path}"
        )
    return processor


def synthetic_inputs(task: str, folder: Path, max_samples: int | None) -> tuple[Path, Path, str | None]:
    """(data, image folder, split) of a synthetic `task` data set written under `folder`."""
    from .data.synthetic import write_synthetic

    n = max(32, 4 * (max_samples or 0))  # the evaluation splits have n // 4 images
    paths = write_synthetic(folder, task, n=n)
    if task == "pretrain":
        return paths["annotations"], paths["image_folder"], None
    if task == "vqav2":
        return paths["val_questions"], paths["root"], None
    if task == "snli_ve":
        return paths["dev"], paths["image_folder"], None
    if task == "nlvr2":
        return paths["dev"], paths["root"], None
    return paths["annotations"], paths["image_folder"], SYNTHETIC_SPLITS["flickr30k"]


def read_task(task: str, data: str | Path, image_folder: str | Path, split: str | None = None) -> list[dict]:
    """Records of `task` by its reader in `tower.data` (pretraining and Flickr30K: image-caption pairs)."""
    from . import data as tower_data

    if task == "pretrain":
        result = tower_data.read_image_captions(data, image_folder)
    elif task == "vqav2":
        result = tower_data.read_vqav2(data, None, image_folder)
    elif task == "snli_ve":
        result = tower_data.read_snli_ve(data, image_folder)
    elif task == "nlvr2":
        result = tower_data.read_nlvr2(data, image_folder)
    elif task == "flickr30k":
        result = tower_data.read_flickr30k_karpathy(data, image_folder, split or "test")
        return tower_data.caption_pairs(result.records)
    else:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    if result.skipped:
        print(f"{len(result.skipped)} samples skipped (first: {result.skipped[0]})", file=sys.stderr)
    return result.records


def task_collator(task: str, processor):
    """The task's collator of `tower.data`, without training targets that change the inputs: captions are read
    unmasked (`RetrievalCollator`), not with the pre-training collator's MLM masking and ITM image swaps."""
    from . import data as tower_data

    if task in ("pretrain", "flickr30k"):
        return tower_data.RetrievalCollator(processor)
    if task == "vqav2":
        return tower_data.VQACollator(processor)
    if task == "snli_ve":
        return tower_data.SNLIVECollator(processor)
    if task == "nlvr2":
        return tower_data.NLVR2Collator(processor)
    raise ValueError(f"unknown task {task!r}; one of {TASKS}")


def weights(args) -> dict[str, Path]:
    from torch.utils.data import DataLoader

    from .analysis.figures import aggregation_weights, plot_aggregation_weights, write_weights_json
    from .data import TowerDataset

    model, net = load_tower(args.checkpoint, args.device)
    processor = load_processor(args.checkpoint, net.config)
    with tempfile.TemporaryDirectory(prefix="tower-weights-") as tmp:
        if args.data:
            data, image_folder, split = args.data, args.image_folder or Path(args.data).parent, args.split
        else:
            data, image_folder, split = synthetic_inputs(args.task, Path(tmp), args.max_samples)
            print(f"no --data: synthetic {args.task} data ({data})")
        records = read_task(args.task, data, image_folder, split)
        if args.max_samples is not None:
            records = records[: args.max_samples]
        if not records:
            raise SystemExit(f"no usable {args.task} sample in {data}")
        loader = DataLoader(
            TowerDataset(records),
            batch_size=args.batch_size,
            shuffle=False,
            collate_fn=task_collator(args.task, processor),
        )
        result = aggregation_weights(model, loader, progress=args.progress)
    out = Path(args.out)
    paths = {
        "png": plot_aggregation_weights(result, out, layout=args.layout),
        "json": write_weights_json(result, args.json or out.with_suffix(".json")),
    }
    for key, layers in (("text", result["text_layers"]), ("image", result["image_layers"])):
        print(
            f"{key} managers (rows: cross-modal layers 1..{len(result['cross_layers'])}; "
            f"columns: unimodal layers {layers[0]}..{layers[-1]}):"
        )
        for layer, row in zip(result["cross_layers"], result[key]):
            print(f"  {layer}: " + " ".join(f"{v:.4f}" for v in row))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return paths


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        prog="python -m llava_manager.tower", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    b = commands.add_parser("budget", help="Table VI: parameters and FLOPs at the BASE configuration")
    b.add_argument("--image-size", type=int, default=384)
    b.add_argument("--text-length", type=int, default=50)
    b.add_argument(
        "--params-only",
        "--meta-only",
        "--fast",
        dest="params_only",
        action="store_true",
        help="count parameters only, on the meta device",
    )
    b.add_argument("--device", default="cpu", help="where the models run for the FLOP count")
    b.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    b.add_argument("--progress", action="store_true", help="a progress bar over the four models")

    w = commands.add_parser("weights", help="Fig. 7: the managers' aggregation weights over a data set")
    w.add_argument("checkpoint", help="a tower checkpoint directory (save_pretrained)")
    w.add_argument("--task", choices=TASKS, required=True)
    w.add_argument("--data", default=None, help="the task's data file (default: a synthetic data set)")
    w.add_argument("--image-folder", default=None, help="images (vqav2, nlvr2: the root); default: --data's folder")
    w.add_argument("--split", default=None, help="flickr30k: the Karpathy split (default test)")
    w.add_argument("--out", default="aggregation_weights.png", help="the PNG")
    w.add_argument("--json", default=None, help="the numbers (default: --out with .json)")
    w.add_argument("--max-samples", type=int, default=None)
    w.add_argument("--batch-size", type=int, default=8)
    w.add_argument(
        "--layout",
        choices=("paper", "overlay"),
        default="paper",
        help="paper: 2 x C panels as the paper's figure; overlay: two panels, a line per layer",
    )
    w.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    w.add_argument("--no-progress", dest="progress", action="store_false")

    args = parser.parse_args(argv)
    if args.command == "budget":
        return budget(args)
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max-samples must be >= 1")
    return weights(args)


if __name__ == "__main__":
    main()
