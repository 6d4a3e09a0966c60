"""ManagerTower pre-training (paper Table IX): MLM + ITM on image-caption pairs, 100k steps, batch 4096, lr 1e-5
(heads and cross-modal part x5), weight decay 0.01, 10k warm-up steps, 288 px (`llava_manager.tower.training`).

From RoBERTa-base and CLIP-ViT-B/16, as the paper (the JSON holds {"image", "caption"} rows):

    deepspeed --num_gpus 8 recipes/tower_pretrain.py --deepspeed recipes/zero2.json \
        --text_model roberta-base --vision_model openai/clip-vit-base-patch16 \
        --data_path captions.json --image_folder IMAGES --output_dir runs/tower_pretrain

BridgeTower instead of ManagerTower, by the same recipe: add `--manager_type bridge` (or sam / saum; default aaum).
`--eval_data_path held_out.json` adds the MLM / ITM accuracy on held-out pairs to `runs/tower_pretrain/metrics.json`.

With no model or data arguments it trains the embedded default (a tiny model, synthetic shape captions, a minute
or so on a CPU) and reports MLM / ITM accuracy on held-out synthetic pairs:

    python recipes/tower_pretrain.py
    python recipes/tower_pretrain.py --manager_type bridge --output_dir runs/tower_pretrain_bridge

Resume an interrupted run (strictly: the checkpoint's weights must match the model key for key):

    python recipes/tower_pretrain.py --resume_from_checkpoint last
"""

from llava_manager.tower.training import main as _main
from llava_manager.tower.training import run as _run


def run(argv=None):
    return _run(argv, recipe="pretrain")


if __name__ == "__main__":
    _main(recipe="pretrain")
