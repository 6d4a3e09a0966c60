"""lmms-eval's entry points (group `lmms_eval.models`) for `--model llava_manager` (any supported LLaVA family) and
`--model llava_ov_manager` (LLaVA-OneVision only). Kept light: lmms-eval imports it at start-up and hides import
errors, so the model classes are named by path and imported only when used."""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST_LLAVA_MANAGER = ModelManifest(
    model_id="llava_manager", simple_class_path="llava_manager.evaluation.lmms_eval_model.LlavaManager"
)
# `MANIFEST`: the first entry point's name, kept so an environment installed before `llava_manager` still resolves.
MANIFEST = ModelManifest(
    model_id="llava_ov_manager", simple_class_path="llava_manager.evaluation.lmms_eval_model.LlavaOvManager"
)
