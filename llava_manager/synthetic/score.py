"""Held-out colour questions on synthetic shapes images, scored the way lmms-eval scores `eval/shapes_tasks`.

The main job (`python recipes/stage2.py` with no model or data) ends by scoring its export here, so a run shows
that the model learned without running anything else. `eval/shapes_tasks/make_data.py` writes the same documents
for lmms-eval. Two scores, the rules of lmms-eval's two task types (no lmms-eval import):

- exact match (`shapes_gen`): greedy generation, at most 4 new tokens, cut at the first "."; right when, lower-cased,
  without punctuation and surrounding spaces, it is the colour;
- multiple choice (`shapes_mc`): the colour whose continuation (" " + colour, tokenised on its own after the prompt
  with the image) has the lowest mean negative log-likelihood, as `lmms_eval_model.LlavaOvManager.loglikelihood`
  computes it and lmms-eval's multiple choice ranks it.

Any family's export is scored the same way, prompted in the conversation format its family's embedded default trains
in (`data.tiny_template`: ChatML, Gemma's for Gemma 3) with the family's image placeholder
(`processors.image_prompt`); the processor's image inputs go to the model as they come (pixels, image sizes for the
anyres families, patch grids for Qwen-VL), with the token types the family's forward takes.

    python -m llava_manager.synthetic.score runs/stage2 [--samples 200] [--out scores.json]
"""

from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

import torch

from ..families import family_of_config
from ..processing.prompts import template_prompt
from .data import COLOURS, QUESTIONS, random_shape, tiny_template

CHOICES = list(COLOURS)
QUESTION = QUESTIONS["colour"]
HELDOUT_SEED = 1_000_003  # seeds a stream salted with "heldout-", apart from the training data's Random(--seed)
DEFAULT_SAMPLES = 200
MAX_NEW_TOKENS = 4
STOP = "."
_PUNCTUATION = str.maketrans("", "", string.punctuation)
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def heldout_docs(samples: int = DEFAULT_SAMPLES, seed: int = HELDOUT_SEED) -> list[dict]:
    """`samples` colour questions about fresh images: {"image", "question", "answer", "choices", "label"}.
    The images come from the training generator (`data.random_shape`) on a random stream of their own; its
    jitter makes them differ from the training images (checked for the default run in
    tests/package/test_main_job.py)."""
    rng = random.Random(f"heldout-{seed}")
    docs = []
    for _ in range(samples):
        image, facts = random_shape(rng)
        colour = facts["colour"]
        docs.append(
            {
                "image": image,
                "question": QUESTION,
                "answer": colour,
                "choices": list(CHOICES),
                "label": CHOICES.index(colour),
            }
        )
    return docs


def normalise(text: str) -> str:
    """As lmms-eval scores `shapes_gen`: the text up to the first ".", lower-cased, without punctuation (its
    `exact_match` with ignore_case and ignore_punctuation) and without surrounding spaces."""
    return text.split(STOP)[0].lower().translate(_PUNCTUATION).strip()


def prompt(processor, question: str, template: str = "qwen_1_5") -> str:
    """The prompt of a question about one image in the embedded default's conversation format (`template`)."""
    return template_prompt(processor, question, 1, template)


def model_template(model) -> str:
    """The conversation format `model`'s family's embedded default trains in (`data.tiny_template`)."""
    return tiny_template(getattr(model.config, "model_type", "llava_onevision"))


def _inputs(processor, prompts: list[str], images: list, device, dtype) -> dict:
    # one list of images a prompt (Gemma 3's processor takes no flat list for several prompts)
    inputs = processor(text=prompts, images=[[image] for image in images], return_tensors="pt", padding=True)
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}


@torch.inference_mode()
def generate_answers(model, processor, docs: list[dict], batch_size: int = 16) -> list[str]:
    """Greedy answers (cut at "."), batched with left padding."""
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers = []
    try:
        for start in range(0, len(docs), batch_size):
            batch = docs[start : start + batch_size]
            prompts = [prompt(processor, d["question"], model_template(model)) for d in batch]
            inputs = _inputs(processor, prompts, [d["image"] for d in batch], model.device, model.dtype)
            tokens = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts = tokenizer.batch_decode(tokens[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            answers += [t.split(STOP)[0] for t in texts]
    finally:
        tokenizer.padding_side = side
    return answers


@torch.inference_mode()
def choice_nlls(model, processor, doc: dict) -> list[float]:
    """Mean negative log-likelihood of each choice (" " + choice) after the prompt with the image: the rule of
    `LlavaOvManager.loglikelihood`, with the choices in one right-padded batch."""
    tokenizer = processor.tokenizer
    context = _inputs(
        processor,
        [prompt(processor, doc["question"], model_template(model))],
        [doc["image"]],
        model.device,
        model.dtype,
    )
    n = context["input_ids"].shape[1]
    targets = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in doc["choices"]]
    length = n + max(len(t) for t in targets)
    k = len(targets)
    input_ids = torch.full((k, length), tokenizer.pad_token_id, dtype=torch.long, device=model.device)
    attention_mask = torch.zeros_like(input_ids)
    for row, target in enumerate(targets):
        input_ids[row, :n] = context["input_ids"][0]
        input_ids[row, n : n + len(target)] = torch.tensor(target, device=model.device)
        attention_mask[row, : n + len(target)] = 1
    # The image inputs, whatever the family's processor gives (pixel_values, image_sizes for the anyres families,
    # image_grid_thw for Qwen-VL's patch rows), repeated for each choice; the token types (Gemma 3, Qwen-VL) of the
    # rows from their tokens.
    images = {key: torch.cat([value] * k) for key, value in context.items() if key not in TEXT_KEYS}
    adapter = family_of_config(model.config)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        **adapter.token_inputs(model.config, input_ids),
        **images,
    }
    logprobs = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
    nlls = []
    for row, target in enumerate(targets):
        picked = logprobs[row, n - 1 : n - 1 + len(target)].gather(
            -1, torch.tensor(target, device=model.device)[:, None]
        )
        nlls.append(float(-picked.mean()))
    return nlls


def score(model, processor, docs: list[dict], batch_size: int = 16) -> dict:
    """Exact match and multiple-choice accuracy of `model` on `docs` (see the module's docstring)."""
    was_training = model.training
    model.eval()
    try:
        answers = generate_answers(model, processor, docs, batch_size)
        picks = [min(range(len(d["choices"])), key=choice_nlls(model, processor, d).__getitem__) for d in docs]
    finally:
        model.train(was_training)
    exact = [normalise(a) == normalise(d["answer"]) for a, d in zip(answers, docs)]
    correct = [p == d["label"] for p, d in zip(picks, docs)]
    predicted = {}
    for a in answers:
        predicted[normalise(a)] = predicted.get(normalise(a), 0) + 1
    return {
        "samples": len(docs),
        "exact_match": sum(exact) / len(docs),
        "mc_accuracy": sum(correct) / len(docs),
        "chance": 1 / len(CHOICES),
        "answers": dict(sorted(predicted.items(), key=lambda kv: -kv[1])),
    }


def score_export(path: str | Path, samples: int = DEFAULT_SAMPLES, seed: int = HELDOUT_SEED) -> dict:
    """Score a saved model directory (a recipe's `--output_dir`) on `samples` held-out documents."""
    from ..core.persistence import from_pretrained
    from ..processing.processors import load_processor

    model = from_pretrained(path, dtype=torch.float32)
    result = score(model, load_processor(path), heldout_docs(samples, seed))
    return {"model": str(path), "seed": seed, **result}


def describe(result: dict) -> str:
    """The scores as a few lines for a terminal."""
    return "\n".join(
        [
            f"held-out shapes score: {result['samples']} colour questions about images the model never saw "
            f"(chance {result['chance']:.2f})",
            f"  exact match      {result['exact_match']:.3f}   greedy answer == the colour (lmms-eval shapes_gen)",
            f"  multiple choice  {result['mc_accuracy']:.3f}   lowest mean NLL of the {len(CHOICES)} colours "
            "(lmms-eval shapes_mc)",
            f"  answers given    {', '.join(f'{k!r} x{n}' for k, n in list(result['answers'].items())[:6])}"
            + (", ..." if len(result["answers"]) > 6 else ""),
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model directory saved by this package (e.g. runs/stage2)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--out", help="write the scores to this JSON file")
    args = parser.parse_args(argv)
    result = score_export(args.model, args.samples, args.seed)
    print(describe(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
