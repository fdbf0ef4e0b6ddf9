"""promptdecouple: two-stage prompt decoupling for text-to-image person re-identification."""

from promptdecouple.model import PromptedCLIP, write_random_clip

__all__ = ["PromptedCLIP", "write_random_clip"]
__version__ = "0.1.0"
