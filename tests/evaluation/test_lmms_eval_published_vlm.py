"""`--model llava_manager` on checkpoints laid out like the published ones of the non-LLaVA families (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE, InternVL3-hf, Gemma 3, Mistral 3 (Mistral-Small-3.1, whose
`PixtralProcessor` runs on its PIL image processor without torchvision), and Pixtral-12B (a LLaVA model with a Pixtral
tower and the same processor, no 2 x 2 merge, a tokenizer that adds no BOS and has no pad token);
tests/support/published_vlm.py): their
config.json, processor files, chat template and tokenizer with the special tokens at their real ids. Loaded through
the class lmms-eval resolves, prompted with the checkpoint's own chat template, generation and log-likelihoods
checked against an independent computation (transformers' `processor.apply_chat_template` with the image in the
message, full forwards without cache, the token types extended over the continuation by hand), and one real lmms-eval
run per checkpoint on the package's shapes tasks (generation + multiple choice)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.helpers import one_thread, subprocess_env  # noqa: F401 (one_thread: an autouse fixture)
from support.published_vlm import PUBLISHED_VLM, write_published_vlm

pytest.importorskip("lmms_eval")

import llava_manager  # noqa: E402
from llava_manager.families import FAMILIES  # noqa: E402
from llava_manager.processing.processors import load_processor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What colour is the shape ?"
CHOICES = (" red", " blue")
MAX_NEW_TOKENS = 5
NAMES = list(PUBLISHED_VLM)

# What each checkpoint's chat template renders for one image and QUESTION (the prompt before the processor expands
# the image placeholder).
PROMPTS = {
    "Qwen2-VL-7B-Instruct": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "Qwen3-VL-8B-Instruct": (
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "InternVL3-1B-hf": f"<|im_start|>user\n<IMG_CONTEXT>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
    "gemma-3-4b-it": f"<bos><start_of_turn>user\n<start_of_image>{QUESTION}<end_of_turn>\n<start_of_turn>model\n",
    # Mistral Small 3's default system turn, with the day the template renders it (`strftime_now`); no generation
    # prompt: the answer follows [/INST].
    "Mistral-Small-3.1-24B-Instruct-2503": (
        "<s>[SYSTEM_PROMPT]You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French "
        "startup headquartered in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is "
        "{today}.\n\nWhen you're not sure about some information, you say that you don't have the information and "
        "don't make up anything.\nIf the user's question is not clear, ambiguous, or does not provide enough context "
        "for you to accurately answer the question, you do not try to answer it right away and you rather ask the "
        'user to clarify their request (e.g. "What are some good restaurants around me?" => "Where are you?" or '
        '"When is the next flight to Tokyo" => "Where do you travel from?")[/SYSTEM_PROMPT]'
        f"[INST][IMG]{QUESTION}[/INST]"
    ),
    # Pixtral-12B: no system turn, no generation prompt; the template writes <s> (its tokenizer adds none).
    "pixtral-12b": f"<s>[INST][IMG]{QUESTION}[/INST]",
}
PROMPTS["Qwen2.5-VL-3B-Instruct"] = PROMPTS["Qwen2-VL-7B-Instruct"]
for _name in ("Qwen3-VL-30B-A3B-Instruct", "Qwen3.5-27B", "Qwen3.5-35B-A3B"):
    PROMPTS[_name] = PROMPTS["Qwen3-VL-8B-Instruct"]
# The image placeholder's real id, and how many of them one image of each document gets, per checkpoint.
IMAGE_TOKEN_IDS = {
    "Qwen2-VL-7B-Instruct": 151655,
    "Qwen2.5-VL-3B-Instruct": 151655,
    "Qwen3-VL-8B-Instruct": 151655,
    "Qwen3-VL-30B-A3B-Instruct": 151655,
    "Qwen3.5-27B": 248056,
    "Qwen3.5-35B-A3B": 248056,
    "InternVL3-1B-hf": 151667,
    "gemma-3-4b-it": 262144,
    "Mistral-Small-3.1-24B-Instruct-2503": 10,
    "pixtral-12b": 10,
}
# Tekken's control tokens at their real ids (Mistral-Small-3.1, Pixtral-12B), and bytes of its regular vocabulary (byte
# b at 1000 + b); transformers' Mistral 3 and Pixtral processor tests show <s>, [IMG], [IMG_BREAK], [IMG_END] and
# these bytes there (Pixtral's: "\n" 1010, " " 1032, ":" 1058, "?" 1063, with no <s> in front).
TOKEN_IDS = {
    "Mistral-Small-3.1-24B-Instruct-2503": {
        "<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[IMG]": 10, "<pad>": 11, "[IMG_BREAK]": 12,
        "[IMG_END]": 13, "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18,
    },
    "pixtral-12b": {
        "<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[IMG]": 10, "<pad>": 11, "[IMG_BREAK]": 12,
        "[IMG_END]": 13,
    },
}  # fmt: skip
BYTE_IDS = {
    "Mistral-Small-3.1-24B-Instruct-2503": {" ": [1032], "\n": [1010]},
    "pixtral-12b": {" ": [1032], "\n": [1010], ":": [1058], "?": [1063]},
}
# Whether the tokenizer puts <s> first by itself (Mistral-Small-3.1's LlamaTokenizerFast does; Pixtral-12B's converted
# tokenizer does not: transformers' Pixtral processor test tokenises "USER: [IMG]..." to 21510, 1058, 1032, 10, ...).
ADDS_BOS = {"Mistral-Small-3.1-24B-Instruct-2503": True, "pixtral-12b": False}
# The image's tokens for DOCS[0] (80x40) where a checkpoint writes more than a run of image tokens: Pixtral at
# longest_edge 32 with 8 px per token (4 px patches, 2 x 2 merge) resizes it to 32x16, 2 rows of 4 [IMG], each row
# but the last closed by [IMG_BREAK], the image by [IMG_END].
# Pixtral-12B at longest_edge 32 with 8 px patches and no merge gives the same 2 rows of 4.
IMAGE_LAYOUTS = {
    "Mistral-Small-3.1-24B-Instruct-2503": [10, 10, 10, 10, 12, 10, 10, 10, 10, 13],
    "pixtral-12b": [10, 10, 10, 10, 12, 10, 10, 10, 10, 13],
}
# <|im_start|>, <|im_end|>, <|vision_start|>, <|image_pad|> of the Qwen checkpoints: Qwen2's ids, or Qwen3.5's
# (248045 and 248046 reconstructed; 248053 and 248056 as transformers' Qwen3.5 configs have them).
QWEN_CHAT_IDS = {"Qwen3.5-27B": [248045, 248046, 248053, 248056], "Qwen3.5-35B-A3B": [248045, 248046, 248053, 248056]}


def expected_prompt(name: str) -> str:
    """PROMPTS[name] on the day a chat template's `strftime_now("%Y-%m-%d")` renders now."""
    return PROMPTS[name].replace("{today}", datetime.now().strftime("%Y-%m-%d"))


def noise(mode: str, width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


DOCS = [
    {"image": noise("RGB", 80, 40, 0)},
    {"image": noise("L", 57, 111, 1)},
    {"image": noise("P", 300, 12, 2)},
]


@pytest.fixture(scope="module", params=NAMES)
def published(request, tmp_path_factory):
    """(name, directory) of a tiny checkpoint in the published layout."""
    name = request.param
    return name, write_published_vlm(tmp_path_factory.mktemp("published_vlm") / name, name)


def lmms_model(directory, **kwargs):
    from lmms_eval.models import get_model

    lm = get_model("llava_manager")(
        pretrained=str(directory), device="cpu", dtype="float32", response_cache="none", **kwargs
    )
    lm.task_dict = {"docs": {"test": DOCS}}
    return lm


def generation_requests(doc_ids):
    from lmms_eval.api.instance import Instance

    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "until": ["."]}
    return [
        Instance(
            "generate_until",
            (QUESTION, kwargs, lambda doc: [doc["image"]], d, "docs", "test"),
            idx=0,
            metadata={"task": "docs", "doc_id": d, "repeats": 1},
        )  # fmt: skip
        for d in doc_ids
    ]


def choice_requests(doc_ids):
    from lmms_eval.api.instance import Instance

    return [
        Instance(
            "loglikelihood",
            (QUESTION, choice, lambda doc: [doc["image"]], d, "docs", "test"),
            idx=k,
            metadata={"task": "docs", "doc_id": d, "repeats": 1},
        )  # fmt: skip
        for d in doc_ids
        for k, choice in enumerate(CHOICES)
    ]


def chat_inputs(processor, image: Image.Image, question: str = QUESTION) -> dict:
    """transformers' own path: the checkpoint's chat template over a message holding the image, tokenised and
    laid out by the processor (as a user of the published checkpoint would call it)."""
    messages = [{"role": "user", "content": [{"type": "image", "image": image.convert("RGB")},
                                             {"type": "text", "text": question}]}]  # fmt: skip
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    return dict(inputs)


def extended(inputs: dict, new: torch.Tensor) -> dict:
    """`inputs` with the text tokens `new` (1, n) appended: attention over all of it, token types 0 (text)."""
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], new], dim=1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            out[key] = torch.cat([inputs[key], torch.zeros_like(new)], dim=1)
    return out


def greedy(model, processor, image) -> str:
    """Greedy decoding by full forwards (no cache, no generate) with the checkpoint's repetition penalty, stopping
    at its end-of-sequence ids."""
    inputs = chat_inputs(processor, image)
    config = model.generation_config
    eos = config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    penalty = config.repetition_penalty or 1.0
    new = []
    with torch.no_grad():
        for _ in range(MAX_NEW_TOKENS):
            step = extended(inputs, torch.tensor([new], dtype=torch.long))
            logits = model(**step).logits[0, -1].clone()
            seen = step["input_ids"][0].unique()
            scores = logits[seen]
            logits[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)
            token = int(logits.argmax())
            new.append(token)
            if token in eos:
                break
    return processor.tokenizer.decode(new, skip_special_tokens=True).split(".")[0]


def choice_nll(model, processor, image, choice: str, question: str = QUESTION) -> float:
    inputs = chat_inputs(processor, image, question)
    answer = processor.tokenizer(choice, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(**extended(inputs, answer)).logits[0, -answer.shape[1] - 1 : -1]
    return float(-torch.log_softmax(logits.float(), -1).gather(-1, answer[0, :, None]).mean())


def test_the_checkpoint_is_laid_out_as_published(published):
    """The tokenizer puts the family's special tokens at their published ids; the processor expands the chat
    template's image placeholder into the model's image tokens."""
    name, directory = published
    processor = load_processor(directory)
    tokenizer = processor.tokenizer
    config = json.loads((directory / "config.json").read_text())
    image_id = IMAGE_TOKEN_IDS[name]
    assert image_id in (config.get("image_token_id"), config.get("image_token_index"))
    if FAMILIES[PUBLISHED_VLM[name][0]].token_type_key == "mm_token_type_ids":
        wanted = QWEN_CHAT_IDS.get(name, [151644, 151645, 151652, 151655])
        tokens = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"]
        assert tokenizer.convert_tokens_to_ids(tokens) == wanted and config["vision_start_token_id"] == wanted[2]
        assert len(tokenizer) <= config.get("text_config", config)["vocab_size"]  # every token has an embedding row
    if name in TOKEN_IDS:
        wanted = TOKEN_IDS[name]
        assert tokenizer.convert_tokens_to_ids(list(wanted)) == list(wanted.values())
        assert len(tokenizer) == config["text_config"]["vocab_size"]  # a token for each row of the published embedding
        for text, byte_ids in BYTE_IDS[name].items():
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == byte_ids
            assert tokenizer(text)["input_ids"] == [1] * ADDS_BOS[name] + byte_ids
    inputs = chat_inputs(processor, DOCS[0]["image"])
    ids = inputs["input_ids"][0]
    assert (ids == image_id).sum() > 0
    if name in TOKEN_IDS:  # one <s>, first, whether the template or the tokenizer writes it
        assert ids[0] == 1 and (ids == 1).sum() == 1
    if name in IMAGE_LAYOUTS:
        start = int((ids == image_id).nonzero()[0])
        layout = IMAGE_LAYOUTS[name]
        assert ids[start : start + len(layout)].tolist() == layout
        assert (ids == image_id).sum() == layout.count(image_id)  # no other image tokens
    key = FAMILIES[PUBLISHED_VLM[name][0]].token_type_key
    if key:
        assert inputs[key][0].tolist() == (ids == image_id).long().tolist()


def test_llava_manager_scores_a_published_layout_like_the_model(published):
    name, directory = published
    family = PUBLISHED_VLM[name][0]
    lm = lmms_model(directory, batch_size=2)
    assert lm.family is FAMILIES[family] and isinstance(lm.model, FAMILIES[family].model_class)
    assert lm.prompt_format == "chat_template" and lm.prompt(QUESTION, 1) == expected_prompt(name)

    model = llava_manager.from_pretrained(directory, dtype=torch.float32).eval()
    processor = load_processor(directory)
    doc_ids = (0, 1, 2)
    expected = [greedy(model, processor, DOCS[d]["image"]) for d in doc_ids]
    assert lm.generate_until(generation_requests(doc_ids)) == expected  # a batch of 2 (left padded), then 1
    assert any(expected)

    results = [r.text for r in lm.loglikelihood(choice_requests([1, 2]))]
    wanted = [choice_nll(model, processor, DOCS[d]["image"], c) for d in (1, 2) for c in CHOICES]
    assert [nll for nll, _ in results] == pytest.approx(wanted, rel=1e-4)
    assert all(math.isfinite(nll) and isinstance(g, bool) for nll, g in results)


def test_the_continuation_gets_token_types(published, monkeypatch):
    """The forward of a log-likelihood sees token types as long as its input_ids, 0 over the continuation."""
    name, directory = published
    key = FAMILIES[PUBLISHED_VLM[name][0]].token_type_key
    if key is None:
        pytest.skip("the family's forward takes no token types")
    lm = lmms_model(directory)
    seen = []
    forward = type(lm.model).forward

    def recording(self, *args, **kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs[key].clone()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(lm.model), "forward", recording)
    lm.loglikelihood(choice_requests([0])[:1])
    [(ids, types)] = seen
    image_id = IMAGE_TOKEN_IDS[name]
    assert types.shape == ids.shape and types[0].tolist() == (ids[0] == image_id).long().tolist()


# ---- lmms-eval end to end ------------------------------------------------------------------------------------------
NUM_DOCS = 3


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    from eval.shapes_tasks.make_data import write

    folder = tmp_path_factory.mktemp("tasks") / "tasks"
    shutil.copytree(ROOT / "eval" / "shapes_tasks", folder, ignore=shutil.ignore_patterns("*.parquet", "__pycache__"))
    write(folder, NUM_DOCS)
    return folder


@pytest.mark.slow
def test_lmms_eval_scores_the_published_layout(published, tasks, tmp_path):
    """`python -m llava_manager.evaluation --model llava_manager` (lmms-eval's command line, failing when lmms-eval
    fails) on the shapes tasks: a results file with both metrics, and the multiple-choice losses of the samples log
    equal to the independent computation."""
    import datasets

    name, directory = published
    out = tmp_path / "out"
    arguments = [
        *("--model", "llava_manager", "--model_args", f"pretrained={directory},dtype=float32,response_cache=none"),
        *("--device", "cpu", "--tasks", "shapes_gen,shapes_mc", "--include_path", str(tasks), "--batch_size", "2"),
        *("--output_path", str(out), "--log_samples", "--verbosity", "DEBUG"),
    ]
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "llava_manager.evaluation", *arguments],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    [results_file] = list(out.rglob("*_results.json"))
    results = json.loads(results_file.read_text())["results"]
    assert 0.0 <= results["shapes_gen"]["exact_match,none"] <= 1.0 and 0.0 <= results["shapes_mc"]["acc,none"] <= 1.0
    samples = [json.loads(line) for line in next(out.rglob("*_samples_shapes_mc.jsonl")).open()]
    assert len(samples) == NUM_DOCS
    losses = {s["doc_id"]: [float(choice[0]) for choice in s["filtered_resps"]] for s in samples}

    docs = datasets.load_dataset("parquet", data_files={"test": str(tasks / "shapes.parquet")})["test"]
    model = llava_manager.from_pretrained(directory, dtype=torch.float32).eval()
    processor = load_processor(directory)
    doc = docs[0]
    expected = [choice_nll(model, processor, doc["image"], " " + c, doc["question"]) for c in doc["choices"]]
    assert losses[0] == pytest.approx(expected, rel=1e-4)
