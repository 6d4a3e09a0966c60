"""Training throughput on the embedded default: the data pipeline alone, then whole training steps.

    python benchmarks/training_throughput.py                 # tiny default, CPU
    python benchmarks/training_throughput.py --workers 4 --steps 100

The data pipeline (JSON records -> image decode -> image processor -> tokens and labels -> collation) runs in
DataLoader worker processes, as in training; its samples/s is measured by iterating the loader with no model. The
training figure is the Trainer's own `train_samples_per_second` of a short stage-2 run (forward, backward, optimizer,
with the same loader). The manager overhead of a training step at the 0.5B shape is in `overhead.py`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from torch.utils.data import DataLoader
from tqdm import tqdm

from llava_manager.synthetic.data import tiny_processor, write_shapes_dataset
from llava_manager.training.data import Collator, SupervisedDataset, load_records
from llava_manager.training.train import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shapes_dataset(tmp, args.samples)
        processor = tiny_processor()
        dataset = SupervisedDataset(load_records(paths["instruct"]), processor, paths["image_folder"])
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            num_workers=args.workers,
            collate_fn=Collator(processor.tokenizer.pad_token_id),
        )
        start, seen = time.perf_counter(), 0
        for batch in tqdm(loader, desc="data pipeline"):
            seen += batch["input_ids"].shape[0]
        data_rate = seen / (time.perf_counter() - start)

        trainer = run(
            "stage2",
            [
                "--output_dir",
                f"{tmp}/run",
                "--max_steps",
                str(args.steps),
                "--save_strategy",
                "no",
                "--synthetic_samples",
                str(args.samples),
                "--logging_steps",
                str(args.steps),
                "--per_device_train_batch_size",
                str(args.batch_size),
                "--dataloader_num_workers",
                str(args.workers),
            ],
        )
        train_rate = trainer.state.log_history[-1]["train_samples_per_second"]

    print(f"\ntiny default, batch {args.batch_size}, {args.workers} data loader workers")
    print(f"{'data pipeline alone':<28}{data_rate:>10.1f} samples/s")
    verdict = "the loader keeps up" if data_rate > train_rate else "the loader is the bottleneck: add workers"
    print(
        f"{'training step (stage 2)':<28}{train_rate:>10.1f} samples/s  (data pipeline / training = "
        f"{data_rate / train_rate:.1f}x: {verdict})"
    )


if __name__ == "__main__":
    main()
