"""lmms-eval's entry point for `--model llava_ov_manager` (group `lmms_eval.models`). Kept light: lmms-eval imports
it at start-up and hides import errors, so the model class is named by path and imported only when used."""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="llava_ov_manager",
                         simple_class_path="llava_manager.evaluation.lmms_eval_model.LlavaOvManager")
