"""lmms-eval's `--model llava_manager` on every family: a tiny patched model of each family (support/family_models.py)
saved with a processor whose tokenizer has the family's chat template, loaded through the class lmms-eval resolves
for `llava_manager`, scored on fake lmms-eval documents with real PIL images of odd modes and sizes; answers and
losses are checked against an independent computation (the prompt written out here, a plain greedy loop without
cache, the model's own loss). Also: `llava_ov_manager` keeps working for OneVision and refuses other families, bad
model_args are refused before anything is loaded, and a second model on the same response store answers stored
requests (refusals included) without running the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("lmms_eval")

from support.family_models import FAMILIES as FAMILY_NAMES  # noqa: E402
from support.family_models import PINPOINTS, SIZE, VOCAB, family_config, family_model
from support.helpers import one_thread, randomize  # noqa: F401 (one_thread: an autouse fixture)
from support.published import CHAT_TEMPLATE as ONEVISION_CHAT_TEMPLATE  # noqa: E402

import llava_manager  # noqa: E402
from llava_manager import apply_manager, get_managers, has_manager  # noqa: E402
from llava_manager.families import FAMILIES  # noqa: E402
from llava_manager.processing.processors import build_processor, load_processor  # noqa: E402

QUESTION = "What colour is the shape ?"
CHOICES = (" red", " blue")
MAX_NEW_TOKENS = 5

# The llava-hf checkpoints' chat templates (chat_template.json of llava-1.5-7b-hf and llava-v1.6-mistral-7b-hf; the
# NeXT-Video one is llava-1.5's with a video line), and the prompt each renders for one image and QUESTION.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
NEXT_VIDEO_TEMPLATE = LLAVA_TEMPLATE.replace(
    "{# Render all text next #}",
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}{# Render all text next #}",
)
TEMPLATES = {
    "llava": LLAVA_TEMPLATE,
    "llava_next": NEXT_TEMPLATE,
    "llava_next_video": NEXT_VIDEO_TEMPLATE,
    "llava_onevision": ONEVISION_CHAT_TEMPLATE,
}
# What each family is prompted with by default: the chat template, OneVision its training format (qwen_1_5).
PROMPTS = {
    "llava": f"USER: <image>\n{QUESTION} ASSISTANT:",
    "llava_next": f"[INST] <image>\n{QUESTION} [/INST]",
    "llava_next_video": f"USER: <image>\n{QUESTION} ASSISTANT:",
    "llava_onevision": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ),
}
DEFAULT_FORMATS = {
    "llava": "chat_template",
    "llava_next": "chat_template",
    "llava_next_video": "chat_template",
    "llava_onevision": "qwen_1_5",
}


def tokenizer():
    """A word-level tokenizer of exactly VOCAB tokens whose `<video>` / `<image>` ids are the tiny models' (VOCAB - 2,
    VOCAB - 1), with the words of every family's prompt."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<s>", "</s>"]
    words = (
        "system user assistant You are a helpful . USER: ASSISTANT: [INST] [/INST] What colour is the shape ? "
        "red blue green yellow circle square"
    ).split()
    vocab = specials + ["\n"] + words
    vocab += [f"w{i}" for i in range(VOCAB - 2 - len(vocab))] + ["<video>", "<image>"]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"[\n.,?!]"), behavior="isolated"),
        ]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    assert tok.convert_tokens_to_ids(["<video>", "<image>"]) == [VOCAB - 2, VOCAB - 1] and len(tok) == VOCAB
    return tok


def processor_of(family: str, config):
    """The family's processor laid out as the model is: 28 px crops of 7 px patches; CLIP families count the CLS
    token that the "default" strategy drops, OneVision (SigLIP, "full") 16 tokens per crop."""
    adapter = FAMILIES[family]
    crop = {"height": SIZE, "width": SIZE}
    if family == "llava_onevision":
        image_processor = adapter.image_processor_class(size=crop, image_grid_pinpoints=config.image_grid_pinpoints)
        kwargs = dict(num_image_tokens=(SIZE // 7) ** 2, vision_aspect_ratio=config.vision_aspect_ratio)
    else:
        grids = {} if family == "llava" else {"image_grid_pinpoints": PINPOINTS}
        image_processor = adapter.image_processor_class(size={"shortest_edge": SIZE}, crop_size=crop, **grids)
        kwargs = dict(patch_size=7, num_additional_image_tokens=1)
    return build_processor(
        image_processor,
        tokenizer(),
        family=family,
        chat_template=TEMPLATES[family],
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        **kwargs,
    )


def noise(mode: str, width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":  # a transparent band (alpha 0 or 255: composited on white, exactly)
        alpha = np.full((height, width), 255, np.uint8)
        alpha[: height // 3] = 0
        image.putalpha(Image.fromarray(alpha, "L"))
        return image
    return image.convert(mode)


# doc_id -> image: odd modes, sizes and aspect ratios (width x height)
DOCS = [
    {"image": noise("RGBA", 80, 40, 0)},
    {"image": noise("L", 57, 111, 1)},
    {"image": noise("P", 300, 5, 2)},
    {"image": noise("1", 13, 13, 3)},
]


def as_rgb(image: Image.Image) -> Image.Image:
    """Written here: transparency composited on white, every other mode through PIL's own RGB conversion."""
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def saved(request, tmp_path_factory):
    """(family, directory): a tiny model of the family with non-zero managers and its processor, saved."""
    family = request.param
    model = apply_manager(family_model(family), interval=2)
    randomize(model)
    processor = processor_of(family, model.config)
    directory = tmp_path_factory.mktemp(family)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return family, directory


def lmms_model(name: str, directory, **kwargs):
    """The model lmms-eval resolves for `name`; without a response store unless `response_cache` is given, so that
    every answer is the model's."""
    from lmms_eval.models import get_model

    kwargs.setdefault("response_cache", "none")
    lm = get_model(name)(pretrained=str(directory), device="cpu", dtype="float32", **kwargs)
    lm.task_dict = {"docs": {"test": DOCS}}
    return lm


def generation_requests(doc_ids, visual=lambda doc: [doc["image"]]):
    from lmms_eval.api.instance import Instance

    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "until": ["."]}
    return [
        Instance(
            "generate_until",
            (QUESTION, kwargs, visual, d, "docs", "test"),
            idx=0,
            metadata={"task": "docs", "doc_id": d, "repeats": 1},
        )
        for d in doc_ids
    ]


def choice_requests(doc_ids, visual=lambda doc: [doc["image"]]):
    from lmms_eval.api.instance import Instance

    return [
        Instance(
            "loglikelihood",
            (QUESTION, choice, visual, d, "docs", "test"),
            idx=k,
            metadata={"task": "docs", "doc_id": d, "repeats": 1},
        )
        for d in doc_ids
        for k, choice in enumerate(CHOICES)
    ]


def image_inputs(family: str, processor, prompt: str, image: Image.Image) -> dict:
    """The processor's inputs for one prompt and image, with the layout each family's forward takes checked."""
    inputs = processor(text=[prompt], images=[as_rgb(image)], return_tensors="pt")
    pixels = inputs["pixel_values"]
    if family == "llava":  # one crop per image, no sizes
        assert pixels.shape == (1, 3, SIZE, SIZE) and set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
    else:  # (images, crops, 3, H, W) and each image's size
        assert pixels.ndim == 5 and inputs["image_sizes"].tolist() == [[image.height, image.width]]
        assert ("batch_num_images" in inputs) == (family == "llava_onevision")  # only OneVision's forward takes it
    return dict(inputs)


def greedy(model, processor, family: str, image: Image.Image, until: str = ".") -> str:
    """Greedy decoding by full forwards (no cache, no generate), stopping at the model's end-of-sequence ids."""
    inputs = image_inputs(family, processor, PROMPTS[family], image)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    ids = inputs.pop("input_ids")
    new = []
    with torch.no_grad():
        for _ in range(MAX_NEW_TOKENS):
            step = torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1)
            logits = model(input_ids=step, **{**inputs, "attention_mask": torch.ones_like(step)}).logits
            token = int(logits[0, -1].argmax())
            new.append(token)
            if token in eos:
                break
    return processor.tokenizer.decode(new, skip_special_tokens=True).split(until)[0]


def choice_loss(model, processor, family: str, image: Image.Image, choice: str) -> float:
    """The mean negative log-likelihood of `choice` after the prompt: the model's own loss on its tokens."""
    inputs = image_inputs(family, processor, PROMPTS[family], image)
    answer = processor.tokenizer(choice, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([inputs.pop("input_ids"), answer], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -answer.shape[1] :] = answer
    inputs["attention_mask"] = torch.ones_like(ids)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels, **inputs).loss)


def test_llava_manager_detects_the_family_and_scores_like_the_model(saved):
    family, directory = saved
    lm = lmms_model("llava_manager", directory, batch_size=2)
    adapter = FAMILIES[family]
    assert type(lm).__name__ == "LlavaManager" and lm.family is adapter
    assert isinstance(lm.model, adapter.model_class) and has_manager(lm.model)
    assert lm.prompt_format == DEFAULT_FORMATS[family] and lm.prompt(QUESTION, 1) == PROMPTS[family]

    # An independent expectation from the checkpoint, loaded again
    model = llava_manager.from_pretrained(directory, dtype=torch.float32).eval()
    processor = load_processor(directory)
    assert [m.weight.abs().sum() > 0 for m in get_managers(model)] == [True] * len(get_managers(model))
    doc_ids = (0, 1, 2)
    expected = [greedy(model, processor, family, DOCS[d]["image"]) for d in doc_ids]
    assert lm.generate_until(generation_requests(doc_ids)) == expected  # a batch of 2 (left padded), then 1
    assert any(expected)

    losses = [r.text for r in lm.loglikelihood(choice_requests([1, 3]))]
    wanted = [choice_loss(model, processor, family, DOCS[d]["image"], c) for d in (1, 3) for c in CHOICES]
    assert [nll for nll, _ in losses] == pytest.approx(wanted, rel=1e-4)
    assert all(math.isfinite(nll) and isinstance(greedy_, bool) for nll, greedy_ in losses)

    # The managers are what makes these losses: without them the model scores otherwise
    llava_manager.remove_manager(model)
    plain = [choice_loss(model, processor, family, DOCS[3]["image"], c) for c in CHOICES]
    assert [nll for nll, _ in losses[2:]] != pytest.approx(plain, rel=1e-3)


@pytest.mark.parametrize("saved", ["llava_onevision"], indirect=True)
def test_llava_ov_manager_scores_onevision_as_before(saved):
    _, directory = saved
    from llava_manager.evaluation.lmms_eval_model import LlavaOvManager

    ov = lmms_model("llava_ov_manager", directory)
    assert (
        type(ov) is LlavaOvManager
        and ov.prompt_format == "qwen_1_5"
        and ov.prompt(QUESTION, 1) == PROMPTS["llava_onevision"]
    )
    neutral = lmms_model("llava_manager", directory)
    requests = choice_requests([3])
    assert [r.text for r in ov.loglikelihood(requests)] == [r.text for r in neutral.loglikelihood(requests)]
    assert ov.generate_until(generation_requests([3])) == neutral.generate_until(generation_requests([3]))


@pytest.fixture
def unloadable(monkeypatch):
    """Nothing but the config may be read: loading the model or the processor fails the test."""
    from llava_manager.evaluation import lmms_eval_model

    def loaded(*args, **kwargs):
        raise AssertionError("loaded before the model_args were checked")

    monkeypatch.setattr(lmms_eval_model, "from_pretrained", loaded)
    monkeypatch.setattr(lmms_eval_model, "load_processor", loaded)
    return lmms_eval_model


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if f != "llava_onevision"])
def test_llava_ov_manager_refuses_other_families_before_loading(family, unloadable, tmp_path):
    family_config(family).save_pretrained(tmp_path)
    title = FAMILIES[family].title
    with pytest.raises(
        ValueError,
        match=rf"llava_ov_manager takes LLaVA-OneVision checkpoints; .* is {title} "
        rf"\(model_type '{family}'\): use --model llava_manager",
    ):
        unloadable.LlavaOvManager(pretrained=str(tmp_path), device="cpu")


def test_model_args_are_checked_before_loading(unloadable, tmp_path):
    family_config("llava").save_pretrained(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"llava_manager: prompt_format 'chat': use one of \('qwen_1_5', "
        r"'chat_template'\)",
    ):
        unloadable.LlavaManager(pretrained=str(tmp_path), prompt_format="chat", device="cpu")
    with pytest.raises(ValueError, match=r"llava_manager: unknown model_args \['colour'\]"):
        unloadable.LlavaManager(pretrained=str(tmp_path), colour="red")
    (tmp_path / "store").write_text("")
    with pytest.raises(ValueError, match=r"response_cache: .*store is a file, not a folder"):
        unloadable.LlavaManager(pretrained=str(tmp_path), response_cache=str(tmp_path / "store"), device="cpu")
    with pytest.raises(FileNotFoundError, match=rf"llava_manager: pretrained={tmp_path}/missing does not exist"):
        unloadable.LlavaManager(pretrained=str(tmp_path / "missing"), device="cpu")
    with pytest.raises(FileNotFoundError, match=rf"llava_manager: manager_path={tmp_path}/missing is not a folder"):
        unloadable.LlavaManager(pretrained=str(tmp_path), manager_path=str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ValueError, match="config model_type 'llama' is not a supported model family"):
        family_config("llava").text_config.save_pretrained(tmp_path)  # a text-only checkpoint
        unloadable.LlavaManager(pretrained=str(tmp_path), device="cpu")


@pytest.mark.parametrize("saved", ["llava_next"], indirect=True)
def test_the_training_format_can_be_asked_for_on_any_family(saved):
    """`prompt_format=qwen_1_5` is taken as asked on a non-OneVision checkpoint (the user's choice)."""
    _, directory = saved
    lm = lmms_model("llava_manager", directory, prompt_format="qwen_1_5")
    assert lm.prompt(QUESTION, 1) == PROMPTS["llava_onevision"]


def test_both_names_resolve_through_the_entry_points():
    from lmms_eval.models import get_model, list_available_models

    from llava_manager.evaluation.lmms_eval_model import LlavaManager, LlavaOvManager

    assert {"llava_manager", "llava_ov_manager"} <= set(list_available_models())
    assert get_model("llava_manager") is LlavaManager and get_model("llava_ov_manager") is LlavaOvManager


@pytest.mark.parametrize("saved", ["llava_onevision"], indirect=True)
def test_stored_answers_come_back_without_the_model(saved, tmp_path, monkeypatch):
    """A first model answers and stores; a second one on the same store and checkpoint answers the same, refusals
    ("" and +inf) included, and runs the model only on what is not stored; other settings do not share answers."""
    from llava_manager.evaluation.lmms_eval_model import LlavaManager

    _, directory = saved
    store = tmp_path / "responses"
    missing = lambda doc: [str(tmp_path / "no-such-image.png")]  # noqa: E731  (refused: "missing image")
    requests = lambda: (  # noqa: E731
        generation_requests([0, 1, 2, 0]) + generation_requests([3], missing),  # doc 0 twice: lmms-eval's repeats
        choice_requests([1]) + choice_requests([2], missing),
    )
    first = lmms_model("llava_manager", directory, batch_size=2, response_cache=str(store))
    generation, choices = requests()
    answers = first.generate_until(generation)
    losses = [r.text for r in first.loglikelihood(choices)]
    assert answers[-1] == "" and answers[0] == answers[3] and any(answers)
    assert [nll for nll, _ in losses[2:]] == [math.inf, math.inf] and all(math.isfinite(n) for n, _ in losses[:2])
    [file] = store.iterdir()
    assert len(file.read_text().splitlines()) == len(generation) + len(choices)

    calls = []
    monkeypatch.setattr(LlavaManager, "_generate", lambda self, contexts, *a: calls.append(len(contexts)) or [])
    monkeypatch.setattr(  # one call per batch of questions; an answer per request
        LlavaManager,
        "_score_questions",
        lambda self, args, questions, images: calls.append("nll") or [[(0.0, True)] * len(q) for q in questions],
    )
    second = lmms_model("llava_manager", directory, batch_size=2, response_cache=str(store))
    generation, choices = requests()
    assert second.generate_until(generation) == answers
    assert [r.text for r in second.loglikelihood(choices)] == losses  # the very same floats
    assert calls == []
    second.generate_until(generation_requests([2, 0, 0, 0]))  # doc 0's third repeat is not stored
    assert calls == [1]
    other = lmms_model("llava_manager", directory, response_cache=str(store), prompt_format="chat_template")
    other.loglikelihood(choice_requests([1]))
    assert calls == [1, "nll"]  # the two choices of one question: one prompt


@pytest.mark.parametrize("saved", ["llava_onevision"], indirect=True)
@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_run_time_failure_of_every_document_stops_instead_of_refusing_them_all(saved, batch_size, monkeypatch):
    """A failure at run time refuses its document while others score (one bad image must not stop 20 data sets);
    when the first documents all fail, before any has scored (a tokenizer that cannot pad, say), the evaluation
    stops with an error instead of scoring nothing but refusals."""
    from llava_manager.evaluation import lmms_eval_model
    from llava_manager.evaluation.lmms_eval_model import LlavaManager

    _, directory = saved
    generate, score = LlavaManager._generate, LlavaManager._score_questions
    bad = {"size": None}  # calls with an image of this size fail; None: every call

    def failing(real):
        def call(self, *args):
            images = args[1] if real is generate else args[2]  # (contexts, images, kwargs) / (args, questions, images)
            if bad["size"] is None or any(image.size == bad["size"] for doc in images for image in doc):
                raise ValueError("Asking to pad but the tokenizer does not have a padding token.")
            return real(self, *args)

        return call

    monkeypatch.setattr(LlavaManager, "_generate", failing(generate))
    monkeypatch.setattr(LlavaManager, "_score_questions", failing(score))
    monkeypatch.setattr(lmms_eval_model, "RUN_TIME_FAILURES", 3)
    with pytest.raises(RuntimeError, match=r"first 3 documents with images all failed at run time.*padding token"):
        lmms_model("llava_manager", directory, batch_size=batch_size).generate_until(generation_requests([0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match=r"first 3 documents with images all failed at run time.*padding token"):
        lmms_model("llava_manager", directory, batch_size=batch_size).loglikelihood(choice_requests([0, 1, 2, 3]))

    bad["size"] = DOCS[0]["image"].size  # the first document's image fails; the others score
    lm = lmms_model("llava_manager", directory, batch_size=batch_size)
    answers = lm.generate_until(generation_requests([0, 1, 2, 3]))
    assert answers[0] == "" and all(answers[1:])
    losses = [r.text[0] for r in lm.loglikelihood(choice_requests([0, 1, 2]))]
    assert losses[:2] == [math.inf, math.inf] and all(math.isfinite(n) for n in losses[2:])
