"""`--model llava_manager`'s log-likelihoods with shared prompts: each question (the requests that share a context and
a document, e.g. a multiple-choice question's choices) runs its prompt and images once, the continuations on a copy
of that forward's cache. Checked on every family the loglikelihood tests cover (the four LLaVA families of
test_lmms_eval_families.py and the published layouts of test_lmms_eval_published_vlm.py, all patched with non-zero
managers) against an independent computation, one full forward over prompt + continuation per request and a
log-softmax, at --batch_size 1 and 8: groups of 4 choices of different token lengths, questions whose contexts
differ on one document, a one-token continuation; and the vision encoder runs once per question."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from support.helpers import one_thread, randomize  # noqa: F401 (one_thread: an autouse fixture)
from support.published_vlm import PUBLISHED_VLM, write_published_vlm

pytest.importorskip("lmms_eval")

from support.family_models import FAMILIES as LLAVA_FAMILIES  # noqa: E402
from support.family_models import family_model  # noqa: E402
from test_lmms_eval_families import processor_of  # noqa: E402

import llava_manager  # noqa: E402
from llava_manager import apply_manager  # noqa: E402
from llava_manager.families import FAMILIES, family_of  # noqa: E402
from llava_manager.processing.processors import load_processor  # noqa: E402

QUESTIONS = ("What colour is the shape ?", "What is the shape ?")
# Four choices of 1, 2, 3 and 4 words (more tokens each in every tokenizer here), and a one-token continuation.
CHOICES = (" red", " blue square", " green circle red", " yellow square blue circle")
CASES = [*LLAVA_FAMILIES, *PUBLISHED_VLM]


def noise(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


DOCS = [{"image": noise(w, h, seed)} for seed, (w, h) in enumerate([(80, 40), (57, 111), (40, 40), (96, 64), (30, 70)])]


@pytest.fixture(scope="module", params=CASES)
def checkpoint(request, tmp_path_factory):
    """A saved tiny checkpoint of the case with random non-zero managers: a LLaVA family's model with its processor,
    or a published layout (its processor files kept, the weights and config re-saved with the managers)."""
    name = request.param
    directory = tmp_path_factory.mktemp("speed") / name.replace(".", "_")
    if name in PUBLISHED_VLM:
        write_published_vlm(directory, name)
        model = llava_manager.from_pretrained(directory, dtype=torch.float32)
        model = apply_manager(model, interval=1)
    else:
        model = apply_manager(family_model(name), interval=2)
        processor_of(name, model.config).save_pretrained(directory)
    randomize(model)
    model.save_pretrained(directory)
    return name, directory


def visual(doc: dict) -> list:
    """The task's doc_to_visual: one function for every request, as lmms-eval's task gives it."""
    return [doc["image"]]


def lmms_model(directory, batch_size: int):
    from lmms_eval.models import get_model

    lm = get_model("llava_manager")(
        pretrained=str(directory), device="cpu", dtype="float32", response_cache="none", batch_size=batch_size
    )
    lm.task_dict = {"docs": {"test": DOCS}}
    return lm


def request(context: str, continuation: str, doc_id: int, idx: int):
    from lmms_eval.api.instance import Instance

    return Instance(
        "loglikelihood",
        (context, continuation, visual, doc_id, "docs", "test"),
        idx=idx,
        metadata={"task": "docs", "doc_id": doc_id, "repeats": 1},
    )


def requests() -> list:
    """7 questions of 4 choices (every document with the first question, documents 1 and 3 also with the second),
    interleaved as lmms-eval may order them, and a one-token continuation of a question of its own (document 2
    with its own context)."""
    questions = [(QUESTIONS[0], d) for d in range(len(DOCS))] + [(QUESTIONS[1], 1), (QUESTIONS[1], 3)]
    out = [request(q, choice, d, k) for k, choice in enumerate(CHOICES) for q, d in questions]
    out.insert(5, request("Is it red ?", " yes", 2, 0))
    return out


def reference(model, processor, family: str, context_prompt: str, image, continuation: str) -> tuple[float, bool]:
    """One full forward over the prompt (tokenised with the image by the processor) and the continuation (tokenised
    on its own), the token types extended with 0 over it; the mean negative log-likelihood of its tokens and
    whether each is the argmax."""
    tokenizer = processor.tokenizer
    bos = tokenizer.bos_token
    kwargs = {"add_special_tokens": False} if bos and context_prompt.startswith(bos) else {}
    inputs = dict(processor(text=[context_prompt], images=[image], return_tensors="pt", **kwargs))
    answer = tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], answer], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    key = FAMILIES[family].token_type_key
    if key in inputs:
        inputs[key] = torch.cat([inputs[key], torch.zeros_like(answer)], dim=1)
    with torch.no_grad():
        logits = model(**inputs).logits[0, n - 1 : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, answer[0, :, None])[:, 0]
    return float(-logprobs.mean()), bool((logits.argmax(-1) == answer[0]).all())


@pytest.fixture(scope="module")
def expected(checkpoint):
    """The reference answer of every request of `requests()`, in order."""
    name, directory = checkpoint
    family = PUBLISHED_VLM[name][0] if name in PUBLISHED_VLM else name
    model = llava_manager.from_pretrained(directory, dtype=torch.float32).eval()
    processor = load_processor(directory)
    lm = lmms_model(directory, 1)  # for its prompt (the format under test elsewhere)
    answers = []
    for r in requests():
        context, continuation, _, doc_id, _, _ = r.args
        answers.append(reference(model, processor, family, lm.prompt(context, 1), DOCS[doc_id]["image"], continuation))
    return answers


def count_encoder_calls(lm) -> list:
    """A forward hook on the model's vision encoder; the list grows by one per call."""
    _, inner = family_of(lm.model)
    calls = []
    FAMILIES[lm.family.name].vision_tower(inner).register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("batch_size", [1, 8])
def test_shared_prompts_score_like_one_forward_per_request(checkpoint, expected, batch_size):
    _, directory = checkpoint
    lm = lmms_model(directory, batch_size)
    calls = count_encoder_calls(lm)
    forwards = []
    lm.model.register_forward_hook(lambda *_: forwards.append(1))
    batch = requests()
    results = [r.text for r in lm.loglikelihood(batch)]
    assert [nll for nll, _ in results] == pytest.approx([nll for nll, _ in expected], rel=1e-5, abs=1e-5)
    assert [greedy for _, greedy in results] == [greedy for _, greedy in expected]
    assert all(math.isfinite(nll) for nll, _ in results)
    assert len({r.args[1] for r in batch}) == len(CHOICES) + 1
    questions = len({(r.args[0], r.args[3]) for r in batch})
    assert questions == 8 and len(batch) == 29
    batches = math.ceil(questions / batch_size)
    assert len(calls) == batches  # every image encoded once: one encoder call per question at batch size 1
    assert batches < len(forwards) < len(batch)  # prompt forwards plus continuation forwards, fewer than requests


def test_one_question_runs_its_image_once_at_any_batch_size(checkpoint):
    """A 4-choice question alone: one encoder call, one prompt forward and one forward over the choices' tokens."""
    _, directory = checkpoint
    lm = lmms_model(directory, 8)
    calls = count_encoder_calls(lm)
    forwards = []
    lm.model.register_forward_hook(lambda *_: forwards.append(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm.loglikelihood([request(QUESTIONS[0], choice, 0, k) for k, choice in enumerate(CHOICES)])
    assert len(calls) == 1 and len(forwards) == 2
    # the cache goes in under the name the model takes (Gemma 3's prepare_inputs_for_generation takes it as **kwargs)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_the_evaluation_benchmark_runs_side_by_side(capsys):
    """benchmarks/evaluation.py at its smallest settings: both models on both tasks at batch sizes 1 and 8, a ratio
    line for each, identical answers (it exits on different ones in float32)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "evaluation.py"
    spec = importlib.util.spec_from_file_location("evaluation_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    smallest = "--repetitions 1 --docs 2 --hidden 64 --layers 1 --vision-hidden 64 --vision-layers 1 --image-size 28"
    benchmark.main([*smallest.split(), "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    ratios = [line for line in out.splitlines() if "ratio ours / llava_hf" in line]
    assert len(ratios) == 4, out
    assert all("identical" in line for line in ratios), out
    for task in ("multiple choice", "generation"):
        for batch_size in (1, 8):
            assert any(line.startswith(f"{task:16s} batch {batch_size}: ratio") for line in ratios), out
