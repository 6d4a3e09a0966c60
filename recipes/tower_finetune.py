"""ManagerTower fine-tuning (paper Table XIV) on VQAv2, SNLI-VE, NLVR2 or Flickr30K, from a pre-trained model
(`llava_manager.tower.training`; the defaults of each task are in its TASK_DEFAULTS):

    deepspeed --num_gpus 8 recipes/tower_finetune.py --deepspeed recipes/zero2.json --task vqav2 \
        --model_name_or_path runs/tower_pretrain --data_path VQAV2_JSONS --image_folder COCO \
        --output_dir runs/tower_vqav2
    deepspeed --num_gpus 8 recipes/tower_finetune.py --deepspeed recipes/zero2.json --task snli_ve \
        --model_name_or_path runs/tower_pretrain --data_path SNLI_VE_JSONL_FOLDER --image_folder flickr30k-images
    deepspeed --num_gpus 8 recipes/tower_finetune.py --deepspeed recipes/zero2.json --task nlvr2 \
        --model_name_or_path runs/tower_pretrain --data_path nlvr2/data --image_folder NLVR2_IMAGES
    deepspeed --num_gpus 8 recipes/tower_finetune.py --deepspeed recipes/zero2.json --task flickr30k \
        --model_name_or_path runs/tower_pretrain --data_path karpathy/dataset_flickr30k.json \
        --image_folder flickr30k-images

Data layouts (the tasks' published files): VQAv2 `v2_OpenEnded_mscoco_{train2014,val2014}_questions.json` +
`v2_mscoco_*_annotations.json` in --data_path, COCO `train2014/`, `val2014/` under --image_folder; SNLI-VE
`snli_ve_{train,dev,test}.jsonl`; NLVR2 `{train,dev,test1}.json` with `images/train/*/`, `dev/`, `test1/` under
--image_folder; Flickr30K Karpathy's JSON. `--train_split` / `--eval_split` pick splits (defaults: VQAv2
train2014 / val2014, SNLI-VE and NLVR2 train / dev, Flickr30K train,val / test).

--model_name_or_path may be a ManagerTower directory (ours, any task: only the new head starts fresh) or a
transformers BridgeTower one (warm-started into `--manager_type`, default aaum; `--manager_type bridge` fine-tunes
BridgeTower itself). After training, the model and processor are in --output_dir and the evaluation (VQA score,
accuracy, or IR/TR@1/5/10) in `{output_dir}/metrics.json`.

With no model or data arguments it fine-tunes the embedded default (a tiny model built in code, synthetic data of
the task's layout) on a CPU in about a minute:

    python recipes/tower_finetune.py --task vqav2
    python recipes/tower_finetune.py --task nlvr2 --manager_type bridge
    deepspeed --num_gpus 2 recipes/tower_finetune.py --deepspeed recipes/zero2.json --task snli_ve

Resume an interrupted run (strictly: the checkpoint's weights must match the model key for key):

    python recipes/tower_finetune.py --task vqav2 --resume_from_checkpoint last
"""

from llava_manager.tower.training import main as _main
from llava_manager.tower.training import run as _run


def run(argv=None):
    return _run(argv, recipe="finetune")


if __name__ == "__main__":
    _main(recipe="finetune")
