"""Models: plain `nn.Module`s that know nothing of Lightning."""

from promptdecouple.model.prompted_clip import PromptedCLIP
from promptdecouple.model.prompts import DeepPrompts
from promptdecouple.model.random_clip import build_clip_tokenizer, write_random_clip

__all__ = ["DeepPrompts", "PromptedCLIP", "build_clip_tokenizer", "write_random_clip"]
