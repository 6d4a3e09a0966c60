"""ManagerTower retrieval re-ranking, side by side: every ranked pair through the whole backbone (`itm_logits`, the
way a plain forward scores a pair) vs `retrieval_scores`, which runs the towers once per distinct image and text of a
batch of pairs and only the cross-modal part per pair (`unimodal`, `TowerStates.pairs`, `fuse`).

    python benchmarks/tower_retrieval.py                      # small random ManagerTower, CPU
    python benchmarks/tower_retrieval.py --images 100 --texts 500 --k 16 --device cuda

The model: random weights, text and vision towers of `--width` x `--layers` (vision: `--image-size` px, 16 px
patches), 3 cross-modal layers, 3 managed layers, AAUM. Texts of `--text-length` tokens. Both paths score the same
pairs (each image's top-k texts and each text's top-k images by ITC) in batches of `--batch-size`; the time is the
median of `--repeats` runs each, the two paths alternating.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llava_manager.tower import ManagerTowerConfig
from llava_manager.tower.heads import ManagerTowerForImageTextRetrieval, retrieval_scores


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--texts", type=int, default=40)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--text-length", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def build(args) -> ManagerTowerForImageTextRetrieval:
    heads = max(1, args.width // 64)
    config = ManagerTowerConfig(
        text_config=dict(
            vocab_size=1000,
            hidden_size=args.width,
            num_hidden_layers=args.layers,
            num_attention_heads=heads,
            intermediate_size=4 * args.width,
            max_position_embeddings=args.text_length + 2,
        ),
        vision_config=dict(
            hidden_size=args.width, num_hidden_layers=args.layers, patch_size=16, image_size=args.image_size
        ),
        hidden_size=args.width,
        num_attention_heads=heads,
        num_hidden_layers=3,
        num_managed_layers=3,
    )
    torch.manual_seed(0)
    return ManagerTowerForImageTextRetrieval(config).to(args.device).eval()


@torch.no_grad()
def per_pair(model, pixels, ids, mask, pairs, batch_size) -> torch.Tensor:
    """The baseline: each ranked pair through the whole backbone."""
    itm = torch.full((pixels.shape[0], ids.shape[0]), -100.0, device=pixels.device)
    for part in pairs.split(batch_size):
        image, text = part[:, 0], part[:, 1]
        itm[image, text] = model.itm_logits(ids[text], mask[text], pixels[image])[:, 1].float()
    return itm


def main():
    args = parse_args()
    model = build(args)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(args.images, 3, args.image_size, args.image_size, generator=g).to(args.device)
    ids = torch.randint(3, 1000, (args.texts, args.text_length), generator=g).to(args.device)
    mask = torch.ones_like(ids)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        sims = model.image_itc_features(pixels) @ model.text_itc_features(ids, mask).t()
    k_t, k_i = min(args.k, args.texts), min(args.k, args.images)
    ranked = torch.zeros_like(sims, dtype=torch.bool)
    ranked.scatter_(1, sims.topk(k_t, dim=1).indices, True).scatter_(0, sims.topk(k_i, dim=0).indices, True)
    pairs = ranked.nonzero()

    times = {"per pair": [], "retrieval_scores": []}
    for r in range(args.repeats):
        order = ["per pair", "retrieval_scores"] if r % 2 == 0 else ["retrieval_scores", "per pair"]
        for name in order:
            sync()
            start = time.perf_counter()
            if name == "per pair":
                baseline = per_pair(model, pixels, ids, mask, pairs, args.batch_size)
            else:
                scores = retrieval_scores(
                    model,
                    [pixels],
                    [{"input_ids": ids, "attention_mask": mask}],
                    k=args.k,
                    batch_size=args.batch_size,
                    progress=False,
                )
            sync()
            times[name].append(time.perf_counter() - start)

    # retrieval_scores keeps max(i2t, t2i) of the same ITM logit: on ranked pairs it is that logit
    diff = (scores[ranked] - baseline[ranked]).abs().max().item()
    base, ours = statistics.median(times["per pair"]), statistics.median(times["retrieval_scores"])
    print(
        f"{args.images} images x {args.texts} texts, k = {args.k}: {len(pairs)} ranked pairs in batches of "
        f"{args.batch_size}; towers {args.width} wide x {args.layers} layers, {args.image_size} px images, "
        f"{args.text_length} text tokens; {args.device}, {torch.get_num_threads()} threads"
    )
    print(f"ITM scores of the ranked pairs, largest difference: {diff:.2e}")
    print(f"{'':18} {'s (median)':>10} {'vs per pair':>12}")
    print(f"{'per pair':18} {base:10.3f} {'x1.00':>12}")
    print(f"{'retrieval_scores':18} {ours:10.3f} {f'x{base / ours:.2f}':>12}")


if __name__ == "__main__":
    main()
