"""PromptDecoupleModule: construction errors, stages, optimizer groups, schedule and steps."""

import math

import pytest
import torch

from promptdecouple.module import PromptDecoupleModule, WarmupCosine


def make(tiny_clip_dir, **kwargs):
    kwargs.setdefault("num_classes", 5)
    kwargs.setdefault("image_size", (64, 32))
    return PromptDecoupleModule(str(tiny_clip_dir), **kwargs)


def batch(module, size=4, length=16, num_classes=5):
    vocab_size = module.clip.clip_model.config.text_config.vocab_size  # start and end tokens come last
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 300, (size, length), generator=generator)
    input_ids[:, 0], input_ids[:, 8:] = vocab_size - 2, vocab_size - 1  # start; end token and its padding
    mask = torch.zeros_like(input_ids)
    mask[:, :9] = 1
    return {
        "pixel_values": torch.randn(size, 3, 64, 32, generator=generator),
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": torch.arange(size) % num_classes,
        "index": torch.arange(size),
    }


def trainable_names(module):
    return {name for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stage1_losses": ()}, "stage1_losses is empty"),
        ({"stage2_losses": ("sdm", "triplet")}, r"unknown loss name.*'sdm', 'itc', 'id'"),
        ({"num_classes": None}, "the 'id' loss needs num_classes"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"optimizer": "sgd"}, "optimizer must be 'adam' or 'adamw'"),
        ({"contrastive_scope": "batch"}, "contrastive_scope must be 'global' or 'local'"),
        ({"prompt_lr": -1.0}, "prompt_lr must be >= 0"),
    ],
)
def test_bad_configuration_fails_at_construction(tiny_clip_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(tiny_clip_dir, **kwargs)


def test_no_id_loss_needs_no_classes(tiny_clip_dir):
    module = make(tiny_clip_dir, num_classes=None, stage2_losses=("sdm", "itc"))
    assert module.classifier is None


def test_stages_set_the_trainable_set(tiny_clip_dir):
    module = make(tiny_clip_dir)
    assert module.stage == 1
    assert trainable_names(module) == {"clip.text_prompts.tokens", "clip.vision_prompts.tokens"}
    module.set_stage(2)
    names = trainable_names(module)
    assert "clip.text_prompts.tokens" not in names and "clip.vision_prompts.tokens" not in names
    assert {"classifier.weight", "classifier.bias"} <= names
    assert "clip.clip_model.logit_scale" not in names  # the temperature is fixed
    expected = {n for n, _ in module.named_parameters()} - {
        "clip.text_prompts.tokens",
        "clip.vision_prompts.tokens",
        "clip.clip_model.logit_scale",
    }
    assert names == expected
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        module.set_stage(3)


def test_id_in_stage_one_trains_the_head_then(tiny_clip_dir):
    module = make(tiny_clip_dir, stage1_losses=("itc", "id"))
    assert {"classifier.weight", "classifier.bias"} <= trainable_names(module)


def test_training_step_in_stage_one_touches_only_prompts(tiny_clip_dir):
    module = make(tiny_clip_dir)
    loss = module.training_step(batch(module), 0)
    loss.backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    assert with_grad == {"clip.text_prompts.tokens", "clip.vision_prompts.tokens"}
    assert torch.isfinite(loss)


def test_training_step_in_stage_two_sums_the_losses(tiny_clip_dir):
    from promptdecouple.objectives import id_loss, sdm_loss

    module = make(tiny_clip_dir, id_loss_weight=0.5)
    module.set_stage(2)
    data = batch(module)
    loss = module.training_step(data, 0)
    with torch.no_grad():
        image = module.clip.encode_image(data["pixel_values"])
        text = module.clip.encode_text(data["input_ids"], data["attention_mask"])
        expected = sdm_loss(image, text, data["labels"], 0.02) + 0.5 * id_loss(
            module.classifier(image), module.classifier(text), data["labels"]
        )
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert module.clip.text_prompts.tokens.grad is None
    assert module.clip.clip_model.vision_model.encoder.layers[0].mlp.fc1.weight.grad is not None
    assert module.classifier.weight.grad is not None


def test_forward_returns_unit_features(tiny_clip_dir):
    module = make(tiny_clip_dir).eval()
    data = batch(module)
    with torch.no_grad():
        features = module(data["pixel_values"], data["input_ids"], data["attention_mask"])
    for value in features.values():
        torch.testing.assert_close(value.norm(dim=-1), torch.ones(4))


def test_stage_two_groups_follow_the_recipe(tiny_clip_dir):
    module = make(tiny_clip_dir, encoder_lr=1e-5, head_lr=5e-5, bias_lr_factor=2.0, weight_decay=4e-5)
    module.set_stage(2)
    groups = {g["name"]: g for g in module.parameter_groups()}
    assert set(groups) == {"head", "weights", "biases"}
    assert groups["biases"]["lr"] == pytest.approx(2e-5) and groups["biases"]["weight_decay"] == 0.0
    assert groups["weights"]["lr"] == 1e-5 and groups["weights"]["weight_decay"] == 4e-5
    assert groups["head"]["lr"] == 5e-5
    assert all(p.ndim == 1 for p in groups["biases"]["params"])
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == len([p for p in module.parameters() if p.requires_grad])
    module.set_stage(1)
    groups = module.parameter_groups()
    assert [g["name"] for g in groups] == ["prompts"] and len(groups[0]["params"]) == 2


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(warmup_steps=10, total_steps=110, start_factor=0.1, min_factor=0.0)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(5) == pytest.approx(0.55)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5)
    assert schedule(110) == pytest.approx(0.0, abs=1e-12)
    assert schedule(200) == pytest.approx(0.0, abs=1e-12)
    assert WarmupCosine(0, 4, 0.1, 0.2)(2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_uint8_batches_are_normalised_on_the_device(tiny_clip_dir):
    from promptdecouple.data.transforms import normalize_pixels

    module = make(tiny_clip_dir).eval()
    pixels = torch.randint(
        0, 256, (2, 3, 64, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        from_uint8 = module(pixel_values=pixels)["image"]
        from_float = module(pixel_values=normalize_pixels(pixels))["image"]
    torch.testing.assert_close(from_uint8, from_float, atol=0, rtol=0)
    assert not torch.allclose(from_uint8, module(pixel_values=pixels.float())["image"])


# ------------------------------------------------------------------------------------ inference


@pytest.fixture(scope="module")
def trained(tiny_clip_dir, tmp_path_factory):
    """A tiny module fitted on a small synthetic training split, saved as a checkpoint."""
    import lightning as L

    from promptdecouple import StageSwitch, TIReIDDataModule
    from promptdecouple.data import write_synthetic

    root = tmp_path_factory.mktemp("rstp")
    write_synthetic(root, "rstpreid", num_identities=10, images_per_identity=2, image_size=(64, 32), seed=1)
    data = TIReIDDataModule(
        "rstpreid", root, str(tiny_clip_dir), image_size=(64, 32), text_length=32, batch_size=8, num_workers=0,
        augment=False,
    )  # fmt: skip
    module = make(
        tiny_clip_dir,
        num_classes=data.num_classes,
        text_length=32,
        stage2_losses=("itc",),
        temperature=0.1,
        encoder_lr=2e-3,
        stage2_warmup_epochs=0,
        adam_eps=1e-8,
    )
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=25, callbacks=[StageSwitch(0)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path, data


def test_a_caption_ranks_its_identity_first_after_training(trained):
    path, data = trained
    module = PromptDecoupleModule.load_from_checkpoint(path)
    assert module.stage == 2
    train = data.split("train")
    images = train.drop_duplicates("image_path")
    captions = train.drop_duplicates("image_path")  # one caption per image, all identities
    result = module.search(list(captions["caption"]), list(images["image_path"]), k=2)
    top_pids = images["pid"].to_numpy()[result.indices[:, 0].numpy()]
    hit_rate = (top_pids == captions["pid"].to_numpy()).mean()
    assert hit_rate >= 0.6, hit_rate  # chance is 0.1
    assert (result.scores[:, 0] >= result.scores[:, 1]).all()


def test_a_module_in_bfloat16_encodes_and_searches_as_in_float32(trained):
    path, data = trained
    full = PromptDecoupleModule.load_from_checkpoint(path)
    half = PromptDecoupleModule.load_from_checkpoint(path).to(torch.bfloat16)
    images = data.split("train").drop_duplicates("image_path")
    captions, paths = list(images["caption"]), list(images["image_path"])
    for encode, inputs in (
        (PromptDecoupleModule.encode_texts, captions),
        (PromptDecoupleModule.encode_images, paths),
    ):
        reference, low = encode(full, inputs), encode(half, inputs)
        assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
        agreement = torch.nn.functional.cosine_similarity(reference, low.float(), dim=1)
        assert agreement.min() > 0.98, agreement.min()
    reference, low = full.search(captions, paths, k=1), half.search(captions, paths, k=1)
    assert low.scores.dtype == torch.float32  # scored in float32 whatever the features' dtype
    assert (reference.indices == low.indices).float().mean() >= 0.9
    torch.testing.assert_close(low.scores, reference.scores, atol=0.03, rtol=0)


def test_inference_matches_the_evaluation_loaders(trained):
    path, data = trained
    module = PromptDecoupleModule.load_from_checkpoint(path)
    data.setup("validate")
    queries, gallery = data.eval_set("val")
    query_loader, gallery_loader = data.val_dataloader()
    with torch.no_grad():
        loader_text = torch.cat([module._features(b) for b in query_loader])
        loader_images = torch.cat([module._features(b) for b in gallery_loader])
    torch.testing.assert_close(module.encode_texts(list(queries["caption"]), batch_size=3), loader_text)
    torch.testing.assert_close(module.encode_images(list(gallery["image_path"]), batch_size=3), loader_images)
    from PIL import Image

    pil = [Image.open(p) for p in gallery["image_path"][:2]]
    torch.testing.assert_close(module.encode_images(pil), loader_images[:2])
    assert module.training  # inference leaves the mode as it found it


def test_search_validates_its_inputs(trained):
    path, data = trained
    module = PromptDecoupleModule.load_from_checkpoint(path)
    gallery = torch.nn.functional.normalize(torch.randn(3, module.clip.embed_dim), dim=-1)
    with pytest.raises(ValueError, match=r"k must be between 1 and the gallery size \(3\)"):
        module.search(["a man"], gallery, k=4)
    with pytest.raises(TypeError, match="texts must be a list"):
        module.encode_texts("a man in a red coat")
    with pytest.raises(TypeError, match=r"images\[1\] has type int"):
        module.encode_images(["a.jpg", 3])
    result = module.search(gallery[:2], gallery, k=3)
    assert result.indices[:, 0].tolist() == [0, 1]
    torch.testing.assert_close(result.scores[:, 0], torch.ones(2))


def test_a_stage_with_nothing_to_train_fails_clearly(tiny_clip_dir):
    module = make(tiny_clip_dir, text_prompt_length=0, vision_prompt_length=0)
    with pytest.raises(ValueError, match="stage 1 has nothing to train"):
        module.configure_optimizers()


def test_path_arguments_give_a_loadable_checkpoint(tiny_clip_dir, tmp_path):
    import lightning as L

    module = PromptDecoupleModule(tiny_clip_dir, num_classes=3, image_size=(64, 32))  # a Path, not a str
    trainer = L.Trainer(accelerator="cpu", logger=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = PromptDecoupleModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.hparams.clip == str(tiny_clip_dir) == loaded.hparams.tokenizer
