"""The private and undocumented APIs of transformers, accelerate, DeepSpeed, lmms-eval, torch and peft that this
package calls, reads or overrides (`REGISTRY`), and `check` / `check_all` to check them against the installed ones."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

# Distribution name -> import root.
OWNERS = {
    "transformers": "transformers",
    "accelerate": "accelerate",
    "deepspeed": "deepspeed",
    "lmms-eval": "lmms_eval",
    "torch": "torch",
    "peft": "peft",
}
KINDS = ("function", "method", "attribute", "module", "signature")


@dataclass(frozen=True)
class UpstreamAPI:
    """One upstream API we rely on, named by an importable dotted path; `used_in`: our module(s), comma-separated
    paths from the repository root; `why`: what our code uses it for (and, for instance attributes, how it is checked).

    What `check` verifies, by `kind`:
    - "module": the module imports.
    - "function" / "method": the object exists and is callable; "signature": the same, for public callables whose
      parameters we rely on. `params` must be named parameters of `inspect.signature` (a name the callable only takes
      through `**kwargs` passes when its source mentions the name); the first `positional` of them must be its
      leading positional parameters, in that order (`self` / `cls` not counted): our code passes them by position.
    - "attribute": `getattr` on the owner; an attribute that only exists on instances (set in `__init__` or another
      method, e.g. DeepSpeed's optimizer buffers) is looked up in the source of the owning class and its bases (or of
      the module, when the parent is a module): it must be set or read there as `.name` or `"name"`.
    - `callers`: upstream functions / classes whose source must still refer to the API (`.name`, `"name"` or a call
      `name(`): an override nobody calls any more, or a field nobody reads, would otherwise go silently dead.
    - `mentions`: strings that must appear in the source of the callers (or, without callers, of the API itself, or
      of its owning class for an attribute): the behaviour we rely on, pinned as literally as it can be.
    """

    owner: str  # distribution name, a key of OWNERS
    dotted: str  # importable dotted path
    kind: str  # one of KINDS
    used_in: str
    why: str
    params: tuple[str, ...] = ()  # parameter names our code passes or relies on
    positional: int = 0  # how many of `params` our code passes by position (they must lead, in this order)
    callers: tuple[str, ...] = ()  # upstream code that must still refer to it
    mentions: tuple[str, ...] = ()  # strings that must stay in the callers' (or its own) source

    @property
    def name(self) -> str:
        return self.dotted.rsplit(".", 1)[-1]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(path.strip() for path in self.used_in.split(",") if path.strip())


_T = "transformers"
_A = "accelerate"
_D = "deepspeed"
_L = "lmms-eval"
_P = "peft"
_TORCH = "torch"

_CHECKPOINT = "llava_manager/core/checkpoint.py"
_PATCH = "llava_manager/core/patch.py"
_TRAINER = "llava_manager/training/trainer.py"
_TOWER_TRAINER = "llava_manager/tower/training/trainer.py"
_RUN_TRAINER = "llava_manager/runtime/trainer.py"
_FSDP = "llava_manager/training/fsdp.py"
_PACKING = "llava_manager/training/packing.py"
_IMAGES = "llava_manager/processing/images.py"
_PROCESSORS = "llava_manager/processing/processors.py"
_QWEN2_VIT = "models.qwen2_vl.modeling_qwen2_vl.Qwen2VisionTransformerPretrainedModel"
_QWEN2_5_VIT = "models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel"
_EVAL = "llava_manager/evaluation/lmms_eval_model.py"
_EVAL_MAIN = "llava_manager/evaluation/__main__.py"
_TOWER = "llava_manager/tower/modeling.py"
_BUDGET = "llava_manager/tower/analysis/budget.py"
_BT = "transformers.models.bridgetower.modeling_bridgetower"
_INSTANCE = "an instance attribute: checked by reading the source of the class and its bases"

REGISTRY: tuple[UpstreamAPI, ...] = (
    # ---- transformers: the Trainer's checkpoint loading (StrictCheckpointLoading) ------------------------------------
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._load_from_checkpoint",
        "method",
        _CHECKPOINT,
        "StrictCheckpointLoading overrides it so that resuming loads the weights through the model's key "
        "conversion and fails on missing or unexpected keys (DeepSpeed / FSDP / peft go to super())",
        params=("resume_from_checkpoint", "model"),
        positional=2,
        callers=("transformers.trainer.Trainer",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._load_best_model",
        "method",
        _CHECKPOINT,
        "StrictCheckpointLoading overrides it for a strict load_best_model_at_end",
        callers=("transformers.trainer.Trainer",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._issue_warnings_after_load",
        "method",
        _CHECKPOINT,
        "StrictCheckpointLoading overrides it to raise instead of warn when the Trainer's own loaders "
        "(DeepSpeed, FSDP, peft) leave keys out",
        params=("load_result",),
        positional=1,
        callers=("transformers.trainer.Trainer._load_from_checkpoint", "transformers.trainer.Trainer._load_best_model"),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.is_deepspeed_enabled",
        "attribute",
        _CHECKPOINT,
        f"read to leave DeepSpeed checkpoints to the Trainer; set in create_accelerator_and_postprocess ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.is_fsdp_enabled",
        "attribute",
        f"{_CHECKPOINT}, {_FSDP}, {_TRAINER}",
        f"read to leave FSDP checkpoints to the Trainer; fsdp.py sets it when it turns FSDP2 on for CPU ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer_utils._is_peft_model",
        "function",
        _CHECKPOINT,
        "tells a peft-wrapped model apart, whose adapter checkpoints the Trainer loads itself",
        params=("model",),
        positional=1,
    ),
    # ---- transformers: ManagerTrainer / TowerTrainer overrides and the Trainer state they read -----------------------
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._save_optimizer_and_scheduler",
        "method",
        _TRAINER,
        "ManagerTrainer overrides it to complete the FSDP2 optimizer state before each checkpoint",
        params=("output_dir",),
        positional=1,
        callers=("transformers.trainer.Trainer",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._save_checkpoint",
        "method",
        "llava_manager/runtime/commits.py",
        "CommittedCheckpoints overrides it to remove a torn folder first, rotate over complete checkpoints only "
        "(save_total_limit is lifted around the call) and commit the checkpoint once every process has written it",
        params=("model", "trial"),
        positional=2,
        callers=("transformers.trainer.Trainer",),
        mentions=("save_total_limit",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._get_output_dir",
        "method",
        "llava_manager/runtime/commits.py",
        "CommittedCheckpoints reads the run folder the checkpoint goes to, as _save_checkpoint does",
        params=("trial",),
        callers=("transformers.trainer.Trainer._save_checkpoint",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.get_batch_samples",
        "signature",
        _TRAINER,
        "ManagerTrainer overrides it to put the training step into a CorruptDataError raised while reading the batch",
        params=("epoch_iterator", "num_batches", "device"),
        positional=3,
        callers=("transformers.trainer.Trainer",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._tr_loss",
        "attribute",
        _TRAINER,
        "ManagerTrainer.log zeroes the loss accumulator after a non-finite step's loss is logged: the Trainer resets "
        "it by subtraction (`tr_loss -= tr_loss`), which leaves NaN in it for every later log",
        callers=("transformers.trainer.Trainer",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._total_loss_scalar",
        "attribute",
        _TRAINER,
        "ManagerTrainer.log keeps the run's loss total (the final `train_loss`) at its last finite value when a "
        "non-finite step's loss is logged",
        callers=("transformers.trainer.Trainer._maybe_log_save_evaluate",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._get_train_sampler",
        "method",
        _TRAINER,
        "ManagerTrainer overrides it for --group_by_modality_length (ModalityLengthGroupedSampler)",
        params=("train_dataset",),
        positional=1,
        callers=("transformers.trainer.Trainer",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._train_batch_size",
        "attribute",
        _TRAINER,
        f"the per-device batch size the modality-grouped sampler is built for ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer._get_collator_with_removed_columns",
        "method",
        _TRAINER,
        "ManagerTrainer.get_train_dataloader builds the --token_budget loader with the Trainer's collator",
        params=("data_collator", "description"),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.create_accelerator_and_postprocess",
        "method",
        _TRAINER,
        "ManagerTrainer overrides it to run fsdp.setup once the accelerator exists",
        callers=("transformers.trainer.Trainer.__init__",),
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.get_optimizer_cls_and_kwargs",
        "signature",
        _RUN_TRAINER,
        "create_optimizer builds the optimizer class and kwargs of the args",
        params=("args", "model"),
        positional=2,
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.get_decay_parameter_names",
        "signature",
        _TRAINER,
        "the weight-decay split of ManagerTrainer's per-module parameter groups",
        params=("model",),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.compute_loss",
        "signature",
        f"{_TRAINER}, {_TOWER_TRAINER}, {_RUN_TRAINER}",
        "both trainers override it and call super() (TowerTrainer with return_outputs=True)",
        params=("model", "inputs", "return_outputs"),
        positional=2,
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.prediction_step",
        "signature",
        f"{_TRAINER}, {_TOWER_TRAINER}",
        "both trainers override it and call super() with these arguments",
        params=("model", "inputs", "prediction_loss_only", "ignore_keys"),
        positional=3,
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.evaluate",
        "signature",
        _TOWER_TRAINER,
        "TowerTrainer overrides it (Flickr30K retrieval) and calls super() otherwise",
        params=("eval_dataset", "ignore_keys", "metric_key_prefix"),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer.Trainer.accepts_loss_kwargs",
        "attribute",
        "llava_manager/tower/heads/base.py",
        "not a Trainer attribute: the flag the Trainer reads off the model (checked by reading the Trainer's "
        "source); _TaskModel sets it False so the Trainer divides its plain-mean losses by the accumulation "
        "steps",
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer_utils.seed_worker",
        "function",
        _TRAINER,
        "worker_init_fn of the --token_budget loader, as the Trainer's own loaders",
        params=("worker_id", "num_workers", "rank"),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer_callback.CallbackHandler.callbacks",
        "attribute",
        _TRAINER,
        "ManagerTrainer inserts its callbacks at the front of this list; ZeroStaleGradientsCallback and "
        "ManagerNormCallback read the optimizer and model that call_event passes",
        callers=("transformers.trainer_callback.CallbackHandler.call_event",),
        mentions=("optimizer=self.optimizer", "model=self.model"),
    ),
    UpstreamAPI(
        _T,
        "transformers.TrainingArguments.hf_deepspeed_config",
        "attribute",
        _RUN_TRAINER,
        f"the parsed DeepSpeed config (an 'optimizer' section is refused, offload picks DeepSpeedCPUAdam); set "
        f"in __post_init__ ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.TrainingArguments.fsdp_plugin_args",
        "attribute",
        _FSDP,
        f"the FSDP plugin kwargs of --fsdp / --fsdp_config, to rebuild the plugin on CPU; set in __post_init__ "
        f"({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.TrainingArguments.train_sampling_strategy",
        "attribute",
        _TRAINER,
        "a 5.x field; --group_by_modality_length / --token_budget refuse any other order than 'random'",
    ),
    UpstreamAPI(
        _T,
        "transformers.TrainingArguments.dataloader_in_order",
        "attribute",
        _TRAINER,
        "a 5.x field, passed on to the --token_budget DataLoader as the Trainer does",
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer_pt_utils.AcceleratorConfig.use_configured_state",
        "attribute",
        "llava_manager/runtime/cpu_distributed.py",
        "DeepSpeed on CPU: the Trainer uses the gloo PartialState we made instead of its own",
    ),
    UpstreamAPI(
        _T,
        "transformers.trainer_pt_utils.AcceleratorConfig.dispatch_batches",
        "attribute",
        "llava_manager/training/streaming.py",
        "--streaming sets it False: each process reads its own batches",
    ),
    # ---- transformers: the LLaVA models (core/patch.py wraps them per instance; families/ lay out features) ----------
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.get_image_features",
            "method",
            _PATCH,
            "wrapped per instance (hooks record the vision layers); the wrapper binds the call's arguments "
            "to this signature and the family adapter reads them",
            params=params,
        )
        for model, params in (
            ("LlavaModel", ("pixel_values", "vision_feature_select_strategy", "image_sizes")),
            ("LlavaNextModel", ("pixel_values", "image_sizes", "vision_feature_select_strategy")),
            ("LlavaNextVideoModel", ("pixel_values", "image_sizes", "vision_feature_select_strategy")),
            (
                "LlavaOnevisionModel",
                (
                    "pixel_values",
                    "image_sizes",
                    "vision_feature_select_strategy",
                    "vision_aspect_ratio",
                    "batch_num_images",
                ),
            ),
        )
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.get_video_features",
            "method",
            _PATCH,
            "wrapped per instance like get_image_features; the adapter reads pixel_values_videos' shape",
            params=("pixel_values_videos", "vision_feature_select_strategy"),
        )
        for model in ("LlavaNextVideoModel", "LlavaOnevisionModel")
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.get_placeholder_mask",
            "method",
            _PATCH,
            "wrapped per instance: it says where the image / video tokens are, so the managers know where to add",
            params=params,
        )
        for model, params in (
            ("LlavaModel", ("input_ids", "inputs_embeds", "image_features")),
            ("LlavaNextModel", ("input_ids", "inputs_embeds", "image_features")),
            ("LlavaNextVideoModel", ("input_ids", "inputs_embeds", "image_features", "video_features")),
            ("LlavaOnevisionModel", ("input_ids", "inputs_embeds", "image_features", "video_features")),
        )
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.forward",
            "signature",
            _PATCH,
            "the pre-forward hook takes the managers' features from `mm_encoder_outputs` (encoder outputs made "
            "by generate() or by the caller)",
            params=("mm_encoder_outputs",),
        )
        for model in ("LlavaModel", "LlavaNextModel", "LlavaNextVideoModel", "LlavaOnevisionModel")
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaOnevisionForConditionalGeneration.forward",
        "signature",
        "llava_manager/training/data.py",
        "Collator gives `batch_num_images` when this forward takes it (read with inspect.signature)",
        params=("batch_num_images", "image_sizes", "pixel_values"),
    ),
    UpstreamAPI(
        _T,
        "transformers.generation.utils.mm_encoder_outputs",
        "attribute",
        _PATCH,
        "not an attribute: the encoder pre-pass of generate() fills `mm_encoder_outputs` by calling "
        "get_image_features with the arguments inspect.signature names (our wrapper's __signature__)",
        callers=("transformers.generation.utils.GenerationMixin._prepare_multimodal_encoder_kwargs_for_generation",),
        mentions=("inspect.signature(encoder_fn)",),
    ),
    UpstreamAPI(
        _T,
        "transformers.generation.utils.deepstack_features",
        "attribute",
        f"{_PATCH}, llava_manager/families/base.py",
        "not an attribute: the encoder-output field generate() repeats for beams and slices for chunked "
        "prefill; the managers' features travel in it (checked in those two functions' source)",
        callers=(
            "transformers.generation.utils.GenerationMixin._expand_multimodal_outputs",
            "transformers.generation.utils._slice_mm_encoder_output",
        ),
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaNextModel.pack_image_features",
        "method",
        f"llava_manager/families/llava_next.py, {_IMAGES}",
        "lays out the managers' per-layer features like the image tokens; images.py calls it unbound with a "
        "SimpleNamespace(config=...) as self, so it must read nothing but self.config",
        params=("image_features", "image_sizes", "vision_feature_select_strategy", "image_newline"),
        positional=3,
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaNextVideoModel.pack_image_features",
        "method",
        "llava_manager/families/llava_next.py",
        "next_image_features (shared by NeXT and NeXT-Video) packs the managers' features with it",
        params=("image_features", "image_sizes", "vision_feature_select_strategy", "image_newline"),
        positional=3,
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaOnevisionModel.pack_image_features",
        "method",
        f"llava_manager/families/llava_onevision.py, {_IMAGES}",
        "lays out the managers' per-layer features like the image tokens; images.py calls it unbound with a "
        "SimpleNamespace(config=...) as self, so it must read nothing but self.config",
        params=("image_features", "image_sizes", "image_newline", "vision_aspect_ratio"),
        positional=2,
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaOnevisionModel.apply_pooling",
        "method",
        "llava_manager/families/llava_onevision.py",
        "pools the managers' video features as the model pools its frames",
        params=("image_features",),
        positional=1,
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.{name}",
            "attribute",
            "llava_manager/families/base.py",
            f"the 5.x layout model.model.{{language_model, vision_tower, multi_modal_projector}}: the adapters "
            f"find the layers and the projector there (the trainer's parameter groups too) "
            f"({_INSTANCE})",
        )
        for model in ("LlavaModel", "LlavaNextModel", "LlavaNextVideoModel", "LlavaOnevisionModel")
        for name in ("language_model", "vision_tower", "multi_modal_projector")
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaNextVideoModel.vision_resampler",
        "attribute",
        "llava_manager/families/llava_next_video.py",
        f"run on each managed vision layer before the projector, as on the feature layer ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaOnevisionModel.image_newline",
        "attribute",
        "llava_manager/training/parts.py",
        f"counted with the projector's parameters (read with getattr; LLaVA-1.5 has none) ({_INSTANCE})",
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.models.{family}.modeling_{family}.image_size_to_num_patches",
            "function",
            used,
            "crops per image (base + grid) of an anyres image, from the model's private module",
            params=("image_size", "grid_pinpoints", "patch_size"),
            positional=3,
        )
        for family, used in (
            ("llava_next", f"llava_manager/families/llava_next.py, {_IMAGES}"),
            ("llava_next_video", "llava_manager/families/llava_next_video.py"),
            ("llava_onevision", f"llava_manager/families/llava_onevision.py, {_IMAGES}"),
        )
    ),
    UpstreamAPI(
        _T,
        "transformers.models.llava.image_processing_pil_llava.LlavaImageProcessorPil",
        "attribute",
        "llava_manager/families/llava.py",
        "the PIL image processor of LLaVA-1.5 (no torchvision), from its private module",
    ),
    UpstreamAPI(
        _T,
        "transformers.models.llava_next.image_processing_pil_llava_next.LlavaNextImageProcessorPil",
        "attribute",
        "llava_manager/families/llava_next.py, llava_manager/families/llava_next_video.py",
        "the PIL image processor of NeXT and NeXT-Video (no torchvision), from its private module",
    ),
    # ---- transformers: the other VLM families (families/qwen2_vl.py, qwen3_vl.py, internvl.py, gemma3.py, mistral3.py)
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.get_image_features",
            "method",
            _PATCH,
            "wrapped per instance (hooks record the vision layers); the adapter reads the bound arguments. "
            "Qwen3-VL and Qwen3.5 encode videos by calling it from get_video_features: the wrapper is re-entrant "
            "(the inner call passes through), so a video is recorded once, as a video",
            params=params,
            callers=(f"transformers.{model}.get_video_features",) if model in ("Qwen3VLModel", "Qwen3_5Model") else (),
            mentions=("self.get_image_features(",) if model in ("Qwen3VLModel", "Qwen3_5Model") else (),
        )
        for model, params in (
            ("Qwen2VLModel", ("pixel_values", "image_grid_thw")),
            ("Qwen2_5_VLModel", ("pixel_values", "image_grid_thw")),
            ("Qwen3VLModel", ("pixel_values", "image_grid_thw")),
            ("Qwen3VLMoeModel", ("pixel_values", "image_grid_thw")),
            ("Qwen3_5Model", ("pixel_values", "image_grid_thw")),
            ("Qwen3_5MoeModel", ("pixel_values", "image_grid_thw")),
            ("InternVLModel", ("pixel_values", "vision_feature_layer", "vision_feature_select_strategy")),
            ("Gemma3Model", ("pixel_values",)),
            ("Mistral3Model", ("pixel_values", "image_sizes", "vision_feature_layer")),
        )
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.get_video_features",
            "method",
            _PATCH,
            "wrapped per instance like get_image_features; the adapter reads video_grid_thw",
            params=("pixel_values_videos", "video_grid_thw"),
        )
        for model in ("Qwen2VLModel", "Qwen2_5_VLModel", "Qwen3VLModel", "Qwen3VLMoeModel", "Qwen3_5Model")
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.forward",
            "signature",
            _PATCH,
            "the pre-forward hook takes the managers' features from `mm_encoder_outputs`",
            params=("mm_encoder_outputs",),
        )
        for model in (
            "Qwen2VLModel",
            "Qwen2_5_VLModel",
            "Qwen3VLModel",
            "Qwen3VLMoeModel",
            "Qwen3_5Model",
            "Qwen3_5MoeModel",
            "InternVLModel",
            "Gemma3Model",
            "Mistral3Model",
        )
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.forward",
            "signature",
            _PATCH,
            "the language model's DeepStack input: a pre-hook keeps the model's own features in it (or none with "
            "deepstack=False) and drops the managers' features, which travel after them in deepstack_features",
            params=("deepstack_visual_embeds", "visual_pos_masks"),
        )
        for model in ("Qwen3VLTextModel", "Qwen3VLMoeTextModel")
    ),
    UpstreamAPI(
        _T,
        "transformers.Qwen3VLModel.language_model",
        "attribute",
        _PATCH,
        "called with a DeepStack input built from every entry of the encoder outputs' deepstack_features (own and "
        f"managers'), which the pre-hook on it cuts back ({_INSTANCE})",
        callers=("transformers.Qwen3VLModel.forward",),
        mentions=(".deepstack_features", "deepstack_visual_embeds=deepstack_visual_embeds"),
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{model}.{name}",
            "attribute",
            used,
            f"the layers the managers aggregate and what brings one of them into the LLM ({_INSTANCE})",
        )
        for model, name, used in (
            (_QWEN2_VIT, "blocks", "llava_manager/families/base.py"),
            (_QWEN2_VIT, "merger", "llava_manager/families/qwen2_vl.py"),
            (_QWEN2_5_VIT, "merger", "llava_manager/families/qwen2_vl.py"),
            (_QWEN2_5_VIT, "window_size", "llava_manager/families/qwen2_vl.py"),
            ("models.qwen3_vl.modeling_qwen3_vl.Qwen3VLVisionModel", "merger", "llava_manager/families/qwen2_vl.py"),
            (
                "models.internvl.modeling_internvl.InternVLVisionModel",
                "layernorm",
                "llava_manager/families/internvl.py",
            ),
            ("InternVLModel", "pixel_shuffle", "llava_manager/families/internvl.py"),
            ("SiglipVisionModel", "post_layernorm", "llava_manager/families/gemma3.py"),
            ("Gemma3Model", "multi_modal_projector", "llava_manager/families/gemma3.py"),
            ("Mistral3Model", "multi_modal_projector", "llava_manager/families/mistral3.py"),
        )
    ),
    UpstreamAPI(
        _T,
        "transformers.vision_utils.get_vision_window_index",
        "signature",
        "llava_manager/families/qwen2_vl.py",
        "Qwen2.5-VL's window order, recomputed from the grid (kwargs not passed, so nothing is popped from the "
        "call's own precomputed arguments)",
        params=("grid_thw", "spatial_merge_size", "window_size", "patch_size"),
        positional=4,
        callers=("transformers.Qwen2_5_VisionTransformerPretrainedModel.forward",),
        mentions=("torch.argsort(window_index)",),
    ),
    UpstreamAPI(
        _T,
        "transformers.models.pixtral.image_processing_pil_pixtral.get_resize_output_image_size",
        "signature",
        "llava_manager/families/pixtral.py",
        "without torchvision, the PIL image processor's module answers `processing_pixtral`'s one import from the "
        "torchvision image processor's module (this helper, called by `PixtralProcessor._get_num_multimodal_tokens`)",
        params=("input_image", "size", "patch_size"),
        positional=3,
    ),
    UpstreamAPI(
        _T,
        "transformers.models.mistral3.modeling_mistral3.Mistral3MultiModalProjector.forward",
        "signature",
        "llava_manager/families/mistral3.py",
        "run on each aggregated layer with the images' sizes, as the model runs it on its feature layer",
        params=("image_features", "image_sizes"),
        positional=2,
    ),
    *(
        UpstreamAPI(
            _T,
            dotted,
            "attribute",
            used,
            "the family's PIL image processor (no torchvision), from its private module",
        )
        for dotted, used in (
            (
                "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl.Qwen2VLImageProcessorPil",
                "llava_manager/families/qwen2_vl.py",
            ),
            (
                "transformers.models.got_ocr2.image_processing_pil_got_ocr2.GotOcr2ImageProcessorPil",
                "llava_manager/families/internvl.py",
            ),
            (
                "transformers.models.gemma3.image_processing_pil_gemma3.Gemma3ImageProcessorPil",
                "llava_manager/families/gemma3.py",
            ),
            (
                "transformers.models.pixtral.image_processing_pil_pixtral.PixtralImageProcessorPil",
                "llava_manager/families/mistral3.py",
            ),
        )
    ),
    UpstreamAPI(
        _TORCH,
        "torch.Tensor._base",
        "attribute",
        "llava_manager/core/managers.py",
        "the tensor a view was made from: the managers read the layers the families cut from one folded tensor as a "
        "view of it (`stacked_layers`) instead of copying them",
    ),
    UpstreamAPI(
        _TORCH,
        "torch.distributed._tools",
        "module",
        "llava_manager/analysis/timing.py",
        "the package of torch's memory tracker (MemTracker), imported from it",
    ),
    UpstreamAPI(
        _TORCH,
        "torch.distributed._tools.mem_tracker.MemTracker",
        "signature",
        "llava_manager/analysis/timing.py",
        "the peak memory of a prefill, base and patched, on any device (its track_external and "
        "get_tracker_snapshot('peak'), whose per-device dicts hold a 'Total')",
        mentions=("def track_external", "def get_tracker_snapshot"),
    ),
    # ---- transformers: processors ------------------------------------------------------------------------------------
    UpstreamAPI(
        _T,
        "transformers.models.auto.tokenization_auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS",
        "attribute",
        "llava_manager/synthetic/data.py",
        "the model types whose saved tokenizer_class AutoTokenizer overrides (Qwen3.5): the embedded default builds "
        "their tiny tokenizer in the class they are reloaded in",
    ),
    UpstreamAPI(
        _T,
        "transformers.models.auto.tokenization_auto.TOKENIZER_MAPPING_NAMES",
        "attribute",
        "llava_manager/synthetic/data.py",
        "model type -> the tokenizer class name AutoTokenizer loads for it (Qwen3.5: Qwen3_5Tokenizer)",
    ),
    UpstreamAPI(
        _T,
        "transformers.models.auto.tokenization_auto.tokenizer_class_from_name",
        "signature",
        "llava_manager/synthetic/data.py",
        "that class from its name",
        params=("class_name",),
        positional=1,
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{processor}._get_number_of_features",
            "method",
            _IMAGES,
            "the processor's image-token count, compared with the model's packed feature count to refuse "
            "images the model cannot represent",
            params=("orig_height", "orig_width", "height", "width"),
            positional=4,
        )
        for processor in ("LlavaNextProcessor", "LlavaNextVideoProcessor", "LlavaOnevisionProcessor")
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{processor}.replace_image_token",
            "method",
            f"{_PROCESSORS}, llava_manager/training/lengths.py",
            "the image placeholder text of one image, as the processor expands it (called by _process_images)",
            params=("image_inputs", "image_idx"),
            positional=2,
        )
        for processor in ("LlavaProcessor", "LlavaNextProcessor", "LlavaNextVideoProcessor", "LlavaOnevisionProcessor")
    ),
    UpstreamAPI(
        _T,
        "transformers.processing_utils.ProcessorMixin._process_images",
        "method",
        _PROCESSORS,
        "one sample's images through the processor's own image path: the image processor's output and each image's "
        "expanded placeholder text (replace_image_token), as the processor's __call__ makes them",
        params=("images",),
        positional=1,
        mentions=("self.replace_image_token(",),
    ),
    UpstreamAPI(
        _T,
        "transformers.processing_utils.ProcessorMixin._merge_kwargs",
        "method",
        _PROCESSORS,
        "the image settings the processor's __call__ gives its image processor (class defaults such as InternVL's "
        "crop_to_patches), read from `images_kwargs`",
        params=("tokenizer_init_kwargs",),
        mentions=("images_kwargs",),
    ),
    *(
        UpstreamAPI(
            _T,
            f"transformers.{processor}._get_num_multimodal_tokens",
            "method",
            f"{_IMAGES}, llava_manager/training/lengths.py",
            "the image-token count of an image size as the processor lays it out; it raises on sizes it cannot lay "
            "out (Qwen's aspect-ratio limit), which refuses the image",
            params=("image_sizes",),
        )
        for processor in (
            "Qwen2VLProcessor",
            "Qwen2_5_VLProcessor",
            "Qwen3VLProcessor",
            "InternVLProcessor",
            "Gemma3Processor",
        )
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaOnevisionProcessor.num_image_tokens",
        "attribute",
        _IMAGES,
        f"tokens of one base crop: the patch grid of the layout the processor implies ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaOnevisionProcessor.vision_aspect_ratio",
        "attribute",
        _IMAGES,
        f"the anyres_max_N of the layout the processor implies ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaNextProcessor.vision_feature_select_strategy",
        "attribute",
        _IMAGES,
        f"NeXT's token count after the 'default' strategy's CLS drop ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaNextProcessor.num_additional_image_tokens",
        "attribute",
        _IMAGES,
        f"whether the processor counts CLIP's CLS token ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.LlavaNextProcessor.patch_size",
        "attribute",
        _IMAGES,
        f"the patch size of the layout the processor implies ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.processing_utils.ProcessorMixin.get_attributes",
        "method",
        _PROCESSORS,
        "the processor's parts; image_only drops the video processor from them",
    ),
    UpstreamAPI(
        _T,
        "transformers.processing_utils.ProcessorMixin.check_argument_for_proper_class",
        "method",
        _PROCESSORS,
        "ImageOnly overrides it to accept video_processor=None (no torchvision)",
        params=("argument_name", "argument"),
        positional=2,
        callers=("transformers.processing_utils.ProcessorMixin",),
    ),
    UpstreamAPI(
        _T,
        "transformers.processing_utils.ProcessorMixin.get_processor_dict",
        "method",
        _PROCESSORS,
        "ImageOnly.from_pretrained reads processor_config.json / chat template through it",
        params=("pretrained_model_name_or_path",),
        positional=1,
    ),
    # ---- transformers: weights, conversion mappings, model internals -------------------------------------------------
    UpstreamAPI(
        _T,
        "transformers.conversion_mapping.get_model_conversion_mapping",
        "function",
        _CHECKPOINT,
        "the key renamings from_pretrained applies, reused for the strict checkpoint load",
        params=("model",),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.conversion_mapping.get_checkpoint_conversion_mapping",
        "function",
        "llava_manager/core/persistence.py",
        "the legacy LLaVA key renaming of a model type",
        params=("model_type",),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.conversion_mapping.register_checkpoint_conversion_mapping",
        "function",
        "llava_manager/core/persistence.py",
        "gives our ...ManagerForConditionalGeneration classes their base class's key renaming (transformers "
        "looks it up by class name)",
        params=("model_type_or_class_name", "mapping", "overwrite"),
        positional=2,
    ),
    UpstreamAPI(
        _T,
        "transformers.core_model_loading.WeightConverter",
        "attribute",
        _CHECKPOINT,
        "a conversion that merges / splits tensors: refused by the strict loader",
    ),
    UpstreamAPI(
        _T,
        "transformers.core_model_loading.WeightRenaming",
        "attribute",
        _CHECKPOINT,
        "a pure key renaming, applied by the strict loader",
    ),
    UpstreamAPI(
        _T,
        "transformers.core_model_loading.rename_source_key",
        "function",
        _CHECKPOINT,
        "renames each checkpoint key as from_pretrained does",
        params=("source_key", "weight_renamings", "weight_converters", "base_model_prefix", "meta_state_dict"),
        positional=5,
    ),
    UpstreamAPI(
        _T,
        "transformers.PreTrainedModel.all_tied_weights_keys",
        "attribute",
        _CHECKPOINT,
        f"keys save_pretrained leaves out, excused from the strict load; set in post_init ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        "transformers.PreTrainedModel._from_config",
        "method",
        "llava_manager/tower/training/model.py",
        "builds a task model from a config (as the Auto classes do)",
        params=("config",),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.PreTrainedModel._no_split_modules",
        "attribute",
        _TOWER,
        "ManagerTowerPreTrainedModel overrides it (device_map never splits these modules)",
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerSelfAttention",
        "attribute",
        _TOWER,
        "named in ManagerTowerPreTrainedModel._no_split_modules",
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerResidualAttention",
        "attribute",
        _TOWER,
        "named in ManagerTowerPreTrainedModel._no_split_modules",
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerPreTrainedModel._init_weights",
        "method",
        f"{_TOWER}, llava_manager/tower/heads/retrieval.py",
        "overridden for the managers' and the ITC temperature's initial values, super() for the rest",
        params=("module",),
        positional=1,
        callers=("transformers.modeling_utils.PreTrainedModel",),
    ),
    UpstreamAPI(
        _T,
        "transformers.PretrainedConfig._attn_implementation",
        "attribute",
        f"llava_manager/analysis/collect.py, {_PACKING}",
        "the attention implementation in use: saved and restored around the eager analyses, logged by "
        "padding-free training",
    ),
    UpstreamAPI(
        _T,
        "transformers.PreTrainedModel.set_attn_implementation",
        "signature",
        "llava_manager/analysis/collect.py",
        "switches to eager attention for the attention analyses and back",
        params=("attn_implementation",),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.BridgeTowerConfig.from_dict",
        "signature",
        "llava_manager/tower/config.py",
        "ManagerTowerConfig overrides it to validate keyword overrides",
        params=("config_dict",),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.initialization",
        "module",
        f"{_TOWER}, llava_manager/tower/heads/retrieval.py",
        "transformers 5's init functions (normal_, zeros_, constant_), which respect the loaded-weights flags",
    ),
    UpstreamAPI(
        _T,
        "transformers.loss.loss_utils",
        "module",
        "llava_manager/training/liger.py",
        "Liger rebinds names in it; their previous values are put back",
    ),
    UpstreamAPI(
        _T,
        "transformers.image_transforms.convert_to_rgb",
        "signature",
        _IMAGES,
        "composites transparency on white",
        params=("image", "return_numpy"),
    ),
    # ---- transformers: attention masks, padding-free packing ---------------------------------------------------------
    UpstreamAPI(
        _T,
        "transformers.masking_utils.create_bidirectional_mask",
        "function",
        _TOWER,
        "the extended text mask of ManagerTower's text layers and cross-modal layers",
        params=("config", "inputs_embeds", "attention_mask"),
    ),
    UpstreamAPI(
        _T,
        "transformers.masking_utils._preprocess_mask_arguments",
        "function",
        _PACKING,
        "padding-free batches on SDPA / eager: create_causal_mask finds the packed samples from position_ids here",
        callers=("transformers.masking_utils.create_causal_mask",),
    ),
    UpstreamAPI(
        _T,
        "transformers.masking_utils.find_packed_sequence_indices",
        "function",
        _PACKING,
        "detects the packed samples where position_ids restart",
        params=("position_ids",),
        positional=1,
        callers=("transformers.masking_utils._preprocess_mask_arguments",),
    ),
    UpstreamAPI(
        _T,
        "transformers.masking_utils.packed_sequence_mask_function",
        "function",
        _PACKING,
        "the block-diagonal mask of packed samples (create_causal_mask reaches it directly or through "
        "packed_sequence_compatibility_function, by release; tests/training/test_packing.py checks the masks' effect)",
    ),
    UpstreamAPI(
        _T,
        "transformers.modeling_flash_attention_utils._flash_attention_forward",
        "function",
        _PACKING,
        "flash-attention's varlen path, driven by the collator's cu_seq_lens / max_length keys",
        params=("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"),
    ),
    UpstreamAPI(
        _T,
        "transformers.DataCollatorWithFlattening",
        "signature",
        _PACKING,
        "flattens each packed row; its output keys are read",
        params=("return_position_ids", "separator_id", "return_flash_attn_kwargs"),
        mentions=("cu_seq_lens_q", "max_length_q"),
    ),
    UpstreamAPI(
        _T,
        "transformers.data.data_collator.DataCollatorForLanguageModeling.torch_mask_tokens",
        "method",
        "llava_manager/tower/data/collators.py",
        "the MLM masking of PretrainCollator",
        params=("inputs", "special_tokens_mask"),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.data.data_collator.DataCollatorForLanguageModeling.create_rng",
        "method",
        "llava_manager/tower/data/collators.py",
        "seeds the masker's generator, which drives the ITM draws too",
    ),
    UpstreamAPI(
        _T,
        "transformers.data.data_collator.DataCollatorForLanguageModeling.generator",
        "attribute",
        "llava_manager/tower/data/collators.py",
        f"the masker's seeded generator, set by create_rng ({_INSTANCE})",
    ),
    # ---- transformers: BridgeTower pieces ManagerTower is built from -------------------------------------------------
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerVisionModel.visual",
        "attribute",
        _TOWER,
        f"the CLIP tower whose blocks and ln_post ManagerTower runs one by one ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerVisionTransformer.forward_pre",
        "method",
        _TOWER,
        "ln_pre embeddings of the images",
        params=("pixel_values", "interpolate_pos_encoding"),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerVisionTransformer.forward_post",
        "method",
        _TOWER,
        "CLIP's shared ln_post of a vision layer",
        params=("hidden_state",),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerTransformer.resblocks",
        "attribute",
        _TOWER,
        f"the vision blocks, run one by one to keep every layer ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerResidualAttention.forward",
        "signature",
        _TOWER,
        "one vision block, called with the sequence-first hidden state",
        params=("hidden_state",),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerTextEncoder.layer",
        "attribute",
        _TOWER,
        f"the text layers, run one by one to keep every layer ({_INSTANCE})",
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerTextLayer.forward",
        "signature",
        _TOWER,
        "one text layer, called with (hidden_states, extended mask); it returns a tensor in 5.x",
        params=("hidden_states", "attention_mask"),
        positional=2,
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerBertCrossLayer.forward",
        "signature",
        _TOWER,
        "one cross-modal layer; its (output, attention) pair is unpacked",
        params=("hidden_states", "encoder_hidden_states", "attention_mask", "encoder_attention_mask"),
        positional=2,
    ),
    UpstreamAPI(
        _T,
        f"{_BT}.BridgeTowerLinkTower.forward",
        "signature",
        _TOWER,
        "manager_type='bridge' reproduces BridgeTowerModel with it",
        params=("hidden_states", "cross_modal_hidden_states", "attention_mask"),
        positional=3,
    ),
    # ---- accelerate --------------------------------------------------------------------------------------------------
    UpstreamAPI(
        _A,
        "accelerate.state.PartialState._shared_state",
        "attribute",
        _FSDP,
        "FSDP2 on CPU: the distributed type is switched to FSDP in the shared state as well, since a later "
        "AcceleratorState copies it from there",
    ),
    UpstreamAPI(
        _A,
        "accelerate.state.AcceleratorState.fsdp_plugin",
        "attribute",
        _FSDP,
        f"FSDP2 on CPU: set as AcceleratorState.__init__ sets it for GPUs ({_INSTANCE})",
    ),
    UpstreamAPI(
        _A,
        "accelerate.state.AcceleratorState.distributed_type",
        "attribute",
        _FSDP,
        f"FSDP2 on CPU: switched from MULTI_CPU to FSDP ({_INSTANCE})",
    ),
    UpstreamAPI(
        _A,
        "accelerate.utils.DistributedType.MULTI_CPU",
        "attribute",
        _FSDP,
        "what accelerate sets up on CPU instead of FSDP",
    ),
    UpstreamAPI(_A, "accelerate.utils.DistributedType.FSDP", "attribute", _FSDP, "the distributed type we switch to"),
    UpstreamAPI(
        _A,
        "accelerate.utils.FullyShardedDataParallelPlugin.transformer_cls_names_to_wrap",
        "attribute",
        _FSDP,
        "set after construction to the model's decoder / encoder layer classes (read when the model is prepared)",
    ),
    UpstreamAPI(
        _A,
        "accelerate.utils.FullyShardedDataParallelPlugin.auto_wrap_policy",
        "attribute",
        _FSDP,
        "recognised as a partial of torch's transformer_auto_wrap_policy",
        mentions=("transformer_auto_wrap_policy",),
    ),
    UpstreamAPI(
        _A,
        "accelerate.utils.FullyShardedDataParallelPlugin.state_dict_type",
        "attribute",
        _FSDP,
        "switched to FULL_STATE_DICT around the final save_model",
    ),
    UpstreamAPI(
        _A,
        "accelerate.utils.FullyShardedDataParallelPlugin.set_mixed_precision",
        "method",
        _FSDP,
        "the rebuilt CPU plugin gets the accelerator's mixed precision",
        params=("mixed_precision",),
        positional=1,
    ),
    UpstreamAPI(
        _A,
        "accelerate.state.PartialState",
        "signature",
        "llava_manager/runtime/cpu_distributed.py",
        "DeepSpeed on CPU: a gloo process group made before the Trainer (backend goes through **kwargs)",
        params=("backend",),
    ),
    UpstreamAPI(
        _A,
        "accelerate.optimizer.AcceleratedOptimizer.optimizer",
        "attribute",
        f"{_TRAINER}, {_FSDP}",
        f"the wrapped torch / DeepSpeed optimizer (its state, its ZeRO-3 buffer) ({_INSTANCE})",
    ),
    UpstreamAPI(
        _A,
        "accelerate.data_loader.BatchSamplerShard.batch_size",
        "attribute",
        "llava_manager/training/sampling.py",
        "TokenBudgetBatchSampler sets batch_size = None so that accelerate deals its varying batches whole",
        mentions=("self.batch_size is None",),
    ),
    UpstreamAPI(
        _A,
        "accelerate.data_loader.IterableDatasetShard",
        "signature",
        "llava_manager/training/streaming.py",
        "the streamed data set yields placeholders at the other ranks' slots of this shard's layout",
        params=("batch_size", "num_processes", "process_index", "split_batches"),
    ),
    UpstreamAPI(
        _A,
        "accelerate.Accelerator.prepare_model",
        "signature",
        _EVAL,
        "multi-process evaluation wraps the model for inference",
        params=("model", "evaluation_mode"),
    ),
    UpstreamAPI(
        _A,
        "accelerate.utils.deepspeed.HfDeepSpeedConfig.is_offload",
        "method",
        _RUN_TRAINER,
        "ZeRO-Offload: the optimizer becomes DeepSpeedCPUAdam",
    ),
    UpstreamAPI(
        _A,
        "accelerate.utils.deepspeed.HfDeepSpeedConfig.config",
        "attribute",
        _RUN_TRAINER,
        f"the DeepSpeed config dict (an 'optimizer' section is refused) ({_INSTANCE})",
    ),
    # ---- DeepSpeed ---------------------------------------------------------------------------------------------------
    UpstreamAPI(
        _D,
        "deepspeed.runtime.zero.stage3.DeepSpeedZeroOptimizer_Stage3.grad_partitions_flat_buffer",
        "attribute",
        _TRAINER,
        f"ZeroStaleGradientsCallback zeroes this flat buffer of gradient partitions after every step, so a "
        f"parameter without a gradient gets a zero one ({_INSTANCE})",
    ),
    UpstreamAPI(
        _D,
        "deepspeed.runtime.zero.partition_parameters.ds_id",
        "attribute",
        _TRAINER,
        "set on every ZeRO-3 parameter; tells partitioned parameters apart (checked by reading the module's source)",
    ),
    UpstreamAPI(
        _D,
        "deepspeed.runtime.zero.partition_parameters.ds_numel",
        "attribute",
        "llava_manager/training/throughput.py",
        "the full size of a ZeRO-3 partitioned parameter, whose numel() is 0 (checked by reading the module's source)",
    ),
    UpstreamAPI(
        _D,
        "deepspeed.zero.GatheredParameters",
        "signature",
        _TRAINER,
        "gathers the managers' ZeRO-3 partitions to log their norms",
        params=("params",),
        positional=1,
    ),
    UpstreamAPI(
        _D,
        "deepspeed.ops.adam.DeepSpeedCPUAdam",
        "signature",
        _RUN_TRAINER,
        "ZeRO-Offload's optimizer, built with our parameter groups",
        params=("model_params", "lr", "betas", "eps"),
        positional=1,
    ),
    # ---- peft --------------------------------------------------------------------------------------------------------
    *(
        UpstreamAPI(
            _P,
            f"peft.utils.other.ModulesToSaveWrapper.{name}",
            "attribute",
            _PATCH,
            f"modules_to_save=['managers'] wraps the stack; the hooks call the active trainable copy ({_INSTANCE})",
        )
        for name in ("original_module", "modules_to_save", "disable_adapters", "active_adapters")
    ),
    UpstreamAPI(
        _P,
        "peft.PeftModel.peft_config",
        "attribute",
        "llava_manager/families/__init__.py",
        "recognises a PeftModel passed to apply_manager, to say what to do instead",
    ),
    # ---- lmms-eval ---------------------------------------------------------------------------------------------------
    UpstreamAPI(
        _L,
        "lmms_eval.api.model.lmms.__init__",
        "method",
        _EVAL,
        "LlavaManager.__init__ calls it instead of LlavaHf.__init__ and sets LlavaHf's attributes itself",
    ),
    *(
        UpstreamAPI(
            _L,
            f"lmms_eval.models.simple.llava_hf.LlavaHf.{name}",
            "attribute",
            _EVAL,
            f"set by LlavaManager.__init__ in place of LlavaHf.__init__; LlavaHf's properties and methods read "
            f"it ({_INSTANCE})",
        )
        for name in ("_model", "_tokenizer", "_image_processor", "_config", "_device", "batch_size_per_gpu")
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.models.simple.llava_hf.LlavaHf.flatten",
        "method",
        _EVAL,
        "flattens a document's visuals",
        params=("input",),
        positional=1,
    ),
    UpstreamAPI(_L, "lmms_eval.api.model.lmms._rank", "attribute", _EVAL, f"set for multi-process runs ({_INSTANCE})"),
    UpstreamAPI(
        _L, "lmms_eval.api.model.lmms._world_size", "attribute", _EVAL, f"set for multi-process runs ({_INSTANCE})"
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.api.model.lmms.task_dict",
        "attribute",
        _EVAL,
        f"the documents doc_to_visual is applied to ({_INSTANCE})",
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.api.model.lmms.cache_hook",
        "attribute",
        _EVAL,
        f"generate_until records each answer in it ({_INSTANCE})",
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.api.model.CacheHook.add_partial",
        "method",
        _EVAL,
        "records one generated answer",
        params=("attr", "req", "res"),
        positional=3,
    ),
    UpstreamAPI(_L, "lmms_eval.api.model.lmms.is_simple", "attribute", _EVAL, "marks LlavaManager as a simple model"),
    UpstreamAPI(
        _L,
        "lmms_eval.api.model.lmms.loglikelihood",
        "signature",
        _EVAL,
        "implemented by LlavaManager",
        params=("requests",),
        positional=1,
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.api.model.lmms.generate_until",
        "signature",
        _EVAL,
        "implemented by LlavaManager",
        params=("requests",),
        positional=1,
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.api.instance.Instance.args",
        "attribute",
        _EVAL,
        "the request's (context, continuation or gen kwargs, doc_to_visual, doc_id, task, split) tuple",
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.api.instance.GenerationResult",
        "signature",
        _EVAL,
        "wraps the (nll, greedy) pair so that lmms-eval 0.7 keeps it",
        params=("text",),
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.utils.Collator",
        "signature",
        _EVAL,
        "batches generate_until requests",
        params=("arr", "sort_fn", "grouping"),
        positional=2,
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.utils.Collator.get_batched",
        "method",
        _EVAL,
        "the batches of the requests",
        params=("n", "batch_fn"),
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.__main__.cli_evaluate",
        "function",
        _EVAL_MAIN,
        "python -m llava_manager.evaluation runs the lmms-eval command through it; it swallows an evaluation's "
        "exception (logged) unless --verbosity DEBUG, which is why cli_evaluate_single is wrapped",
        params=("args",),
        mentions=("parse_eval_args()", "cli_evaluate_single(args)"),
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.__main__.cli_evaluate_single",
        "function",
        _EVAL_MAIN,
        "replaced in its module, for one cli_evaluate call, by a wrapper that records the exception of each "
        "evaluation and whether it wrote a results file; cli_evaluate looks it up in the module when it calls it",
        params=("args",),
        positional=1,
        callers=("lmms_eval.__main__.cli_evaluate",),
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.__main__.parse_eval_args",
        "function",
        _EVAL_MAIN,
        "reads the command line from sys.argv, which python -m llava_manager.evaluation sets for the call",
        callers=("lmms_eval.__main__.cli_evaluate",),
        mentions=("parse_eval_args()",),
    ),
    UpstreamAPI(
        _L,
        "lmms_eval.models.registry_v2.ModelManifest",
        "signature",
        "llava_manager/evaluation/lmms_eval_manifest.py",
        "our entry points (group lmms_eval.models) name the model classes by path",
        params=("model_id", "simple_class_path"),
    ),
    # ---- transformers: log-likelihoods on a shared prompt's cache (evaluation/lmms_eval_model.py) --------------------
    UpstreamAPI(
        _T,
        "transformers.generation.utils.GenerationMixin._prepare_position_ids_for_generation",
        "method",
        _EVAL,
        "the positions of a left-padded batch of prompts as generate() lays them out (Qwen-VL: M-RoPE, overridden); "
        "the continuations' positions continue them",
        params=("inputs_tensor", "model_kwargs"),
        positional=2,
    ),
    UpstreamAPI(
        _T,
        "transformers.generation.utils.GenerationMixin.prepare_inputs_for_generation",
        "signature",
        _EVAL,
        "lays out the continuations' step on the prompts' cache as a decode step of generate() (slices the ids, "
        "positions and token types, drops the pixels; Gemma 3 drops its token types)",
        params=("input_ids", "next_sequence_length", "cache", "attention_mask", "is_first_iteration"),
        positional=1,
    ),
    UpstreamAPI(
        _T,
        "transformers.cache_utils.Cache.reorder_cache",
        "method",
        _EVAL,
        "picks (and repeats) the prompts' cache rows for the continuations, every layer type (linear attention too)",
        params=("beam_idx",),
        positional=1,
    ),
    # ---- torch -------------------------------------------------------------------------------------------------------
    UpstreamAPI(
        _TORCH,
        "torch.nn.Module._modules",
        "attribute",
        f"{_PATCH}, llava_manager/core/managers.py",
        f"the children dict: ManagerStack iterates it and remove_manager looks the stack up in it without "
        f"peft's attribute forwarding ({_INSTANCE})",
    ),
    UpstreamAPI(
        _TORCH,
        "torch.nn.Module.register_forward_hook",
        "signature",
        _PATCH,
        "records the vision layers; the post-forward hook on model.model runs even on errors",
        params=("hook", "always_call"),
        positional=1,
    ),
    UpstreamAPI(
        _TORCH,
        "torch.nn.Module.register_forward_pre_hook",
        "signature",
        _PATCH,
        "the managers add their term in decoder-layer pre-hooks that see the keyword arguments",
        params=("hook", "with_kwargs"),
        positional=1,
    ),
    UpstreamAPI(
        _TORCH,
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper.CheckpointWrapper._checkpoint_wrapped_module",
        "attribute",
        _FSDP,
        f"the layer inside a checkpoint wrapper, whose class becomes an FSDP unit ({_INSTANCE})",
    ),
    UpstreamAPI(
        _TORCH,
        "torch.distributed.fsdp.wrap.transformer_auto_wrap_policy",
        "function",
        _FSDP,
        "accelerate's transformer-based auto wrap is recognised by this function's __name__",
    ),
    UpstreamAPI(
        _TORCH,
        "torch.distributed.checkpoint.state_dict.get_optimizer_state_dict",
        "function",
        _FSDP,
        "leaves out the state of parameters that never had a gradient (pytorch#192202); "
        "complete_optimizer_state works around it",
    ),
    UpstreamAPI(
        _TORCH,
        "torch.utils.flop_counter.sdpa_flop_count",
        "function",
        _BUDGET,
        "torch's SDPA FLOP formula, reused for the CPU flash kernel its table lacks",
        params=("query_shape", "key_shape", "value_shape"),
        positional=3,
    ),
    UpstreamAPI(
        _TORCH,
        "torch.utils.flop_counter.FlopCounterMode",
        "signature",
        _BUDGET,
        "counts the tower's FLOPs with extra formulas",
        params=("display", "custom_mapping"),
    ),
    UpstreamAPI(
        _TORCH,
        "torch.utils.flop_counter.FlopCounterMode.get_flop_counts",
        "method",
        _BUDGET,
        "the per-op counts, to split LayerNorm from matmuls",
    ),
    UpstreamAPI(
        _TORCH,
        "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu",
        "attribute",
        _BUDGET,
        "the CPU SDPA kernel given a FLOP formula",
    ),
    UpstreamAPI(
        _TORCH,
        "torch.backends.mha.set_fastpath_enabled",
        "function",
        _BUDGET,
        "nn.MultiheadAttention's fused inference path is turned off while counting (read with getattr)",
        params=("value",),
        positional=1,
    ),
    UpstreamAPI(
        _TORCH,
        "torch.backends.mha.get_fastpath_enabled",
        "function",
        _BUDGET,
        "the fast-path setting, restored after counting",
    ),
)


# Our own private methods and attributes in subclasses of upstream classes ("module:Class" -> names). They must not
# exist in any upstream base class: one that did would be overridden (or overwritten) silently.
# tests/package/test_upstream.py requires every private name such a class defines to be either registered above or
# listed here.
OWN_PRIVATE_HELPERS: dict[str, tuple[str, ...]] = {
    "llava_manager.core.checkpoint:StrictCheckpointLoading": ("_loads_own_checkpoints",),
    "llava_manager.training.trainer:ManagerTrainer": (
        "_sampling_lengths",
        "_follow_epochs",
        "_sampling_cache",
        "_finite_loss_total",
    ),
    "llava_manager.runtime.preemption:PreemptionCallback": ("_handle", "_agreed", "_previous"),
    "llava_manager.training.throughput:ThroughputCallback": (
        "_tick",
        "_reduce",
        "_pending",
        "_local_total",
        "_warm_local",
        "_image_token_id",
        "_patches_per_frame",
        "_first_step",
        "_last",
        "_seconds",
        "_interval_seconds",
        "_warm_seconds",
    ),
    "llava_manager.training.streaming:StreamingSupervisedDataset": ("_rng", "_corrupt_piece"),
    "llava_manager.tower.training.trainer:TowerTrainer": ("_losses",),
    "llava_manager.evaluation.lmms_eval_model:LlavaManager": (
        "_generate",
        "_score_batch",
        "_refuse",
        "_score_questions",
        "_continue_rows",
        "_continuation_ids",
        "_score",
        "_log_refusal",
        "_log_refusal_count",
        "_run_time_failure",
        "_run_time_failures",
        "_scored_documents",
        "_keys",
        "_answers_from_store",
        "_store",
    ),
    "llava_manager.tower.modeling:ManagerTowerModel": (
        "_text_mask",
        "_ln_post",
        "_text_transform",
        "_image_transform",
        "_type_embedding",
        "_cross_layer",
        "_bridge",
        "_managed",
        "_manager_linears",
    ),
    "llava_manager.tower.heads.base:_TaskModel": ("_encode", "_extras"),
    "llava_manager.tower.heads.retrieval:ManagerTowerForImageTextRetrieval": ("_itc_text", "_itc_image"),
}


# ---- checking --------------------------------------------------------------------------------------------------------
class _Problem(Exception):
    """What is wrong with an API, in words that follow its dotted path."""


def installed_version(owner: str) -> str | None:
    """The installed version of `owner`'s distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(owner)
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def tested_range(owner: str) -> str:
    """The range `llava-manager`'s metadata declares for `owner` (pyproject.toml), e.g. "transformers>=5.0,<5.26"."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        lines = importlib.metadata.requires("llava-manager") or []
    except importlib.metadata.PackageNotFoundError:
        lines = []
    for line in lines:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == canonicalize_name(owner) and requirement.specifier:
            specs = sorted(requirement.specifier, key=lambda s: (s.operator.startswith("<"), s.operator, s.version))
            return owner + ",".join(str(s) for s in specs)
    return f"not declared for {owner} in llava-manager's metadata"


def resolve(dotted: str) -> Any:
    """The object at `dotted`: the longest importable module prefix, imported, then `getattr` for the rest. Raises
    `_Problem` saying what is missing."""
    parts = dotted.split(".")
    obj, found = None, 0
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
                continue  # not a module (an attribute path): try a shorter prefix
            raise _Problem(f"cannot be imported: importing {module_name} fails ({error})") from error
        except Exception as error:  # an upstream module that fails at import
            raise _Problem(
                f"cannot be imported: importing {module_name} fails ({type(error).__name__}: {error})"
            ) from error
        found = i
        break
    if not found:
        raise _Problem(f"is gone: no module {parts[0]}")
    for j in range(found, len(parts)):
        try:
            obj = getattr(obj, parts[j])
        except Exception as error:
            where = ".".join(parts[:j])
            if j == len(parts) - 1:
                raise _Problem(f"is gone ({where} has no attribute {parts[j]!r})") from error
            raise _Problem(f"is gone ({where} has no attribute {parts[j]!r}, so neither has {dotted})") from error
    return obj


_SOURCES: dict[int, tuple[Any, str]] = {}


def source_of(obj: Any) -> str:
    """`inspect.getsource(obj)` ("" when there is none); for a class, also the source of its bases (instance
    attributes are often set in a base's `__init__`)."""
    key = id(obj)
    if key not in _SOURCES:
        targets = [c for c in obj.__mro__ if c.__module__ != "builtins"] if inspect.isclass(obj) else [obj]
        if isinstance(obj, property):
            targets = [obj.fget]
        texts = []
        for target in targets:
            try:
                texts.append(inspect.getsource(target))
            except (OSError, TypeError):
                pass
        _SOURCES[key] = (obj, "\n".join(texts))  # the object is kept so that its id is not reused
    return _SOURCES[key][1]


def refers_to(source: str, name: str) -> bool:
    """`source` reads, sets or calls `name` (as `.name`, `"name"` or a call `name(`; a `def name(` does not count)."""
    escaped = re.escape(name)
    return re.search(rf"\.{escaped}\b|[\"']{escaped}[\"']|(?<!def )(?<![\w.]){escaped}\s*\(", source) is not None


def _signature_problem(api: UpstreamAPI, obj: Any) -> str | None:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError) as error:
        return f"has no readable signature ({error}); our code passes {list(api.params)}"
    parameters = list(signature.parameters.values())
    if parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    named = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters)
    missing = [
        name
        for name in api.params
        if name not in named and not (takes_kwargs and re.search(rf"\b{re.escape(name)}\b", source_of(obj)))
    ]
    if missing:
        return f"no longer takes the parameter(s) {missing} our code passes (signature now {signature})"
    leading = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][: api.positional]
    expected = list(api.params[: api.positional])
    if leading != expected:
        return (
            f"takes {leading} as its leading positional parameters, but our code passes {expected} by position "
            f"(signature now {signature})"
        )
    return None


def _problem(api: UpstreamAPI) -> str | None:
    if api.kind not in KINDS:
        return f"has an unknown kind {api.kind!r} (one of {KINDS})"
    if api.kind == "module":
        try:
            obj = importlib.import_module(api.dotted)
        except Exception as error:
            return f"is gone: importing it fails ({type(error).__name__}: {error})"
    elif api.kind == "attribute":
        parent_path, name = api.dotted.rsplit(".", 1)
        parent = resolve(parent_path)
        try:
            obj = getattr(parent, name)
        except Exception:  # an instance attribute, or a name upstream code reads: look for it in the source
            obj = None
            if not api.callers and not refers_to(source_of(parent), name):
                return f"is gone: {parent_path} has no attribute {name!r} and its source neither sets nor reads it"
    else:
        obj = resolve(api.dotted)
        if not callable(obj):
            return f"is no longer callable (it is a {type(obj).__name__})"
        if api.params or api.positional:
            problem = _signature_problem(api, obj)
            if problem:
                return problem
    callers = []
    for caller in api.callers:
        try:
            callers.append((caller, resolve(caller)))
        except _Problem as error:
            return f"cannot be checked: its upstream caller {caller} {error}"
    for caller, caller_obj in callers:
        if not refers_to(source_of(caller_obj), api.name):
            return f"is no longer used by {caller} (so what our code relies on there would never happen)"
    if api.mentions:
        if callers:
            places = callers
        elif api.kind == "attribute":
            places = [(api.dotted.rsplit(".", 1)[0], resolve(api.dotted.rsplit(".", 1)[0]))]
        else:
            places = [(api.dotted, obj)]
        for where, place in places:
            absent = [text for text in api.mentions if text not in source_of(place)]
            if absent:
                return f"changed: the source of {where} no longer contains {absent}"
    return None


def check(api: UpstreamAPI) -> str | None:
    """None when `api` is as our code expects it in the installed release, else a message naming the API, the
    installed version of its distribution, what our code uses it for and the range llava-manager declares for it.

    The dotted path is resolved by importing its longest importable module prefix and `getattr` for the rest; see
    `UpstreamAPI` for what each kind checks. An API of a distribution that is not installed (the optional
    dependencies deepspeed, lmms-eval, peft) gives None: our code does not reach it there."""
    if api.owner not in OWNERS:
        return f"{api.dotted}: unknown owner {api.owner!r} (one of {sorted(OWNERS)})"
    version = installed_version(api.owner)
    if version is None:
        return None
    try:
        problem = _problem(api)
    except _Problem as error:
        problem = str(error)
    except Exception as error:  # the check itself failed: still say which API
        problem = f"could not be checked ({type(error).__name__}: {error})"
    if problem is None:
        return None
    return (
        f"{api.owner} {version}: {api.dotted} {problem} ({api.used_in}: {api.why}); the tested range is "
        f"{tested_range(api.owner)}."
    )


def check_all(owners: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The messages of every API in `REGISTRY` (of the distributions `owners` only, when given) that the installed
    releases break. APIs of distributions that are not installed (optional: deepspeed, lmms-eval, peft) are skipped."""
    return [
        message
        for api in REGISTRY
        if (owners is None or api.owner in owners)
        and installed_version(api.owner) is not None
        and (message := check(api)) is not None
    ]
