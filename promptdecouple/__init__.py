"""promptdecouple: two-stage prompt decoupling for text-to-image person re-identification."""

from promptdecouple import data
from promptdecouple.data import TIReIDDataModule
from promptdecouple.metrics import RetrievalMetrics, retrieval_metrics
from promptdecouple.model import PromptedCLIP, write_random_clip
from promptdecouple.module import PromptDecoupleModule
from promptdecouple.stages import StageSwitch

__all__ = [
    "PromptDecoupleModule",
    "PromptedCLIP",
    "RetrievalMetrics",
    "StageSwitch",
    "TIReIDDataModule",
    "data",
    "retrieval_metrics",
    "write_random_clip",
]
__version__ = "0.1.0"
