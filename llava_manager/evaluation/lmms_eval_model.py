"""lmms-eval models `llava_manager` (any supported family) and `llava_ov_manager` (LLaVA-OneVision only):
lmms-eval's own HF LLaVA model (`llava_hf`), loading through this package.

    lmms-eval --model llava_manager --model_args pretrained=DIR[,manager_path=MDIR][,dtype=bfloat16] --tasks ...

`pretrained` is a model saved by this package (patched `save_pretrained`: the managers come back), a plain
checkpoint of a supported family (scored as the baseline), or a plain one plus `manager_path` (a `save_manager`
directory). The family is read from the checkpoint's config (`model_type`): LLaVA-1.5 (`llava`, also with a
Pixtral tower), LLaVA-NeXT (`llava_next`), LLaVA-NeXT-Video (`llava_next_video`, scored on images), LLaVA-OneVision
(`llava_onevision`), or any other family of `llava_manager.families.FAMILIES` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
Qwen3.5, InternVL, Gemma 3, Mistral 3). Nothing below branches on a family's name: the processor, the chat template,
the token-type input (`Family.token_type_key`, computed for a whole sequence by `Family.token_inputs`) and the
model's forward and `generate` come from the checkpoint and its adapter.
`--model llava_ov_manager` is the same model restricted to LLaVA-OneVision checkpoints (its name before the other
families were supported); it refuses other checkpoints before loading them. What this class changes in `llava_hf`:
- loading: `llava_manager.from_pretrained` (+ `load_manager`), and a processor that needs no torchvision;
- prompts: `prompt_format=qwen_1_5`, the format LLaVA-OneVision was trained with and lmms-eval's own
  `llava_onevision` model uses (the default for OneVision), or `prompt_format=chat_template`, the checkpoint's chat
  template with typed content (the default for the other families, as lmms-eval's `llava_hf` prompts them;
  `chat_template=` a template or a .jinja file overrides it, and implies `prompt_format=chat_template`); see
  `llava_manager.processing.prompts`;
- `generate_until`: batches (`--batch_size N`), honours `until` stop strings and `max_new_tokens`;
- `loglikelihood` (for every family; lmms-eval's own wrappers of the non-LLaVA families implement none): the requests
  that share a context and a document (a multiple-choice question's choices) are one question, whose prompt and
  images run once: a forward over the prompts of `--batch_size` questions (left padded, the positions as `generate`
  lays them out, the token types of `Family.token_inputs`) gives the logits of every continuation's first token and
  a cache; the continuations' other tokens (each tokenised on its own) run as one decode-like step per batch of rows
  on a copy of that cache, its rows picked per continuation (`Cache.reorder_cache`, every layer type: attention,
  sliding window, Qwen3.5's linear attention), laid out by `prepare_inputs_for_generation` as `generate` lays out a
  decode step: no pixels (the managers act in the prompt's forward only), positions continuing the prompt's (M-RoPE
  included). The scores are those of one full forward over prompt + continuation per request (tested on every
  family at batch sizes 1 and 8, `tests/evaluation/test_lmms_eval_speed.py`); returns the mean negative
  log-likelihood (lmms-eval's multiple choice takes the argmin), wrapped so lmms-eval 0.7's result unwrapping keeps it;
- images: every document's images go through `llava_manager.processing.images.to_rgb` (EXIF orientation, any PIL
  mode to RGB)
  and then the family's processor, whose outputs go to the model as they are (LLaVA-1.5: one crop per image; NeXT:
  grid crops and `image_sizes`; OneVision: also `batch_num_images`; Qwen: flattened patches, `image_grid_thw` and
  `mm_token_type_ids`; Gemma 3: `token_type_ids`). A prompt whose chat template writes the BOS token (Gemma 3) is
  tokenised without special tokens, as `apply_chat_template` does.
  A document whose image the model cannot represent, or that fails on its image, is refused with a logged message
  naming the task, doc_id and reason, and the rest of the batch is scored: it gets "" in generation and a +inf
  negative log-likelihood (never preferred over a scored choice) in loglikelihood, for each of its requests. When the
  first documents all fail at run time, before any has scored, the third failure stops the evaluation with an error
  instead (a failure of every document is the model's or its setup's, not an image's).
Videos are not scored: a video visual is refused like any other visual that is not an image.

Response store (`response_cache=auto|none|FOLDER`, see `llava_manager.evaluation.responses`): every answer is
written to disk as soon as it is made (generation: after each batch; loglikelihood: every LOGLIKELIHOOD_GROUP
requests), keyed by the model (its files' names, sizes and modification times), the settings that change an answer
(dtype, device type, prompt format, chat template, ll_reduction, use_cache, attn_implementation, the torch and
transformers versions) and the request (kind, task, split, doc_id, context, generation kwargs or continuation). A
rerun of an evaluation that died answers the stored requests from disk and runs the model on the rest only: its
results are those of an uninterrupted run. `auto` (the default) is $LLAVA_MANAGER_RESPONSE_CACHE, else
~/.cache/llava_manager/lmms_eval_responses. Refusals are stored too, except those of a run-time failure (e.g. out of
memory), which run again.

Batch size: answers do not depend on `--batch_size` (tested through the command line at 1 and 8 on documents of
different prompt lengths and image sizes, `tests/evaluation/test_lmms_eval.py`): generation pads on the left with
an attention mask (transformers derives the position ids from it; a tokenizer without a pad token, e.g. Pixtral-12B's,
pads with its EOS token), each document's image tokens are laid out by the
processor for its own image, and loglikelihood pads its batches of prompts on the left in the same way (the
continuations on the right, where nothing before them attends to the padding). The batch size is not part of the
store's keys.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.simple.llava_hf import LlavaHf
from loguru import logger as eval_logger
from PIL import Image
from tqdm import tqdm
from transformers import AutoConfig

from ..core.patch import has_manager
from ..core.persistence import from_pretrained, load_manager
from ..families import FAMILIES, Family, family_of_config
from ..processing.images import ImageError, open_image, to_rgb, unsupported_reason
from ..processing.processors import load_processor
from ..processing.prompts import PROMPT_FORMATS, chat_prompt
from .responses import ResponseStore, fingerprint, request_key, store_folder

ARGS = (
    "pretrained",
    "manager_path",
    "revision",
    "device",
    "dtype",
    "batch_size",
    "device_map",
    "prompt_format",
    "chat_template",
    "use_cache",
    "attn_implementation",
    "max_frames_num",
    "ll_reduction",
    "max_batch_size",
    "response_cache",
)
# A document refused on a run-time failure is one image's problem only while others score: this many such refusals
# before any document has scored stop the evaluation instead (`LlavaManager._run_time_failure`).
RUN_TIME_FAILURES = 3
LOGLIKELIHOOD_GROUP = 16  # loglikelihood answers are written to the response store in groups of this many


def _package_version() -> str:
    from .. import __version__

    return __version__


def _questions(args: list[tuple], todo: list[int]) -> list[list[int]]:
    """The requests at `todo` grouped into questions, the requests that share a task, split, document, context and
    visuals (a multiple-choice question's choices), in order of first appearance; longest context first, as
    `generate_until` orders its batches, so that a batch's prompts are of similar lengths."""
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        context, _, doc_to_visual, doc_id, task, split = args[i]
        try:
            visual = hash(doc_to_visual) and doc_to_visual
        except TypeError:
            visual = id(doc_to_visual)
        groups.setdefault((task, split, repr(doc_id), context, visual), []).append(i)
    return sorted(groups.values(), key=lambda question: -len(args[question[0]][0]))


class LlavaManager(LlavaHf):
    """`--model llava_manager`: a checkpoint of any family in `llava_manager.families.FAMILIES`."""

    is_simple = True
    name = "llava_manager"  # lmms-eval's model name, in messages
    families: tuple[str, ...] | None = None  # the families this model takes (None: all)

    def __init__(
        self,
        pretrained: str,
        manager_path: str | None = None,
        revision: str = "main",
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        device_map: str | None = None,
        prompt_format: str | None = None,
        chat_template: str | None = None,
        use_cache: bool = True,
        attn_implementation: str | None = None,
        max_frames_num: int = 32,
        ll_reduction: str = "mean",
        response_cache: str | None = "auto",
        **unknown,
    ) -> None:
        # upstream: see llava_manager/upstream.py
        lmms.__init__(self)
        unknown.pop("max_batch_size", None)  # lmms-eval passes it along with batch_size
        if unknown:
            raise ValueError(f"{self.name}: unknown model_args {sorted(unknown)}; allowed: {', '.join(ARGS)}.")
        if ll_reduction not in ("mean", "sum"):
            raise ValueError(f"{self.name}: ll_reduction={ll_reduction!r}; use 'mean' (as llava_hf) or 'sum'.")
        if prompt_format is not None and prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"{self.name}: prompt_format {prompt_format!r}: use one of {PROMPT_FORMATS}.")
        self.check_paths(pretrained, manager_path)
        responses = store_folder(response_cache)
        # The family, the processor and the prompt format are checked before the model is loaded: a checkpoint of
        # another family, or a chat template that renders no image placeholder, fails here, not at the first document.
        self.family = self.check_family(pretrained, revision)
        self._image_processor = load_processor(pretrained, revision=revision)
        self._tokenizer = self._image_processor.tokenizer
        self._tokenizer.padding_side = "left"
        self._scored_documents = self._run_time_failures = 0  # so far; see _run_time_failure
        if self._tokenizer.pad_token is None:  # e.g. Pixtral-12B's: batches pad with EOS, under the attention mask
            self._tokenizer.pad_token = self._tokenizer.eos_token
        if chat_template and Path(chat_template).is_file():
            chat_template = Path(chat_template).read_text()
        # The family's own format by default (OneVision: qwen_1_5, as lmms-eval's `llava_onevision`; the others:
        # their chat template, as lmms-eval's `llava_hf`).
        self.prompt_format = prompt_format or ("chat_template" if chat_template else self.family.prompt_format)
        self.chat_template = chat_template
        self.prompt("Describe the image.", 1)

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._device = accelerator.device
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device_map = device_map or str(self._device)  # transformers 5 rejects llava_hf's device_map=""
        kwargs = {
            "revision": revision,
            "dtype": getattr(torch, dtype) if dtype != "auto" else "auto",
            "device_map": self.device_map,
        }
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = from_pretrained(pretrained, **kwargs)
        if manager_path:
            if has_manager(model):
                raise ValueError(
                    f"{self.name}: {pretrained} already has managers; drop manager_path or load a plain model."
                )
            load_manager(model, manager_path)
        self._model = model.eval()
        self.pretrained, self.manager_path = pretrained, manager_path
        self._config = self._model.config
        self.batch_size_per_gpu = int(batch_size)
        self.use_cache = use_cache
        self.max_frames_num = max_frames_num
        self.ll_reduction = ll_reduction
        self.accelerator = accelerator
        if accelerator.num_processes > 1:
            self._model = accelerator.prepare_model(self._model, evaluation_mode=True)
        self._rank, self._world_size = accelerator.local_process_index, accelerator.num_processes
        self.responses = None
        if responses is not None:
            settings = {
                "dtype": str(model.dtype),
                "device": self._device.type,
                "prompt_format": self.prompt_format,
                "chat_template": self.chat_template,
                "ll_reduction": ll_reduction,
                "use_cache": use_cache,
                "attn_implementation": attn_implementation,
                # numerics may change with them; our version too (prompts, image handling)
                "versions": [torch.__version__, transformers.__version__, _package_version()],
            }
            name = fingerprint(pretrained, manager_path, revision, settings)
            self.responses = ResponseStore(responses, name, accelerator.process_index)
            eval_logger.info(
                f"{self.name}: response store {self.responses.path} ({len(self.responses.answers)} answers stored for "
                "this model and these settings; response_cache=none turns it off)"
            )

    def check_paths(self, pretrained: str, manager_path: str | None) -> None:
        """A `pretrained` that can only be a local path (a Hub id is `name` or `owner/name`) and a `manager_path`
        must exist."""
        local = str(pretrained).startswith(("/", ".", "~")) or str(pretrained).count("/") > 1
        if local and not Path(pretrained).expanduser().exists():
            raise FileNotFoundError(
                f"{self.name}: pretrained={pretrained} does not exist; give a model folder (save_pretrained) or a "
                "Hugging Face Hub id (owner/name)."
            )
        if manager_path and not Path(manager_path).expanduser().is_dir():
            raise FileNotFoundError(
                f"{self.name}: manager_path={manager_path} is not a folder; give a folder written by save_manager."
            )

    def check_family(self, pretrained: str, revision: str) -> Family:
        """The family of the checkpoint at `pretrained`, from its config; one this model does not take is refused."""
        adapter = family_of_config(AutoConfig.from_pretrained(pretrained, revision=revision))
        if self.families is not None and adapter.name not in self.families:
            takes = ", ".join(FAMILIES[name].title for name in self.families)
            raise ValueError(
                f"{self.name} takes {takes} checkpoints; {pretrained} is {adapter.title} "
                f"(model_type {adapter.name!r}): use --model llava_manager."
            )
        return adapter

    def prompt(self, context: str, num_images: int) -> str:
        return chat_prompt(self._image_processor, context, num_images, self.prompt_format, self.chat_template)

    def visuals(self, doc_to_visual, doc_id, task, split) -> list:
        """The document's images, upright and in RGB (`images.to_rgb`; a str / Path visual is opened as an image
        file). Raises `ImageError` for a visual that is not an image, cannot be decoded, or that the model cannot
        represent (`images.unsupported_reason`)."""
        if not doc_to_visual:
            return []
        try:
            visuals = self.flatten([doc_to_visual(self.task_dict[task][split][doc_id])])
        except (OSError, Image.DecompressionBombError) as error:  # the task's own image decoding (PIL) failed
            raise ImageError("corrupt image", f"the task's doc_to_visual failed: {error!r}") from error
        visuals = [v for v in visuals if v is not None]
        images = []
        for visual in visuals:
            if isinstance(visual, (str, Path)):
                image = open_image(visual)
            elif isinstance(visual, Image.Image):
                try:
                    image = to_rgb(visual)
                except Exception as error:  # e.g. a lazily decoded, truncated file
                    detail = f"{visual.width}x{visual.height} {visual.mode} image: {error!r}"
                    raise ImageError("corrupt image", detail) from error
            else:
                raise ImageError(
                    "unsupported image",
                    f"a visual of type {type(visual).__name__} is not an image; "
                    f"{self.name} reads PIL images and image files",
                )
            reason = unsupported_reason(self._image_processor, image, self._config, multi_image=len(visuals) > 1)
            if reason:
                raise ImageError("unsupported image", reason)
            images.append(image)
        return images

    def encode(self, texts: list[str], images: list[list]) -> dict:
        """Model inputs for a batch of prompts and their documents' images (already through `visuals`), from the
        checkpoint's processor: `input_ids`, `attention_mask`, the pixels and whatever else the family's forward
        takes (`image_sizes`, `image_grid_thw`, the token types `mm_token_type_ids` / `token_type_ids`). A prompt
        whose chat template already wrote the tokenizer's BOS token (Gemma 3's `{{ bos_token }}`) is tokenised
        without special tokens, as `apply_chat_template` tokenises it, so that BOS is not doubled."""
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        bos = self._tokenizer.bos_token
        if bos and all(text.startswith(bos) for text in texts):
            kwargs["add_special_tokens"] = False
        if any(images):
            kwargs["images"] = [group for group in images if group]
        inputs = self._image_processor(**kwargs)
        return {
            k: v.to(self._device, self.model.dtype) if v.is_floating_point() else v.to(self._device)
            for k, v in inputs.items()
        }

    def loglikelihood(self, requests: list[Instance]) -> list:
        """(negative log-likelihood, greedy) per request; a refused document (see the module doc) gets (+inf, False).
        Requests in the response store are answered from it; the others are grouped into questions (the requests
        that share a context and a document: a multiple-choice question's choices), `batch_size` questions a batch,
        each question's prompt and images run once (`_score_questions`), and stored in groups as they are scored."""
        args = []
        for context, continuation, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            if not isinstance(continuation, str):
                continuation = continuation(self.task_dict[task][split][doc_id])
            args.append((context, continuation, doc_to_visual, doc_id, task, split))
        keys = self._keys("loglikelihood", args)
        results = self._answers_from_store("loglikelihood", keys, args)
        todo = [i for i, result in enumerate(results) if result is None]
        questions = _questions(args, todo)
        refused, scored = 0, []
        progress = tqdm(total=len(todo), disable=self.rank != 0, desc="loglikelihood")
        try:
            for start in range(0, len(questions), self.batch_size):
                batch = questions[start : start + self.batch_size]
                answers, transient, refusals = self._score_batch(args, batch)
                refused += refusals
                for i, answer in answers.items():
                    results[i] = answer
                scored += [i for question in batch for i in question if i not in transient]
                if len(scored) >= LOGLIKELIHOOD_GROUP:
                    self._store("loglikelihood", keys, args, scored, results)
                    scored = []
                progress.update(sum(len(question) for question in batch))
        finally:
            progress.close()
            self._store("loglikelihood", keys, args, scored, results)
        self._log_refusal_count("loglikelihood", refused, len(todo))
        # lmms-eval 0.7 turns any result that is not text or GenerationResult into a string; this keeps the pair.
        return [GenerationResult(text=result) for result in results]

    def _score_batch(self, args: list[tuple], batch: list[list[int]]) -> tuple[dict, set, int]:
        """The answers of a batch of questions (lists of request indices): {request index: (nll, greedy)}, the
        requests refused on a run-time failure (not to be stored: it may not happen again) and how many requests were
        refused. A question whose images cannot be used is refused (+inf) and the rest of the batch scored; when the
        batch fails, each question runs on its own, and one that still fails on its images is refused."""
        answers, transient, refused = {}, set(), 0
        usable = {}  # position in the batch -> the question's images
        for k, question in enumerate(batch):
            _, _, doc_to_visual, doc_id, task, split = args[question[0]]
            try:
                usable[k] = self.visuals(doc_to_visual, doc_id, task, split)
            except ImageError as error:
                refused += self._refuse(args, question, error, answers)
        failures = []
        try:
            scores = self._score_questions(args, [batch[k] for k in usable], list(usable.values()))
        except Exception:  # a run-time failure the checks did not foresee: each question on its own
            scores = []
            for k in list(usable):
                try:
                    scores += self._score_questions(args, [batch[k]], [usable[k]])
                except Exception as error:
                    if not usable[k]:
                        raise  # a document without images: not an image problem
                    failures.append(error)
                    refused += self._refuse(args, batch[k], error, answers)
                    transient.update(batch[k])
                    del usable[k]
        self._scored_documents += len(usable)
        for error in failures:
            self._run_time_failure(error)
        for k, question_scores in zip(usable, scores):
            answers.update(zip(batch[k], question_scores))
        return answers, transient, refused

    def _refuse(self, args: list[tuple], question: list[int], error: Exception, answers: dict) -> int:
        """Refuses every request of a question (+inf, logged per request); returns how many."""
        for i in question:
            _, _, _, doc_id, task, split = args[i]
            self._log_refusal(task, split, doc_id, error, "it gets a +inf negative log-likelihood")
            answers[i] = (float("inf"), False)
        return len(question)

    def _score_questions(self, args: list[tuple], questions: list[list[int]], images: list[list]) -> list[list]:
        """Per question, the (nll, greedy) of each of its requests' continuations. One forward over the questions'
        prompts with their images (left padded, positions as `generate` lays them out), whose last logits score
        every continuation's first token; then the continuations' other tokens in batches of rows
        (`_continue_rows`) on a copy of that forward's cache: no image or prompt is run twice."""
        if not questions:
            return []
        contexts = [args[question[0]][0] for question in questions]
        inputs = self.encode([self.prompt(c, len(i)) for c, i in zip(contexts, images)], images)
        key = self.family.token_type_key
        if key in inputs:  # the token types as the per-request forward computes them (`Family.token_inputs`)
            inputs.update(self.family.token_inputs(self._config, inputs["input_ids"]))
        positions = self.model._prepare_position_ids_for_generation(inputs["input_ids"], dict(inputs))
        with torch.inference_mode():
            output = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(output.logits[:, -1].float(), dim=-1)
        targets = [[self._continuation_ids(args[i][1]) for i in question] for question in questions]
        rows = [(q, k) for q, question in enumerate(targets) for k, target in enumerate(question) if len(target) > 1]
        later = {}  # (question, request) -> log-softmax over the continuation's tokens after the first
        width = max(self.batch_size, max(len(question) for question in questions))
        for start in range(0, len(rows), width):
            chunk = rows[start : start + width]
            last = start + width >= len(rows)
            later.update(self._continue_rows(inputs, positions, _cache_of(output), chunk, targets, reuse=last))
        return [
            [self._score(first[q], later.get((q, k)), target) for k, target in enumerate(question)]
            for q, question in enumerate(targets)
        ]

    def _continue_rows(self, inputs, positions, cache, rows, targets, reuse: bool) -> dict:
        """Log-softmax over the tokens after the first of each row's continuation (a row: (question, request)),
        from one forward of their tokens but the last (right padded) on the prompts' cache, its batch rows picked
        per row (a copy, unless `reuse`: the last use of this cache). Positions continue each prompt's last one
        (`generate`'s rule), the attention mask covers the prompt's padding; `prepare_inputs_for_generation` lays the
        step out as a decode step of `generate` (no pixels; token types as the family takes them there)."""
        index = torch.tensor([q for q, _ in rows], device=self._device)
        tokens = [targets[q][k][:-1] for q, k in rows]
        length = max(len(t) for t in tokens)
        pad = self._tokenizer.pad_token_id or 0
        ids = torch.tensor([t + [pad] * (length - len(t)) for t in tokens], device=self._device)
        new_mask = torch.tensor([[1] * len(t) + [0] * (length - len(t)) for t in tokens], device=self._device)
        mask = torch.cat([inputs["attention_mask"][index], new_mask.to(inputs["attention_mask"].dtype)], dim=1)
        steps = torch.arange(1, length + 1, device=self._device)
        prompt_positions = positions[..., index, :]
        all_positions = torch.cat([prompt_positions, prompt_positions[..., -1:] + steps], dim=-1)
        kwargs = {}
        key = self.family.token_type_key
        if key in inputs:
            kwargs[key] = torch.cat([inputs[key][index], torch.zeros_like(ids)], dim=1)
        rows_cache = cache if reuse else copy.deepcopy(cache)
        rows_cache.reorder_cache(index)
        step = self.model.prepare_inputs_for_generation(
            torch.cat([inputs["input_ids"][index], ids], dim=1),
            next_sequence_length=length,
            **{_cache_argument(self.model): rows_cache},
            attention_mask=mask,
            position_ids=all_positions,
            use_cache=True,
            is_first_iteration=False,
            **kwargs,
        )
        with torch.inference_mode():
            logits = self.model(**step).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        return {row: logprobs[r, : len(tokens[r])] for r, row in enumerate(rows)}

    def _continuation_ids(self, continuation: str) -> list[int]:
        """The continuation tokenised on its own, as the per-request scoring tokenises it."""
        return self._tokenizer(continuation, add_special_tokens=False)["input_ids"]

    def _score(self, first: torch.Tensor, later: torch.Tensor | None, target: list[int]) -> tuple[float, bool]:
        """(nll, greedy) of `target` from the log-softmax that predicts its first token and those that predict the
        others (None for a one-token continuation)."""
        logprobs = first[None] if later is None else torch.cat([first[None], later])
        logprobs = logprobs[: len(target)]
        wanted = torch.tensor(target, dtype=torch.long, device=logprobs.device)
        picked = logprobs.gather(-1, wanted[:, None])[:, 0]
        greedy = bool((logprobs.argmax(-1) == wanted).all())
        nll = -(picked.mean() if self.ll_reduction == "mean" else picked.sum())
        return float(nll), greedy

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Generated text per request; a refused document (see the module doc) gets "", the rest of its batch is
        generated as if it were not there. Requests in the response store are answered from it; the others are
        batched (longest context first) and stored batch by batch."""
        args = [r.args for r in requests]
        keys = self._keys("generate_until", args)
        results = self._answers_from_store("generate_until", keys, args)
        todo = [i for i, result in enumerate(results) if result is None]
        refused = 0
        order = utils.Collator([(*args[i], i) for i in todo], lambda x: (-len(x[0]), x[0]), grouping=True)
        progress = tqdm(total=len(todo), disable=self.rank != 0, desc="generate")
        for batch in order.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_kwargs, doc_to_visuals, doc_ids, tasks, splits, indices = zip(*batch)
            kwargs = dict(all_kwargs[0])  # grouped by generation kwargs
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            texts, usable = [""] * len(batch), {}  # usable: position in the batch -> the document's images
            transient = set()  # positions refused on a run-time failure, which may not happen again: not stored
            for k, visual_args in enumerate(zip(doc_to_visuals, doc_ids, tasks, splits)):
                try:
                    usable[k] = self.visuals(*visual_args)
                except ImageError as error:
                    refused += 1
                    self._log_refusal(tasks[k], splits[k], doc_ids[k], error, 'it gets an empty answer ("")')
            generated, failures = [], []
            if usable:
                try:
                    generated = self._generate([contexts[k] for k in usable], list(usable.values()), kwargs)
                except Exception:  # a run-time failure the checks did not foresee: each document on its own
                    for k in list(usable):
                        try:
                            generated += self._generate([contexts[k]], [usable[k]], kwargs)
                        except Exception as error:
                            if not usable[k]:
                                raise  # a document without images: not an image problem
                            failures.append(error)
                            del usable[k]
                            refused += 1
                            transient.add(k)
                            self._log_refusal(tasks[k], splits[k], doc_ids[k], error, 'it gets an empty answer ("")')
            self._scored_documents += len(usable)
            for error in failures:
                self._run_time_failure(error)
            for k, text in zip(list(usable), generated):
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                texts[k] = text
                self.cache_hook.add_partial("generate_until", (contexts[k], all_kwargs[0]), text)
            for k, text in enumerate(texts):
                results[indices[k]] = text
            stored = [indices[k] for k in range(len(batch)) if k not in transient]
            self._store("generate_until", keys, args, stored, results)
            progress.update(len(batch))
        progress.close()
        self._log_refusal_count("generate_until", refused, len(todo))
        return results

    def _keys(self, kind: str, args: list[tuple]) -> list[str] | None:
        """The response store's key of each request (None without a store); identical requests (lmms-eval's
        repeats) get keys of their own."""
        if self.responses is None:
            return None
        seen, keys = Counter(), []
        for context, request, _, doc_id, task, split in args:
            key = request_key(kind, task, split, doc_id, context, request)
            keys.append(request_key(kind, task, split, doc_id, context, request, seen[key]))
            seen[key] += 1
        return keys

    def _answers_from_store(self, kind: str, keys: list[str] | None, args: list[tuple]) -> list:
        """Per request, its stored answer, or None when it must run; logs how many came from the store, by task."""
        if keys is None:
            return [None] * len(args)
        answers = [self.responses[key] if key in self.responses else None for key in keys]
        tasks = Counter(request[4] for request, answer in zip(args, answers) if answer is not None)
        found = sum(tasks.values())
        by_task = f" ({', '.join(f'{task}: {n}' for task, n in sorted(tasks.items()))})" if found else ""
        eval_logger.info(
            f"{self.name}: {kind}: {found} of {len(keys)} requests answered from the response store "
            f"{self.responses.path}{by_task}; {len(keys) - found} to run"
        )
        return answers

    def _store(self, kind: str, keys: list[str] | None, args: list[tuple], indices: list[int], results: list) -> None:
        """Appends the answers of the requests at `indices` to the response store (if any)."""
        if keys is not None:
            about = lambda i: {"kind": kind, "task": args[i][4], "doc_id": args[i][3]}  # noqa: E731
            self.responses.add([(keys[i], about(i), results[i]) for i in indices])

    def _generate(self, contexts: list[str], images: list[list], kwargs: dict) -> list[str]:
        """One `generate` call for a batch of documents; the new text of each, before stop strings."""
        inputs = self.encode([self.prompt(c, len(i)) for c, i in zip(contexts, images)], images)
        temperature = kwargs.get("temperature") or 0
        with torch.inference_mode():
            tokens = self.model.generate(
                **inputs,
                do_sample=temperature > 0,
                temperature=temperature or None,
                top_p=kwargs.get("top_p"),
                num_beams=kwargs.get("num_beams", 1),
                max_new_tokens=kwargs.get("max_new_tokens", 1024),
                use_cache=self.use_cache,
                pad_token_id=self._tokenizer.pad_token_id,
            )
        return self._tokenizer.batch_decode(tokens[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def _run_time_failure(self, error: Exception) -> None:
        """Counts a document refused on a run-time failure; raises when RUN_TIME_FAILURES of them have failed before
        any document scored: a failure of every document is the model's or its setup's (a tokenizer that cannot
        pad, a device out of memory for any image), not one image's, and refusing them all would give a score of
        nothing but refusals."""
        self._run_time_failures += 1
        if not self._scored_documents and self._run_time_failures >= RUN_TIME_FAILURES:
            raise RuntimeError(
                f"{self.name}: the first {self._run_time_failures} documents with images all failed at run time, "
                f"the last with {error!r}; that is not one image's problem, so the evaluation stops here (their "
                "refusals logged above are not stored; the failing call's traceback is above this one)."
            ) from error

    def _log_refusal(self, task, split, doc_id, error: Exception, outcome: str) -> None:
        """A refused document, named so it can be found (and excluded) in the results."""
        why = str(error) if isinstance(error, ImageError) else f"it failed at run time on its image: {error!r}"
        eval_logger.error(f"{self.name}: refusing document {doc_id} of task {task} (split {split}): {why}; {outcome}.")

    def _log_refusal_count(self, kind: str, refused: int, total: int) -> None:
        if refused:
            eval_logger.warning(
                f"{self.name}: {kind}: refused {refused} of {total} requests on their images "
                "(see the errors above); the others were scored."
            )


class LlavaOvManager(LlavaManager):
    """`--model llava_ov_manager`: `llava_manager` for LLaVA-OneVision checkpoints only (scored in `qwen_1_5` by
    default, as before); a checkpoint of another family is refused before it is loaded."""

    name = "llava_ov_manager"
    families = ("llava_onevision",)


def _cache_of(output):
    """The cache a forward returned: `cache` (transformers >= 5.24), `past_key_values` before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _cache_argument(model) -> str:
    """The name `prepare_inputs_for_generation` takes the cache under: `cache` (transformers >= 5.24),
    `past_key_values` before; where it takes the cache through `**kwargs` only (Gemma 3's), the name of `forward`'s
    (the old name there warns that it is deprecated, and is to go)."""
    for method in (model.prepare_inputs_for_generation, model.forward):
        parameters = inspect.signature(method).parameters
        for name in ("cache", "past_key_values"):
            if name in parameters:
                return name
    return "past_key_values"
