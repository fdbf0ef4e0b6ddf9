"""The random CLIP and the CLIP-style tokenizer written for tests and the demo."""

from transformers import AutoTokenizer, CLIPModel

from promptdecouple.model.random_clip import DESCRIPTION_WORDS, build_clip_tokenizer


def test_every_description_word_is_one_token():
    tokenizer = build_clip_tokenizer()
    for word in dict.fromkeys(DESCRIPTION_WORDS.split()):
        pieces = [p for p in word.split("-")]
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 2 * len(pieces) - 1, (word, tokenizer.convert_ids_to_tokens(ids))


def test_tokenizer_behaves_like_clips(tiny_clip_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    ids = tokenizer(["A Woman in a RED coat"])["input_ids"][0]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "a</w>", "woman</w>", "in</w>", "a</w>", "red</w>", "coat</w>", "<|endoftext|>"
    ]  # fmt: skip
    assert ids == tokenizer(["a woman in a red coat"])["input_ids"][0]  # lower-cased
    # unknown words still tokenise, into byte-level pieces
    assert tokenizer.convert_ids_to_tokens(tokenizer("qux", add_special_tokens=False)["input_ids"]) == [
        "q",
        "u",
        "x</w>",
    ]
    long = tokenizer(["red " * 200], padding="max_length", max_length=77, truncation=True)
    assert len(long["input_ids"][0]) == 77 and long["input_ids"][0][-1] == tokenizer.eos_token_id
    short = tokenizer(["red coat"], padding="max_length", max_length=10, truncation=True)
    assert short["input_ids"][0][3:] == [tokenizer.eos_token_id] * 7
    assert short["attention_mask"][0] == [1, 1, 1, 1] + [0] * 6


def test_saved_model_matches_the_tokenizer(tiny_clip_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    model = CLIPModel.from_pretrained(tiny_clip_dir)
    text = model.config.text_config
    assert text.vocab_size == len(tokenizer)
    assert (text.bos_token_id, text.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert tokenizer.eos_token_id == len(tokenizer) - 1  # special tokens last, as in CLIP
    assert model.config.vision_config.image_size == 64
