"""LLaVA-OV-Manager (Xu, Qin, Che, Kan, TCSVT 2025) for the Hugging Face LLaVA family: 1.5, NeXT, NeXT-Video, OneVision;
and ManagerTower, the paper's two-tower model on transformers' BridgeTower (`llava_manager.tower`)."""

from ._compat import check_versions

check_versions()

from .core.config import ManagerConfig  # noqa: E402
from .core.managers import Manager, ManagerStack  # noqa: E402
from .core.patch import apply_manager, get_managers, has_manager, manager_config, manager_plan, remove_manager  # noqa: E402
from .core.persistence import LlavaOnevisionManagerForConditionalGeneration, from_pretrained, load_manager, save_manager  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ManagerConfig",
    "Manager",
    "ManagerStack",
    "apply_manager",
    "remove_manager",
    "get_managers",
    "has_manager",
    "manager_config",
    "manager_plan",
    "save_manager",
    "load_manager",
    "from_pretrained",
    "LlavaOnevisionManagerForConditionalGeneration",
]
