"""A small, randomly initialised CLIP and a CLIP-style tokenizer, saved like a hub checkpoint.

Real CLIP weights cannot be downloaded everywhere (tests, air-gapped demos). `write_random_clip`
writes a directory that `CLIPModel.from_pretrained` and `AutoTokenizer.from_pretrained` load
offline, so every code path that takes a hub name also runs on it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Words that pedestrian descriptions use; each becomes one token. Anything else still tokenises,
# into byte-level pieces, exactly as CLIP's BPE does for rare words.
DESCRIPTION_WORDS = """
a an the and or with without of in on at to from by for is are was were has have wearing wears
wore carrying carries holding holds walking walks standing stands looking who that this his her
their its he she they man woman men women person people lady girl boy guy male female young old
adult child teenager pedestrian tall short slim thin heavy medium build average large small long
hair black white red blue green yellow orange purple pink brown gray grey dark light navy beige
khaki shirt t-shirt tshirt top jacket coat sweater hoodie vest blouse dress skirt shorts pants
trousers jeans leggings shoes sneakers boots sandals heels socks hat cap helmet hood glasses
sunglasses mask scarf bag backpack handbag purse shoulder satchel suitcase umbrella bottle phone
striped stripes plaid checked dotted patterned plain solid logo print sleeve sleeves sleeveless
short-sleeved long-sleeved sleeved collar zipper buttons belt waist knee length ankle pair also appears
seems looks has her hand hands arm arms left right side back front over under around behind
ponytail bun curly straight bald shoulder-length length tied loose wavy camera away toward towards street
road sidewalk colored coloured bright pale deep jeans tank denim leather cotton wool image picture
photo
"""


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2/CLIP byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def build_clip_tokenizer(words: str | list[str] = DESCRIPTION_WORDS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer (lower-casing, start/end tokens) whose vocabulary is `words` plus bytes.

    The vocabulary is laid out as CLIP's: 256 byte symbols, the same with the end-of-word marker,
    the merges, then the start and end tokens last.
    """
    if isinstance(words, str):
        words = words.split()
    byte_symbols = list(_byte_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols]
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        symbols = [_byte_to_unicode()[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        # Add merges until BPE, replaying every merge so far, turns the word into one token.
        while len(pieces := _apply_bpe(symbols, ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            vocab_list.append(pieces[0] + pieces[1])
    merges = list(ranks)
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding as CLIP's tokenizer applies it: merge the lowest-ranked pair until none applies."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [
            (ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:], strict=False))
        ]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def write_random_clip(
    directory: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    image_size: int = 64,
    patch_size: int = 16,
    projection_dim: int | None = None,
    max_text_length: int = 77,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised `CLIPModel` and a matching tokenizer into `directory`.

    Both towers share `hidden_size`, `num_layers` and `num_heads`; the vision tower is square with
    side `image_size` (as a pretrained CLIP is), so `PromptedCLIP` can resize its position table.
    Returns the directory, loadable by `CLIPModel.from_pretrained` and `AutoTokenizer.from_pretrained`.
    """
    directory = Path(directory)
    tokenizer = build_clip_tokenizer()
    tower = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
    )
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=max_text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim or hidden_size,
    )
    return _save_random_clip(directory, config, tokenizer, seed)


def vit_b16_config(
    bos_token_id: int = 49_406,
    eos_token_id: int = 49_407,
    pad_token_id: int = 49_407,
    max_text_length: int = 77,
) -> CLIPConfig:
    """The shape of `openai/clip-vit-base-patch16`: text 12 x 512 (8 heads, 49,408 tokens), vision 12 x 768
    (12 heads, patch 16, side 224), projection 512. For benchmarks at the real model's size, offline."""
    return CLIPConfig(
        text_config=dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            vocab_size=49_408,
            max_position_embeddings=max_text_length,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
        ),
        projection_dim=512,
    )


def write_vit_b16_clip(directory: str | Path, seed: int = 0) -> Path:
    """A random ViT-B/16-shaped `CLIPModel` (`vit_b16_config`) and the project's tokenizer, in `directory`.

    The tokenizer's ids all fall inside the 49,408-token table; its start and end tokens are the
    config's, so pooling finds the end token as with the real model.
    """
    directory = Path(directory)
    tokenizer = build_clip_tokenizer()
    config = vit_b16_config(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return _save_random_clip(directory, config, tokenizer, seed)


def _save_random_clip(directory: Path, config: CLIPConfig, tokenizer: CLIPTokenizer, seed: int) -> Path:
    """A `CLIPModel(config)` initialised from `seed` (the global RNG left as it was), saved with `tokenizer`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
