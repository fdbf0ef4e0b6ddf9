"""PromptedCLIP against Hugging Face CLIP, and the behaviour of deep prompts."""

import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from promptdecouple.model.prompted_clip import PromptedCLIP

CAPTIONS = [
    "a woman in a red coat carrying a black backpack",
    "man with short hair",
    "a young person wearing blue jeans, white sneakers and a gray hoodie, holding a phone",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_clip_dir):
    return AutoTokenizer.from_pretrained(tiny_clip_dir)


@pytest.fixture(scope="module")
def padded(tokenizer):
    return tokenizer(CAPTIONS, padding="max_length", max_length=32, truncation=True, return_tensors="pt")


def load_clip(tiny_clip_dir, attn):
    return CLIPModel.from_pretrained(tiny_clip_dir, attn_implementation=attn).eval()


def prompted(tiny_clip_dir, attn="sdpa", **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("image_size", None)
    return PromptedCLIP(load_clip(tiny_clip_dir, attn), **kwargs).eval()


def images(height=64, width=64, batch=3):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_zero_prompts_reproduce_hf_text_features(tiny_clip_dir, padded, attn):
    hf = load_clip(tiny_clip_dir, attn)
    model = PromptedCLIP(hf, text_prompt_length=0, vision_prompt_length=0, image_size=None).eval()
    with torch.no_grad():
        for mask in (padded["attention_mask"], None):
            expected = hf.get_text_features(input_ids=padded["input_ids"], attention_mask=mask).pooler_output
            got = model.encode_text(padded["input_ids"], mask)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert padded["attention_mask"].sum(1).unique().numel() == len(CAPTIONS)  # really ragged


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_zero_prompts_reproduce_hf_image_features(tiny_clip_dir, attn):
    hf = load_clip(tiny_clip_dir, attn)
    model = PromptedCLIP(hf, text_prompt_length=0, vision_prompt_length=0, image_size=None).eval()
    pixels = images()
    with torch.no_grad():
        expected = hf.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(model.encode_image(pixels), expected, atol=1e-5, rtol=1e-5)


def test_without_prompts_gives_the_clip_alone_and_then_the_prompts_again(tiny_clip_dir, padded):
    hf = load_clip(tiny_clip_dir, "sdpa")
    model = prompted(tiny_clip_dir, text_prompt_length=4, vision_prompt_length=3)
    pixels = images()
    ids, mask = padded["input_ids"], padded["attention_mask"]
    with torch.no_grad():
        prompted_text, prompted_image = model.encode_text(ids, mask), model.encode_image(pixels)
        with model.without_prompts():
            assert not model.prompts_on
            torch.testing.assert_close(
                model.encode_text(ids, mask),
                hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
                atol=1e-5,
                rtol=1e-5,
            )
            torch.testing.assert_close(
                model.encode_image(pixels),
                hf.get_image_features(pixel_values=pixels).pooler_output,
                atol=1e-5,
                rtol=1e-5,
            )
        assert model.prompts_on
        assert not torch.allclose(
            prompted_text, hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        )
        torch.testing.assert_close(model.encode_text(ids, mask), prompted_text, atol=0, rtol=0)
        torch.testing.assert_close(model.encode_image(pixels), prompted_image, atol=0, rtol=0)
    with pytest.raises(RuntimeError), model.without_prompts():
        raise RuntimeError("inside")
    assert model.prompts_on  # switched back on after an error too


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_non_square_image_size_matches_hf_interpolation(tiny_clip_dir, attn):
    hf = load_clip(tiny_clip_dir, attn)
    pixels = images(96, 32)
    with torch.no_grad():
        expected = hf.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
        model = PromptedCLIP(hf, text_prompt_length=0, vision_prompt_length=0, image_size=(96, 32)).eval()
        assert model.clip_model.vision_model.embeddings.position_embedding.weight.shape[0] == 6 * 2 + 1
        torch.testing.assert_close(model.encode_image(pixels), expected, atol=1e-5, rtol=1e-5)


def test_wrong_image_size_names_both_sizes(tiny_clip_dir):
    model = prompted(tiny_clip_dir, image_size=(96, 32))
    with pytest.raises(ValueError, match=r"64x64.*96x32"):
        model.encode_image(images(64, 64))


def test_image_size_must_fit_patches(tiny_clip_dir):
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        prompted(tiny_clip_dir, image_size=(100, 32))


def test_prompted_eager_equals_sdpa(tiny_clip_dir, padded):
    eager = prompted(tiny_clip_dir, "eager", text_prompt_length=3, vision_prompt_length=2)
    sdpa = prompted(tiny_clip_dir, "sdpa", text_prompt_length=3, vision_prompt_length=2)
    torch.testing.assert_close(sdpa.text_prompts.tokens, eager.text_prompts.tokens)
    with torch.no_grad():
        for mask in (padded["attention_mask"], None):
            torch.testing.assert_close(
                eager.encode_text(padded["input_ids"], mask),
                sdpa.encode_text(padded["input_ids"], mask),
                atol=1e-5,
                rtol=1e-5,
            )
        torch.testing.assert_close(
            eager.encode_image(images()), sdpa.encode_image(images()), atol=1e-5, rtol=1e-5
        )


def test_text_attention_is_causal_with_prompts(tiny_clip_dir, padded):
    # Changing a token after position t must leave every earlier hidden state, hence a short
    # caption's EOS feature, unchanged: only true if the layers really attend causally.
    model = prompted(tiny_clip_dir, "sdpa", text_prompt_length=2)
    ids = padded["input_ids"][1:2].clone()
    eos = int((ids[0] == model.clip_model.text_model.eos_token_id).int().argmax())
    changed = ids.clone()
    changed[0, eos + 1 :] = 320  # real tokens after EOS instead of padding
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), model.encode_text(changed), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(
            model.encode_text(ids, torch.ones_like(ids)),
            model.encode_text(changed, torch.ones_like(ids)),
            atol=1e-6,
            rtol=1e-6,
        )


def test_prompts_change_features(tiny_clip_dir, padded):
    plain = prompted(tiny_clip_dir, text_prompt_length=0, vision_prompt_length=0)
    model = prompted(tiny_clip_dir, text_prompt_length=4, vision_prompt_length=4)
    with torch.no_grad():
        text_gap = (model.encode_text(padded["input_ids"]) - plain.encode_text(padded["input_ids"])).abs()
        image_gap = (model.encode_image(images()) - plain.encode_image(images())).abs()
    assert text_gap.min(dim=1).values.max() > 1e-4 and text_gap.max() > 1e-2
    assert image_gap.max() > 1e-2


def test_deeper_prompts_matter(tiny_clip_dir, padded):
    shallow = prompted(tiny_clip_dir, text_prompt_depth=1, vision_prompt_depth=1)
    deep = prompted(tiny_clip_dir)
    with torch.no_grad():
        deep.text_prompts.tokens[0] = shallow.text_prompts.tokens[0]
        deep.vision_prompts.tokens[0] = shallow.vision_prompts.tokens[0]
        assert not torch.allclose(
            deep.encode_text(padded["input_ids"]), shallow.encode_text(padded["input_ids"])
        )
        assert not torch.allclose(deep.encode_image(images()), shallow.encode_image(images()))


def test_tokens_after_eos_change_nothing(tiny_clip_dir, padded):
    model = prompted(tiny_clip_dir, text_prompt_length=4)
    ids, mask = padded["input_ids"], padded["attention_mask"]
    noisy = ids.clone()
    noisy[mask == 0] = torch.randint(
        1, 300, (int((mask == 0).sum()),), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(ids, mask), model.encode_text(noisy, mask), atol=1e-6, rtol=1e-6
        )


def test_frozen_encoders_give_every_prompt_a_gradient_and_no_weight_one(tiny_clip_dir, padded):
    model = prompted(tiny_clip_dir, text_prompt_length=3, vision_prompt_length=3).train()
    for parameter in model.encoder_parameters():
        parameter.requires_grad_(False)
    loss = model.encode_text(padded["input_ids"], padded["attention_mask"]).square().sum()
    loss = loss + model.encode_image(images()).square().sum()
    loss.backward()
    for tokens in (model.text_prompts.tokens, model.vision_prompts.tokens):
        per_layer = tokens.grad.abs().flatten(1).sum(1)
        assert (per_layer > 0).all(), per_layer  # every layer's prompts
        assert (tokens.grad.abs().sum(-1) > 0).all()  # every token
    assert all(p.grad is None for p in model.encoder_parameters())


def test_gradient_checkpointing_keeps_prompt_gradients(tiny_clip_dir, padded):
    def grads(checkpointing):
        model = prompted(tiny_clip_dir, text_prompt_length=2, vision_prompt_length=2).train()
        if checkpointing:
            model.set_gradient_checkpointing(True)
            assert model.clip_model.text_model.encoder.layers[0].gradient_checkpointing
        model.clip_model.requires_grad_(False)
        loss = model.encode_text(padded["input_ids"]).sum() + model.encode_image(images()).sum()
        loss.backward()
        return model.text_prompts.tokens.grad, model.vision_prompts.tokens.grad

    for plain, checkpointed in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(plain, checkpointed, atol=1e-6, rtol=1e-5)


def test_parameter_groups_partition_the_model_but_the_unused_logit_scale(tiny_clip_dir):
    model = prompted(tiny_clip_dir)
    prompts = {id(p) for p in model.prompt_parameters()}
    encoder = {id(p) for p in model.encoder_parameters()}
    logit_scale = model.clip_model.logit_scale
    assert prompts == {id(model.text_prompts.tokens), id(model.vision_prompts.tokens)}
    assert not prompts & encoder
    assert prompts | encoder | {id(logit_scale)} == {id(p) for p in model.parameters()}
    assert id(logit_scale) not in encoder and not logit_scale.requires_grad  # fixed temperature instead
    assert id(model.clip_model.text_projection.weight) in encoder


def test_state_dicts_from_before_the_rename_still_load(tiny_clip_dir):
    """Checkpoints of earlier versions name the inner CLIPModel `clip`, not `clip_model`."""
    model = prompted(tiny_clip_dir, text_prompt_length=2, vision_prompt_length=2)
    legacy = {k.replace("clip_model.", "clip.", 1): v + 1 for k, v in model.state_dict().items()}
    assert any(k.startswith("clip.text_model.") for k in legacy)
    fresh = prompted(tiny_clip_dir, text_prompt_length=2, vision_prompt_length=2)
    fresh.load_state_dict(legacy)  # strict: every key found
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, legacy[name.replace("clip_model.", "clip.", 1)], msg=name)


def test_prompt_shapes_follow_lengths_and_depths(tiny_clip_dir):
    model = prompted(tiny_clip_dir, text_prompt_length=5, vision_prompt_length=0, text_prompt_depth=1)
    assert model.text_prompts.tokens.shape == (1, 5, 32)
    assert model.vision_prompts.tokens is None
    assert list(model.prompt_parameters()) == [model.text_prompts.tokens]
    with pytest.raises(ValueError, match="vision_prompt_depth must be between 1 and the number of layers"):
        prompted(tiny_clip_dir, vision_prompt_depth=3)
    with pytest.raises(ValueError, match="prompt length must be >= 0"):
        prompted(tiny_clip_dir, text_prompt_length=-1)
    with pytest.raises(TypeError, match="clip must be a hub name"):
        PromptedCLIP(torch.nn.Linear(2, 2))


def test_state_dict_round_trip_reproduces_features(tiny_clip_dir, padded):
    model = prompted(tiny_clip_dir, image_size=(96, 32))
    with torch.no_grad():
        model.text_prompts.tokens.add_(0.5)
        model.clip_model.text_projection.weight.mul_(1.5)
    other = prompted(tiny_clip_dir, image_size=(96, 32))
    other.load_state_dict(model.state_dict())
    pixels = images(96, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            other.encode_text(padded["input_ids"]), model.encode_text(padded["input_ids"])
        )
        torch.testing.assert_close(other.encode_image(pixels), model.encode_image(pixels))


def test_loads_from_a_saved_directory(tiny_clip_dir, padded):
    model = PromptedCLIP(
        str(tiny_clip_dir), text_prompt_length=0, vision_prompt_length=0, image_size=None
    ).eval()
    reference = load_clip(tiny_clip_dir, "sdpa")
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(padded["input_ids"]),
            reference.get_text_features(input_ids=padded["input_ids"]).pooler_output,
        )
    eager = PromptedCLIP(tiny_clip_dir, attn_implementation="eager")
    assert eager.clip_model.config._attn_implementation == "eager"
    assert eager.image_size == (384, 128)
    assert eager.embed_dim == 32


def test_the_transformers_interfaces_of_the_layer_loop_are_there():
    """The two version-fragile calls of PromptedCLIP (see `_causal_mask`, `_run_layer`)."""
    import inspect

    from transformers.masking_utils import create_causal_mask
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    mask_parameters = inspect.signature(create_causal_mask).parameters
    assert {"config", "inputs_embeds", "attention_mask", "cache"} <= set(mask_parameters), (
        "transformers changed create_causal_mask: update promptdecouple.model.prompted_clip._causal_mask"
    )
    layer_parameters = list(inspect.signature(CLIPEncoderLayer.forward).parameters)
    assert layer_parameters[:3] == ["self", "hidden_states", "attention_mask"], (
        "transformers changed CLIPEncoderLayer.forward: update promptdecouple.model.prompted_clip._run_layer"
    )
    assert any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in inspect.signature(CLIPEncoderLayer.forward).parameters.values()
    )
