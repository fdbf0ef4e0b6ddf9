"""Describing a person in words, as the datasets' annotators do: varied wording, order and length."""

from __future__ import annotations

import numpy as np

from promptdecouple.data.synthetic.people import Person

_ARTICLE = ("a", "the", "this")
_NOUNS = {
    "man": ("man", "man", "guy", "male", "person", "pedestrian", "young man"),
    "woman": ("woman", "woman", "lady", "female", "girl", "person", "pedestrian", "young woman"),
}
_PRONOUNS = {"man": ("he", "his"), "woman": ("she", "her")}
_BUILD = {"slim": ("slim", "thin"), "medium": ("",), "heavy": ("heavy", "large")}
_UPPER_NOUNS = {
    "t-shirt": ("t-shirt", "tshirt", "shirt with short sleeves", "top with short sleeves", "shirt"),
    "long-sleeved": ("shirt with long sleeves", "sweater", "top with long sleeves"),
    "jacket": ("jacket", "jacket with a zipper"),
    "coat": ("coat", "long coat"),
    "sleeveless": ("sleeveless top", "vest", "tank top"),
    "dress": ("dress",),
}
_PATTERN_ADJ = {
    "plain": ("", "plain", "solid"),
    "striped": ("striped",),
    "checked": ("plaid", "checked"),
    "dotted": ("dotted",),
    "logo": ("",),
}
_PATTERN_WITH = {
    "striped": ("with {c} stripes", "with {c} stripes on the front"),
    "checked": ("with a {c} plaid print", "with a {c} checked print"),
    "dotted": ("with a {c} dotted print",),
    "logo": ("with a {c} logo", "with a {c} logo on the front", "with a {c} print on the front"),
}
_LOWER_NOUNS = {
    "pants": ("pants", "trousers", "jeans", "long pants"),
    "shorts": ("shorts", "short pants"),
    "skirt": ("skirt", "short skirt"),
}
_COLOUR_OF = ("is", "appears", "looks")
_WEAR = ("is wearing", "wears", "has on", "is in")
_CARRY = ("is carrying", "carries", "has")
_VIEWS = {
    "front": ("walking toward the camera", "walking towards the camera", "looking at the camera"),
    "back": ("walking away from the camera", "standing with {his} back to the camera"),
    "left": ("walking to the left", "walking to the left side", "walking left"),
    "right": ("walking to the right", "walking to the right side", "walking right"),
}


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def write_caption(person: Person, view: str, rng: np.random.Generator) -> str:
    """One description of `person` in a photo seen from `view`, worded, ordered and sized at random."""
    p = person
    he, his = _PRONOUNS[p.gender]
    colour_word = {"gray": _pick(rng, ("gray", "grey"))}

    def c(name: str) -> str:
        return colour_word.get(name, name)

    # the upper garment, in one of several phrasings
    noun = _pick(rng, _UPPER_NOUNS[p.upper_type])
    adjective = _pick(rng, _PATTERN_ADJ[p.pattern])
    if p.pattern in _PATTERN_WITH and (not adjective or rng.random() < 0.5):
        upper = f"{c(p.upper_colour)} {noun} " + _pick(rng, _PATTERN_WITH[p.pattern]).format(
            c=c(p.pattern_colour)
        )
    else:
        upper = " ".join(w for w in (c(p.upper_colour), adjective, noun) if w)
    upper = _a(upper)
    lower_noun = _pick(rng, _LOWER_NOUNS[p.lower_type])
    if p.upper_type == "dress":
        lower = None
    elif p.lower_type == "skirt":
        lower = _a(f"{c(p.lower_colour)} {lower_noun}")
    else:
        lower = _pick(rng, ("", "a pair of ")) + f"{c(p.lower_colour)} {lower_noun}"
    shoes = _pick(rng, ("", "a pair of ")) + f"{c(p.shoes_colour)} {p.shoes_type}"

    if p.hair_style == "bald":
        hair = None
    else:
        hair = {
            "short": f"short {c(p.hair_colour)} hair",
            "long": _pick(rng, (f"long {c(p.hair_colour)} hair", f"{c(p.hair_colour)} shoulder-length hair")),
            "ponytail": _pick(
                rng, (f"{c(p.hair_colour)} hair tied in a ponytail", f"a {c(p.hair_colour)} ponytail")
            ),
            "bun": f"{c(p.hair_colour)} hair in a bun",
        }[p.hair_style]
    bag = None
    if p.bag == "backpack":
        bag = _pick(rng, (_a(f"{c(p.bag_colour)} backpack"), _a(f"{c(p.bag_colour)} bag on {his} back")))
    elif p.bag == "handbag":
        bag = _pick(rng, (_a(f"{c(p.bag_colour)} handbag"), _a(f"{c(p.bag_colour)} bag in {his} hand")))
    elif p.bag == "shoulder bag":
        bag = _pick(
            rng, (_a(f"{c(p.bag_colour)} shoulder bag"), _a(f"{c(p.bag_colour)} bag over {his} shoulder"))
        )
    hat = _a(f"{c(p.hat_colour)} {p.hat}") if p.hat else None

    long = rng.random() < 0.3
    build = _pick(rng, _BUILD[p.build]) if rng.random() < (0.8 if long else 0.3) else ""
    subject = " ".join(w for w in (_pick(rng, _ARTICLE), build, _pick(rng, _NOUNS[p.gender])) if w)
    if subject.startswith("a ") and subject[2:3] in "aeiou":
        subject = "an " + subject[2:]

    def keep(probability: float) -> bool:
        return long or rng.random() < probability

    clothing = [upper] + ([lower] if lower else []) + ([shoes] if keep(0.5) else [])
    extras: list[str] = []
    if hair and keep(0.6):
        extras.append(f"has {hair}")
    if p.hair_style == "bald" and keep(0.6):
        extras.append("is bald")
    if hat and keep(0.85):
        extras.append(f"{_pick(rng, _WEAR)} {hat}")
    if bag and keep(0.85):
        extras.append(f"{_pick(rng, _CARRY)} {bag}")
    if p.glasses and view != "back" and keep(0.6):
        extras.append(f"{_pick(rng, _WEAR)} {_pick(rng, ('glasses', 'sunglasses'))}")
    view_phrase = _pick(rng, _VIEWS[view]).format(his=his) if keep(0.35) else None
    rng.shuffle(extras)

    style = int(rng.integers(3))
    sentences: list[str] = []
    if style == 0:  # "A woman in a red t-shirt and blue jeans, carrying ..."
        head = f"{subject} in {_join(clothing)}"
        if view_phrase:
            head += f" is {view_phrase}"
        sentences.append(head)
        sentences += [f"{he} {extra}" for extra in extras]
    elif style == 1:  # "The man is wearing ..., and he has ..."
        sentences.append(f"{subject} {_pick(rng, _WEAR)} {_join(clothing)}")
        if view_phrase:
            sentences.append(f"{he} is {view_phrase}")
        if extras:
            sentences.append(f"{he} {_join(extras)}")
    else:  # attributes first, clothing later
        first = extras[0] if extras else f"{_pick(rng, _WEAR)} {clothing[0]}"
        sentences.append(f"{subject} {first}")
        rest = extras[1:] if extras else []
        wear = clothing if extras else clothing[1:]
        if wear:
            sentences.append(f"{he} {_pick(rng, _WEAR)} {_join(wear)}")
        sentences += [f"{he} {extra}" for extra in rest]
        if view_phrase:
            sentences.append(f"{he} is {view_phrase}")
    if long:
        details = []
        if p.upper_type in ("long-sleeved", "jacket", "coat"):
            details.append(f"the sleeves of {his} {noun} are long")
        if p.upper_type == "coat":
            details.append(f"the coat is long and {_pick(rng, _COLOUR_OF)} {c(p.upper_colour)}")
        if p.lower_type == "pants":
            details.append(f"{his} {lower_noun} are long and {c(p.lower_colour)}")
        if p.lower_type in ("shorts", "skirt") and p.upper_type != "dress":
            verb = "is" if p.lower_type == "skirt" else "are"
            details.append(f"the {c(p.lower_colour)} {lower_noun} {verb} knee length")
        if p.pattern == "striped":
            details.append(f"the stripes on {his} top are {c(p.pattern_colour)}")
        if details:
            sentences.append(_pick(rng, details))
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]
