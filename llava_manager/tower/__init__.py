"""ManagerTower (paper Sections III-IV): the two-tower vision-language model, on transformers' BridgeTower.

    from llava_manager.tower import ManagerTowerConfig, ManagerTowerModel
    model = ManagerTowerModel(ManagerTowerConfig())                      # AAUM with the fused query, the default
    baseline = ManagerTowerModel(ManagerTowerConfig(manager_type="bridge"))  # transformers' BridgeTowerModel

The config and model classes are registered with transformers' Auto classes (`model_type` "managertower").
"""

from transformers import AutoConfig, AutoModel

from .config import ManagerTowerConfig
from .managers import AAUM, SAM, SAUM
from .modeling import ManagerTowerModel, ManagerTowerModelOutput, ManagerTowerPreTrainedModel

AutoConfig.register(ManagerTowerConfig.model_type, ManagerTowerConfig, exist_ok=True)
AutoModel.register(ManagerTowerConfig, ManagerTowerModel, exist_ok=True)

__all__ = [
    "ManagerTowerConfig",
    "ManagerTowerModel",
    "ManagerTowerModelOutput",
    "ManagerTowerPreTrainedModel",
    "SAM",
    "SAUM",
    "AAUM",
]
