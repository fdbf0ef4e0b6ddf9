"""The people of the synthetic twin: the visible attributes that define an identity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (236, 236, 230),
    "gray": (128, 128, 130),
    "red": (200, 32, 38),
    "blue": (38, 76, 196),
    "green": (36, 140, 62),
    "yellow": (236, 206, 40),
    "orange": (238, 122, 24),
    "purple": (122, 48, 152),
    "pink": (240, 142, 184),
    "brown": (120, 72, 36),
}
HAIR_COLOURS = {"black": (20, 18, 18), "brown": (92, 58, 30), "gray": (150, 150, 150)}
SKIN_TONES = ((236, 200, 170), (214, 170, 132), (176, 128, 90), (120, 82, 56))
UPPER_TYPES = ("t-shirt", "long-sleeved", "jacket", "coat", "sleeveless")
PATTERNS = ("plain", "striped", "checked", "dotted", "logo")
LOWER_TYPES = ("pants", "shorts", "skirt")
BAGS = (None, "backpack", "handbag", "shoulder bag")
HATS = (None, "cap", "hat")


@dataclass(frozen=True)
class Person:
    """The attributes that define one synthetic identity."""

    gender: str  # "man" | "woman"
    build: str  # "slim" | "medium" | "heavy"
    skin: tuple[int, int, int]
    hair_colour: str
    hair_style: str  # "short" | "long" | "ponytail" | "bun" | "bald"
    upper_type: str
    upper_colour: str
    pattern: str
    pattern_colour: str
    lower_type: str
    lower_colour: str
    shoes_type: str  # "shoes" | "sneakers" | "boots"
    shoes_colour: str
    bag: str | None
    bag_colour: str
    bag_side: int  # -1 left, +1 right
    hat: str | None
    hat_colour: str
    glasses: bool

    @property
    def signature(self) -> tuple:
        """What stands out at a glance; unique within a synthetic dataset when possible."""
        return (self.upper_colour, self.pattern, self.lower_colour, self.bag, self.hat)


def draw_person_attributes(rng: np.random.Generator) -> Person:
    """Draw one identity's attributes."""
    names = list(COLOURS)

    def colour(exclude: tuple[str, ...] = ()) -> str:
        return str(rng.choice([c for c in names if c not in exclude]))

    gender = "woman" if rng.random() < 0.5 else "man"
    upper_colour = colour()
    upper_type = str(rng.choice(UPPER_TYPES))
    if gender == "woman" and rng.random() < 0.12:
        upper_type = "dress"
    lower_type = "pants" if gender == "man" else str(rng.choice(LOWER_TYPES, p=(0.5, 0.2, 0.3)))
    if gender == "man" and rng.random() < 0.25:
        lower_type = "shorts"
    lower_colour = upper_colour if upper_type == "dress" else colour(exclude=(upper_colour,))
    if upper_type == "dress":
        lower_type = "skirt"
    hair_styles = ("short", "long", "ponytail", "bun") if gender == "woman" else ("short", "short", "bald")
    hair_style = str(rng.choice(hair_styles))
    if gender == "woman" and hair_style == "short" and rng.random() < 0.5:
        hair_style = "long"
    return Person(
        gender=gender,
        build=str(rng.choice(("slim", "medium", "heavy"), p=(0.35, 0.4, 0.25))),
        skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        hair_colour=str(rng.choice(list(HAIR_COLOURS), p=(0.6, 0.3, 0.1))),
        hair_style=hair_style,
        upper_type=upper_type,
        upper_colour=upper_colour,
        pattern=str(rng.choice(PATTERNS, p=(0.4, 0.2, 0.15, 0.1, 0.15))),
        pattern_colour=colour(exclude=(upper_colour,)),
        lower_type=lower_type,
        lower_colour=lower_colour,
        shoes_type=str(rng.choice(("shoes", "sneakers", "boots"))),
        shoes_colour=str(rng.choice(("black", "white", "brown", "gray", "red", "blue"))),
        bag=BAGS[int(rng.choice(len(BAGS), p=(0.3, 0.3, 0.2, 0.2)))],
        bag_colour=colour(),
        bag_side=int(rng.choice((-1, 1))),
        hat=HATS[int(rng.choice(len(HATS), p=(0.7, 0.2, 0.1)))],
        hat_colour=colour(),
        glasses=bool(rng.random() < 0.2),
    )
