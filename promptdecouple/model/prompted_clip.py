"""PromptedCLIP: Hugging Face CLIP with deep text and visual prompts, through its own layer loop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPModel
from transformers.masking_utils import create_causal_mask

from promptdecouple.model.prompts import DeepPrompts


class PromptedCLIP(nn.Module):
    """CLIP whose text and vision towers take learnable prompts at each of their first layers.

    Text prompts sit right after the start token, vision prompts right after CLS; prompts carry no
    position embedding. At layer 0 they are inserted; at each later layer up to `depth` fresh
    prompts replace the previous layer's prompt outputs. Vision prompts join after the position
    embedding and before `pre_layrnorm`, as in MaPLe. Zero-length prompts reproduce HF CLIP.

    Args:
        clip: hub name or local directory (anything `CLIPModel.from_pretrained` takes), or a
            `CLIPModel` instance (its position table is resized in place).
        text_prompt_length / vision_prompt_length: prompt tokens per layer; 0 disables a tower's prompts.
        text_prompt_depth / vision_prompt_depth: number of prompted layers; None means every layer.
        image_size: (height, width) of the input images. The pretrained square position table is
            resized once here (bicubic, as HF's `interpolate_pos_encoding`); None keeps it.
        attn_implementation: "eager", "sdpa", ... when `clip` is loaded here; None is HF's default.
        prompt_init_std: standard deviation of the prompts' normal initialisation.
    """

    def __init__(
        self,
        clip: str | Path | CLIPModel = "openai/clip-vit-base-patch16",
        text_prompt_length: int = 4,
        vision_prompt_length: int = 4,
        text_prompt_depth: int | None = None,
        vision_prompt_depth: int | None = None,
        image_size: tuple[int, int] | None = (384, 128),
        attn_implementation: str | None = None,
        prompt_init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if isinstance(clip, (str, Path)):
            kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
            clip = CLIPModel.from_pretrained(clip, **kwargs)
        elif not isinstance(clip, CLIPModel):
            raise TypeError(
                f"clip must be a hub name, a directory or a transformers.CLIPModel, got {type(clip).__name__}"
            )
        self.clip_model = clip.train()  # from_pretrained returns eval mode; a fresh nn.Module trains
        # The losses here use a fixed temperature: CLIP's own logit scale never trains.
        clip.logit_scale.requires_grad_(False)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)
        text_layers = len(clip.text_model.encoder.layers)
        vision_layers = len(clip.vision_model.encoder.layers)
        self.text_prompts = DeepPrompts(
            text_prompt_length,
            _depth(text_prompt_depth, text_layers, "text_prompt_depth"),
            clip.text_model.config.hidden_size,
            prompt_init_std,
        )
        self.vision_prompts = DeepPrompts(
            vision_prompt_length,
            _depth(vision_prompt_depth, vision_layers, "vision_prompt_depth"),
            clip.vision_model.config.hidden_size,
            prompt_init_std,
        )
        pretrained_side = clip.vision_model.config.image_size
        self.image_size = tuple(image_size) if image_size is not None else (pretrained_side, pretrained_side)
        self._resize_position_table(self.image_size)
        self._prompts_on = True

    @property
    def embed_dim(self) -> int:
        """Width of the projected features."""
        return self.clip_model.config.projection_dim

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected EOS features `(B, projection_dim)`, not normalised."""
        text = self.clip_model.text_model
        n = self.text_prompts.length if self._prompts_on else 0
        hidden = text.embeddings(input_ids=input_ids)
        batch = hidden.shape[0]
        if n > 0:
            hidden = _put_prompts(hidden, self.text_prompts.at_layer(0, batch, hidden.dtype), replace=0)
            if attention_mask is not None:
                prompt_mask = attention_mask.new_ones(batch, n)
                attention_mask = torch.cat([attention_mask[:, :1], prompt_mask, attention_mask[:, 1:]], dim=1)
        mask = _causal_mask(text.config, hidden, attention_mask)
        for index, layer in enumerate(text.encoder.layers):
            if index > 0 and n > 0:
                prompts = self.text_prompts.at_layer(index, batch, hidden.dtype)
                if prompts is not None:
                    hidden = _put_prompts(hidden, prompts, replace=n)
            hidden = _run_layer(layer, hidden, mask, causal=True)
        eos = _eos_positions(input_ids, text.eos_token_id) + n
        pooled = hidden[torch.arange(batch, device=hidden.device), eos.to(hidden.device)]
        return self.clip_model.text_projection(text.final_layer_norm(pooled))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected CLS features `(B, projection_dim)`, not normalised."""
        vision = self.clip_model.vision_model
        height, width = pixel_values.shape[-2:]
        if (height, width) != self.image_size:
            raise ValueError(
                f"pixel_values are {height}x{width} but this PromptedCLIP was built for "
                f"{self.image_size[0]}x{self.image_size[1]} (image_size=(height, width)); resize the "
                "images or build the model with the matching image_size"
            )
        embeddings = vision.embeddings
        patches = embeddings.patch_embedding(pixel_values.to(embeddings.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        batch = patches.shape[0]
        cls = embeddings.class_embedding.expand(batch, 1, -1).to(patches.dtype)
        hidden = torch.cat([cls, patches], dim=1) + embeddings.position_embedding.weight.unsqueeze(0)
        n = self.vision_prompts.length if self._prompts_on else 0
        if n > 0:
            hidden = _put_prompts(hidden, self.vision_prompts.at_layer(0, batch, hidden.dtype), replace=0)
        hidden = vision.pre_layrnorm(hidden)
        for index, layer in enumerate(vision.encoder.layers):
            if index > 0 and n > 0:
                prompts = self.vision_prompts.at_layer(index, batch, hidden.dtype)
                if prompts is not None:
                    hidden = _put_prompts(hidden, prompts, replace=n)
            hidden = _run_layer(layer, hidden, None, causal=False)
        return self.clip_model.visual_projection(vision.post_layernorm(hidden[:, 0]))

    @property
    def prompts_on(self) -> bool:
        """False inside `without_prompts()`: the towers then run as the CLIP alone."""
        return self._prompts_on

    @contextmanager
    def without_prompts(self) -> Iterator[None]:
        """Run both towers without their prompts inside the block: the features of the CLIP as given.

        Zero-shot scoring of the pretrained CLIP with a model that has prompts (they stay as they are,
        only unused). Not re-entrant across threads: it switches the whole module.
        """
        previous, self._prompts_on = self._prompts_on, False
        try:
            yield
        finally:
            self._prompts_on = previous

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each CLIP layer's activations in backward (less memory, about a third more compute)."""
        # transformers renamed gradient_checkpointing_* to activation_checkpointing_* during 5.x.
        if hasattr(self.clip_model, "activation_checkpointing_enable"):
            enable, disable = (
                self.clip_model.activation_checkpointing_enable,
                self.clip_model.activation_checkpointing_disable,
            )
        else:
            enable, disable = (
                self.clip_model.gradient_checkpointing_enable,
                self.clip_model.gradient_checkpointing_disable,
            )
        if enabled:
            enable({"use_reentrant": False})
        else:
            disable()

    def prompt_parameters(self) -> Iterator[nn.Parameter]:
        """The prompt tokens of both towers, and nothing else."""
        return chain(self.text_prompts.parameters(), self.vision_prompts.parameters())

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """CLIP's weights that fine-tuning trains: both towers and the projections.

        Not the logit scale: the losses divide similarities by a fixed temperature, so it is frozen
        at construction and left out here.
        """
        logit_scale = self.clip_model.logit_scale
        return (p for p in self.clip_model.parameters() if p is not logit_scale)

    def _resize_position_table(self, image_size: tuple[int, int]) -> None:
        """Resample the square patch-position table to the `image_size` grid, once."""
        embeddings = self.clip_model.vision_model.embeddings
        patch = embeddings.patch_size
        height, width = image_size
        if height % patch or width % patch:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {patch}")
        grid = (height // patch, width // patch)
        table = embeddings.position_embedding.weight.detach()
        side = round((table.shape[0] - 1) ** 0.5)
        if grid == (side, side):
            return
        patch_table = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_table = nn.functional.interpolate(
            patch_table.float(), size=grid, mode="bicubic", align_corners=False
        ).to(table.dtype)
        new_table = torch.cat([table[:1], patch_table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])
        resized = nn.Embedding(new_table.shape[0], new_table.shape[1], device=table.device, dtype=table.dtype)
        resized.weight.data.copy_(new_table)
        resized.weight.requires_grad_(embeddings.position_embedding.weight.requires_grad)
        embeddings.position_embedding = resized
        embeddings.num_patches = grid[0] * grid[1]
        embeddings.num_positions = embeddings.num_patches + 1
        embeddings.position_ids = torch.arange(embeddings.num_positions, device=table.device).unsqueeze(0)


# ---- the transformers interfaces this layer loop calls, version-fragile: here only ----------------
# `masking_utils.create_causal_mask` (transformers 5.x) builds the text tower's mask the way
# `CLIPTextModel` does; `CLIPEncoderLayer.__call__(hidden_states, attention_mask, is_causal=...)` runs
# one layer with the configured attention backend. Under SDPA the mask may come back None, and then
# only `is_causal=True` keeps the text attention causal. A release that changes either signature
# fails tests/test_prompted_clip.py::test_the_transformers_interfaces_of_the_layer_loop_are_there;
# one that changes their behaviour fails the equivalence tests with HF's own forward there.


def _causal_mask(config, hidden: torch.Tensor, attention_mask: torch.Tensor | None):
    return create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None)


def _run_layer(layer: nn.Module, hidden: torch.Tensor, mask, causal: bool) -> torch.Tensor:
    return layer(hidden, mask, is_causal=True) if causal else layer(hidden, mask)


def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    """Load state dicts written before the inner CLIPModel was named `clip_model` (it was `clip`)."""
    legacy = prefix + "clip."
    for key in [k for k in state_dict if k.startswith(legacy)]:
        state_dict[prefix + "clip_model." + key[len(legacy) :]] = state_dict.pop(key)


def _depth(depth: int | None, num_layers: int, name: str) -> int:
    if depth is None:
        return num_layers
    if not 1 <= depth <= num_layers:
        raise ValueError(f"{name} must be between 1 and the number of layers ({num_layers}), got {depth}")
    return depth


def _put_prompts(hidden: torch.Tensor, prompts: torch.Tensor, replace: int) -> torch.Tensor:
    """Place `prompts` right after token 0, replacing `replace` tokens that were there."""
    return torch.cat([hidden[:, :1], prompts, hidden[:, 1 + replace :]], dim=1)


def _eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Where HF CLIP pools: the first EOS, or the largest id for legacy configs with eos id 2."""
    if eos_token_id == 2:
        return input_ids.to(torch.int).argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)
