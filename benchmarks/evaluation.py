"""lmms-eval side by side: `--model llava_manager` (this package) against lmms-eval's own HF LLaVA model `llava_hf`
(`lmms_eval.models.simple.llava_hf.LlavaHf`) on the same documents and the same LLaVA-1.5 checkpoint, through their
lmms-eval methods (`loglikelihood` for a 4-choice multiple-choice task, `generate_until` for generation) with
`Instance` requests built as lmms-eval builds them.

    python benchmarks/evaluation.py                                  # the default (docs/benchmarks.md)
    python benchmarks/evaluation.py --repetitions 9 --hidden 512 --layers 8

The checkpoint: a random LLaVA-1.5 (CLIP tower of `--vision-hidden` x `--vision-layers` at `--image-size` px in
14 px patches, a Llama of `--hidden` x `--layers`), saved with a word-level tokenizer, a CLIP image processor and a
chat template that both models render the same way, so that both see the same tokens. The documents: `--docs`
synthetic shapes images (`llava_manager.synthetic`) with one of two questions; the 4 choices are colours of 1 to 3
words. Each repetition times both models on every document, in alternating order; documents per second per batch
size and task, and the median (min-max) over the repetitions of the ratio ours / llava_hf.

What is checked: the log-likelihoods agree to the printed max abs difference, each document's chosen answer (lowest
NLL) is the same, and the generated texts are identical. Not compared: llava_hf's is-greedy flags (it compares each
continuation token with the argmax at its own position instead of the one before it).

llava_hf as it is cannot score multiple choice with transformers 5: it counts the context's tokens by calling the
processor on the context text alone, whose `<image>` placeholder the processor refuses without an image ("Found 1
<image> tokens in the text but no images were passed"). Here it runs with that one call answered as intended (the
placeholder expanded to the image's tokens, then tokenised; `ContextLength`); everything else is lmms-eval's code.
It also refuses `--batch_size` above 1 in generation, so its generation runs at batch size 1 beside ours at each
batch size; it does not apply `until` (the requests stop at a string that never occurs, so that both answer alike).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

QUESTIONS = ("What colour is the shape ?", "What colour is the shape in the image ?")
CHOICES = ("red", "green circle", "blue square shape", "yellow")
UNTIL = ["<never>"]  # a stop string no answer holds: llava_hf ignores `until`
TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<|im_start|>user\n' + message['content'] + '<|im_end|>\n<|im_start|>assistant\n' }}"
    "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5, help="timed repetitions per batch size and task")
    parser.add_argument("--docs", type=int, default=8, help="documents per task")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--hidden", type=int, default=384, help="the LLM's hidden size")
    parser.add_argument("--layers", type=int, default=4, help="the LLM's decoder layers")
    parser.add_argument("--vision-hidden", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=112, help="px; (size / 14)^2 image tokens")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--tasks", default="multiple_choice,generation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32: answers must match; others: reported only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--progress", action="store_true", help="show the models' progress bars (stderr)")
    return parser.parse_args(argv)


# ---- the checkpoint and the documents ------------------------------------------------------------------------------
def write_checkpoint(directory: Path, args) -> None:
    """A random LLaVA-1.5 of the sizes asked, with its processor, saved to `directory`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from llava_manager.families import FAMILIES
    from llava_manager.processing.processors import build_processor
    from llava_manager.synthetic.data import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    crop = {"height": args.image_size, "width": args.image_size}
    image_processor = FAMILIES["llava"].image_processor_class(size={"shortest_edge": args.image_size}, crop_size=crop)
    processor = build_processor(
        image_processor,
        tokenizer,
        family="llava",
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATE,
    )
    heads = max(1, args.hidden // 64)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=args.vision_hidden,
            intermediate_size=4 * args.vision_hidden,
            num_hidden_layers=args.vision_layers,
            num_attention_heads=max(1, args.vision_hidden // 64),
            image_size=args.image_size,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
        ),
        image_token_index=processor.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    for target in (model.generation_config, config):  # llava_hf stops at the tokenizer's EOS: so does ours
        target.eos_token_id, target.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def documents(count: int) -> list[dict]:
    from llava_manager.synthetic.data import random_shape

    rng = random.Random(0)
    docs = []
    for i in range(count):
        image, _ = random_shape(rng)
        docs.append({"image": image, "question": QUESTIONS[i % len(QUESTIONS)]})
    return docs


def doc_to_visual(doc: dict) -> list:
    return [doc["image"]]


def mc_requests(docs: list[dict]) -> list:
    """A multiple-choice task's requests as lmms-eval builds them: one per (document, choice), choice index as idx."""
    from lmms_eval.api.instance import Instance

    return [
        Instance(
            "loglikelihood",
            (doc["question"], " " + choice, doc_to_visual, d, "shapes", "test"),
            idx=k,
            metadata={"task": "shapes", "doc_id": d, "repeats": 1},
        )
        for d, doc in enumerate(docs)
        for k, choice in enumerate(CHOICES)
    ]


def generation_requests(docs: list[dict], max_new_tokens: int) -> list:
    """Fresh requests (llava_hf changes the generation kwargs it is given)."""
    from lmms_eval.api.instance import Instance

    kwargs = lambda: {"max_new_tokens": max_new_tokens, "temperature": 0, "until": list(UNTIL)}  # noqa: E731
    return [
        Instance(
            "generate_until",
            (doc["question"], kwargs(), doc_to_visual, d, "shapes", "test"),
            idx=0,
            metadata={"task": "shapes", "doc_id": d, "repeats": 1},
        )
        for d, doc in enumerate(docs)
    ]


# ---- the two models ------------------------------------------------------------------------------------------------
class ContextLength:
    """llava_hf's processor, with its one failing call answered as intended: the context text alone (no images) is
    tokenised with each `<image>` expanded to the image's tokens, which the processor refuses to do without the
    image in transformers 5. Every other call and attribute is the processor's."""

    def __init__(self, processor, image_tokens: int) -> None:
        self._processor, self._image_tokens = processor, image_tokens

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def __call__(self, *args, text=None, images=None, **kwargs):
        if images is None and text is not None:
            token = self._processor.image_token
            text = [t.replace(token, token * self._image_tokens) for t in text]
            return self._processor.tokenizer(text, **kwargs)
        return self._processor(*args, text=text, images=images, **kwargs)


def ours(directory: Path, batch_size: int, docs: list[dict], args):
    from llava_manager.evaluation.lmms_eval_model import LlavaManager

    lm = LlavaManager(
        pretrained=str(directory), device=args.device, dtype=args.dtype, batch_size=batch_size, response_cache="none"
    )
    lm.task_dict = {"shapes": {"test": docs}}
    return lm


def theirs(directory: Path, docs: list[dict], args):
    from lmms_eval.models.simple.llava_hf import LlavaHf

    with contextlib.redirect_stdout(io.StringIO()):
        device = args.device
        lm = LlavaHf(pretrained=str(directory), device=device, dtype=args.dtype, batch_size=1, device_map=device)
    lm._image_processor = ContextLength(lm._image_processor, (args.image_size // 14) ** 2)
    lm.task_dict = {"shapes": {"test": docs}}
    return lm


def nlls(results) -> list[float]:
    """The NLL of each loglikelihood answer (ours come wrapped in a GenerationResult)."""
    return [float(getattr(r, "text", r)[0]) for r in results]


def answers(values: list[float]) -> list[int]:
    """Per document, the index of the lowest-NLL choice."""
    n = len(CHOICES)
    return [min(range(n), key=lambda k: values[d * n + k]) for d in range(len(values) // n)]


# ---- timing --------------------------------------------------------------------------------------------------------
def timed(run) -> tuple[float, list]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def side_by_side(run_ours, run_theirs, repetitions: int) -> tuple[list[float], list[float], list, list]:
    """Both runs `repetitions` times, alternating which goes first; their times and their last results."""
    times_ours, times_theirs = [], []
    result_ours = result_theirs = None
    for rep in range(repetitions):
        order = ("ours", "theirs") if rep % 2 == 0 else ("theirs", "ours")
        for who in order:
            if who == "ours":
                seconds, result_ours = timed(run_ours)
                times_ours.append(seconds)
            else:
                seconds, result_theirs = timed(run_theirs)
                times_theirs.append(seconds)
    return times_ours, times_theirs, result_ours, result_theirs


def report(task: str, batch_size: int, theirs_batch: int, docs: int, times_ours, times_theirs, check: str) -> None:
    rate_ours = [docs / t for t in times_ours]
    rate_theirs = [docs / t for t in times_theirs]
    ratios = [t / o for o, t in zip(times_ours, times_theirs)]
    print(
        f"{task:16s} batch {batch_size}: ours {statistics.median(rate_ours):7.2f} docs/s, "
        f"llava_hf (batch {theirs_batch}) {statistics.median(rate_theirs):7.2f} docs/s"
    )
    print(
        f"{task:16s} batch {batch_size}: ratio ours / llava_hf {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x over {len(ratios)} repetitions); {check}"
    )


def mismatch(same: bool, what: str, args) -> None:
    """Different answers fail the run in float32; in a lower precision rounding may flip a close call: reported."""
    if not same and args.dtype == "float32":
        raise SystemExit(f"the two models {what}")


def multiple_choice(directory, docs, args, batch_size, baseline) -> None:
    lm = ours(directory, batch_size, docs, args)
    lm.loglikelihood(mc_requests(docs[:1]))  # warm up
    times_ours, times_theirs, result_ours, result_theirs = side_by_side(
        lambda: lm.loglikelihood(mc_requests(docs)), lambda: baseline.loglikelihood(mc_requests(docs)), args.repetitions
    )
    a, b = nlls(result_ours), nlls(result_theirs)
    difference = max(abs(x - y) for x, y in zip(a, b))
    same = answers(a) == answers(b)
    check = f"max |NLL difference| {difference:.2e}, answers {'identical' if same else 'DIFFERENT'}"
    report("multiple choice", batch_size, 1, len(docs), times_ours, times_theirs, check)
    mismatch(same, "chose different answers", args)


def generation(directory, docs, args, batch_size, baseline) -> None:
    lm = ours(directory, batch_size, docs, args)
    lm.generate_until(generation_requests(docs[:1], args.max_new_tokens))  # warm up
    times_ours, times_theirs, result_ours, result_theirs = side_by_side(
        lambda: lm.generate_until(generation_requests(docs, args.max_new_tokens)),
        lambda: baseline.generate_until(generation_requests(docs, args.max_new_tokens)),
        args.repetitions,
    )
    same = result_ours == result_theirs
    check = f"answers {'identical' if same else 'DIFFERENT'} ({sum(map(bool, result_ours))} of {len(docs)} non-empty)"
    report("generation", batch_size, 1, len(docs), times_ours, times_theirs, check)
    mismatch(same, "generated different answers", args)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from loguru import logger

    logger.remove()  # lmms-eval's INFO lines, and the progress bars on stderr, would bury the table
    quiet = contextlib.nullcontext() if args.progress else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        run(args)


def run(args) -> None:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    tasks = args.tasks.split(",")
    docs = documents(args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "llava-1.5"
        write_checkpoint(directory, args)
        print(
            f"LLaVA-1.5, random: LLM {args.hidden} x {args.layers} layers, CLIP {args.vision_hidden} x "
            f"{args.vision_layers} at {args.image_size} px ({(args.image_size // 14) ** 2} image tokens); "
            f"{args.docs} documents, {len(CHOICES)} choices each; {args.repetitions} repetitions; "
            f"torch threads {torch.get_num_threads()}"
        )
        baseline = theirs(directory, docs, args)
        baseline.loglikelihood(mc_requests(docs[:1]))  # warm up
        for batch_size in batch_sizes:
            if "multiple_choice" in tasks:
                multiple_choice(directory, docs, args, batch_size, baseline)
            if "generation" in tasks:
                generation(directory, docs, args, batch_size, baseline)


if __name__ == "__main__":
    main()
