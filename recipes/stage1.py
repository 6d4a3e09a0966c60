"""Stage-1, language-image alignment: projector + managers on image-caption pairs ("plain" format), lr 1e-3.

    deepspeed --num_gpus 8 recipes/stage1.py --deepspeed recipes/zero3.json \
        --model_name_or_path llava-hf/llava-onevision-qwen2-0.5b-si-hf --data_path blip_558k.json \
        --image_folder IMAGES --output_dir runs/stage1

FSDP2 instead of ZeRO, same flags and export (recipes/fsdp2.yaml; on a machine without a GPU it runs on the CPU):

    accelerate launch --config_file recipes/fsdp2.yaml --num_processes 8 recipes/stage1.py ...
    torchrun --nproc_per_node 8 recipes/stage1.py --fsdp --fsdp_config recipes/fsdp2.json ...

With no model or data arguments it trains the embedded default (a tiny model, synthetic captions):

    python recipes/stage1.py

A tiny model of another family (default llava_onevision; `--help` lists them all: the LLaVA family, Qwen-VL,
InternVL, Gemma 3, Mistral3):

    python recipes/stage1.py --family qwen2_5_vl

The model may be of any of these families; its config says which.
"""

from llava_manager.training.train import main

if __name__ == "__main__":
    main("stage1")
