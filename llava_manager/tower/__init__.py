"""ManagerTower (paper Sections III-IV): the two-tower vision-language model, on transformers' BridgeTower.

    from llava_manager.tower import ManagerTowerConfig, ManagerTowerForQuestionAnswering
    model = ManagerTowerForQuestionAnswering(ManagerTowerConfig(num_labels=3129))  # AAUM + fused query (default)
    baseline = ManagerTowerForQuestionAnswering(ManagerTowerConfig(manager_type="bridge", num_labels=3129))

`manager_type="bridge"` is transformers' BridgeTower, so both are trained and scored by the same code. The classes
are registered with transformers' Auto classes (`model_type` "managertower").
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
)

from .config import ManagerTowerConfig
from .heads import (
    ManagerTowerForImageTextMatching,
    ManagerTowerForImageTextRetrieval,
    ManagerTowerForMaskedLM,
    ManagerTowerForNLVR2,
    ManagerTowerForPreTraining,
    ManagerTowerForQuestionAnswering,
    ManagerTowerForVisualEntailment,
    retrieval_scores,
)
from .managers import AAUM, SAM, SAUM
from .modeling import ManagerTowerModel, ManagerTowerModelOutput, ManagerTowerPreTrainedModel

AutoConfig.register(ManagerTowerConfig.model_type, ManagerTowerConfig, exist_ok=True)
AutoModel.register(ManagerTowerConfig, ManagerTowerModel, exist_ok=True)
AutoModelForMaskedLM.register(ManagerTowerConfig, ManagerTowerForMaskedLM, exist_ok=True)
AutoModelForPreTraining.register(ManagerTowerConfig, ManagerTowerForPreTraining, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(ManagerTowerConfig, ManagerTowerForQuestionAnswering, exist_ok=True)

__all__ = [
    "ManagerTowerConfig",
    "ManagerTowerModel",
    "ManagerTowerModelOutput",
    "ManagerTowerPreTrainedModel",
    "ManagerTowerForMaskedLM",
    "ManagerTowerForImageTextMatching",
    "ManagerTowerForPreTraining",
    "ManagerTowerForQuestionAnswering",
    "ManagerTowerForVisualEntailment",
    "ManagerTowerForNLVR2",
    "ManagerTowerForImageTextRetrieval",
    "retrieval_scores",
    "SAM",
    "SAUM",
    "AAUM",
]
