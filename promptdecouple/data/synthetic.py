"""A synthetic twin of CUHK-PEDES, ICFG-PEDES and RSTPReid: drawn pedestrians, described in words.

Real benchmarks cannot be downloaded everywhere (tests, CI, demos). `write_synthetic` writes a
dataset in exactly the download layout of one of them, annotation JSON and `imgs/` included, so the
whole pipeline runs on it unchanged. Each identity is a set of visible attributes (clothing colours,
garment types and patterns, bag, hat, hair, glasses, build, shoes); each image of that identity
varies what does not define it (view, pose, position, scale, background, lighting, blur, noise,
compression); each caption names the attributes in varied wording, order and length, plus what is
particular to its image (the view). A small model can therefore learn to match them, and no two
identities of a dataset share the attributes that stand out most.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from promptdecouple.data.annotations import IMAGE_DIR, dataset_layout

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
SPLIT_FRACTIONS = {
    "cuhk-pedes": (0.8, 0.1, 0.1),
    "icfg-pedes": (0.75, 0.0, 0.25),
    "rstpreid": (0.8, 0.1, 0.1),
}
CUHK_FOLDERS = ("CUHK01", "CUHK03", "Market", "cam_a", "cam_b", "test_query", "train_query")
# ICFG-PEDES keeps MSMT17's image folders, which are MSMT17's split, not ICFG's: about two thirds of
# the ICFG training entries point under imgs/test/. The twin draws each identity's folder likewise.
ICFG_MSMT17_TEST_SHARE = 0.7


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


# ---------------------------------------------------------------- drawing


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in colour)


class _Figure:
    """Draws a person on an ImageDraw, in units of the figure height `fh` from its top-centre."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, fh: float):
        self.draw, self.cx, self.top, self.fh = draw, cx, top, fh

    def x(self, u: float) -> float:
        return self.cx + u * self.fh

    def y(self, v: float) -> float:
        return self.top + v * self.fh

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill, radius: float = 0.0) -> None:
        box = (self.x(u0), self.y(v0), self.x(u1), self.y(v1))
        if radius > 0:
            self.draw.rounded_rectangle(box, radius=radius * self.fh, fill=fill)
        else:
            self.draw.rectangle(box, fill=fill)

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill) -> None:
        self.draw.ellipse((self.x(u - ru), self.y(v - rv), self.x(u + ru), self.y(v + rv)), fill=fill)

    def limb(
        self, u: float, v: float, length: float, half_width: float, angle: float, fill, start=0.0
    ) -> None:
        """A straight limb hanging from (u, v), rotated by `angle` (radians, + swings forward/right).

        Only the part from fraction `start` to the end is drawn (sleeves over skin and the like)."""
        du, dv = math.sin(angle), math.cos(angle)
        pu, pv = dv * half_width, -du * half_width
        a = (u + du * length * start, v + dv * length * start)
        b = (u + du * length, v + dv * length)
        points = [
            (a[0] - pu, a[1] - pv),
            (a[0] + pu, a[1] + pv),
            (b[0] + pu, b[1] + pv),
            (b[0] - pu, b[1] - pv),
        ]
        self.draw.polygon([(self.x(p), self.y(q)) for p, q in points], fill=fill)

    def line(self, points: list[tuple[float, float]], fill, width: float) -> None:
        self.draw.line(
            [(self.x(u), self.y(v)) for u, v in points], fill=fill, width=max(1, round(width * self.fh))
        )


def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A street-like scene: a wall or sky gradient, some blocks (buildings, windows, cars), the ground."""
    width, height = size
    top = rng.integers(40, 230, 3)
    bottom = np.clip(top + rng.integers(-60, 60, 3), 0, 255)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).copy())
    draw = ImageDraw.Draw(image)
    horizon = int(height * rng.uniform(0.45, 0.8))
    for _ in range(int(rng.integers(2, 9))):
        x0 = int(rng.integers(-width // 2, width))
        y0 = int(rng.integers(0, horizon))
        x1 = x0 + int(rng.integers(width // 8, width))
        y1 = y0 + int(rng.integers(height // 20, height // 2))
        fill = tuple(int(c) for c in rng.integers(30, 220, 3))
        draw.rectangle((x0, y0, x1, min(y1, horizon)), fill=fill)
    ground = tuple(int(c) for c in rng.integers(50, 190, 3))
    draw.rectangle((0, horizon, width, height), fill=ground)
    if rng.random() < 0.5:  # a kerb or road marking
        y = int(rng.integers(horizon, height))
        draw.rectangle((0, y, width, y + max(1, height // 60)), fill=_shade(ground, rng.uniform(0.6, 1.4)))
    return image


def render_person(person: Person, size: tuple[int, int], rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One photo of `person` at `size` (height, width); returns the image and its view."""
    height, width = size
    scale = max(1, math.ceil(256 / height))  # draw small images larger, then downsample (anti-aliasing)
    canvas_size = (width * scale, height * scale)
    image = _background(canvas_size, rng)
    view = str(rng.choice(("front", "back", "left", "right"), p=(0.35, 0.3, 0.175, 0.175)))
    side_view = view in ("left", "right")
    fh = canvas_size[1] * rng.uniform(0.78, 0.94)
    bottom = canvas_size[1] * rng.uniform(0.955, 0.995)
    cx = canvas_size[0] * (0.5 + rng.uniform(-0.07, 0.07))
    draw = ImageDraw.Draw(image)
    f = _Figure(draw, cx, bottom - fh, fh)

    p = person
    tone = rng.uniform(0.9, 1.1)
    skin = _shade(p.skin, tone)
    upper = _shade(COLOURS[p.upper_colour], tone)
    lower = _shade(COLOURS[p.lower_colour], tone)
    hair = _shade(HAIR_COLOURS[p.hair_colour], tone)
    shoes = _shade(COLOURS[p.shoes_colour], tone)
    bag = _shade(COLOURS[p.bag_colour], tone)
    accent = _shade(COLOURS[p.pattern_colour], tone)
    half_torso = {"slim": 0.092, "medium": 0.11, "heavy": 0.132}[p.build] * (
        0.93 if p.gender == "woman" else 1.0
    )
    if side_view:
        half_torso *= 0.62
    arm_width = 0.023 if p.build != "heavy" else 0.027
    leg_width = 0.04 if p.build != "heavy" else 0.047
    stride = rng.uniform(0.05, 0.38)  # walking phase: leg and arm swing (radians)
    facing = -1  # side views are drawn facing left, then mirrored for "right"

    # hair behind the head and shoulders (front and side views)
    if p.hair_style == "long" and view != "back":
        f.rect(-0.068, 0.04, 0.068, 0.25, hair, radius=0.03)
    if p.hair_style == "ponytail" and side_view:
        f.limb(0.045, 0.07, 0.13, 0.018, 0.5, hair)
    # backpack seen from the side, behind the body
    if p.bag == "backpack" and side_view:
        f.rect(half_torso - 0.01, 0.19, half_torso + 0.07, 0.43, bag, radius=0.02)

    # legs and lower garment
    hip_v, leg_length = 0.49, 0.47
    leg_colour = skin if p.lower_type in ("shorts", "skirt") else lower
    if side_view:
        legs = [(0.0, stride * 0.7), (0.0, -stride * 0.7)]
    else:
        spread = stride * 0.12
        legs = [(-0.048, -spread), (0.048, spread)]
    for u, angle in legs:
        f.limb(u, hip_v, leg_length, leg_width, angle, skin)
        if p.lower_type == "pants":
            f.limb(u, hip_v, leg_length * 0.97, leg_width + 0.004, angle, leg_colour)
        elif p.lower_type == "shorts":
            f.limb(u, hip_v, leg_length * 0.42, leg_width + 0.006, angle, lower)
        foot_u = u + math.sin(angle) * leg_length
        foot_v = hip_v + math.cos(angle) * leg_length
        ahead = 0.03 * facing if side_view else 0.0
        f.ellipse(foot_u + ahead, foot_v + 0.008, leg_width + (0.022 if side_view else 0.006), 0.018, shoes)
        if p.shoes_type == "boots":
            f.limb(u, hip_v + leg_length * 0.8, leg_length * 0.2, leg_width + 0.006, angle, shoes)
    if p.lower_type == "skirt":
        flare = 0.05 if not side_view else 0.03
        v0, v1 = 0.47, 0.7
        points = [(-half_torso, v0), (half_torso, v0), (half_torso + flare, v1), (-half_torso - flare, v1)]
        draw.polygon([(f.x(u), f.y(v)) for u, v in points], fill=lower)
    # the coat's skirt
    if p.upper_type == "coat":
        f.rect(-half_torso - 0.006, 0.45, half_torso + 0.006, 0.7, upper, radius=0.01)

    # far arm (side views), torso, pattern
    shoulder_v, arm_length = 0.175, 0.31
    sleeve = {
        "t-shirt": 0.38,
        "long-sleeved": 0.93,
        "jacket": 0.95,
        "coat": 0.95,
        "sleeveless": 0.0,
        "dress": 0.25,
    }
    sleeve_fraction = sleeve[p.upper_type]

    def arm(u: float, angle: float, holds_bag: bool) -> None:
        f.limb(u, shoulder_v, arm_length, arm_width, angle, skin)
        if sleeve_fraction:
            f.limb(u, shoulder_v, arm_length * sleeve_fraction, arm_width + 0.004, angle, upper)
        hand_u = u + math.sin(angle) * arm_length
        hand_v = shoulder_v + math.cos(angle) * arm_length
        f.ellipse(hand_u, hand_v, 0.02, 0.022, skin)
        if p.bag == "handbag" and holds_bag:
            f.line([(hand_u - 0.02, hand_v), (hand_u, hand_v - 0.025), (hand_u + 0.02, hand_v)], bag, 0.008)
            f.rect(hand_u - 0.05, hand_v, hand_u + 0.05, hand_v + 0.085, bag, radius=0.01)

    if side_view:
        arm(0.0, -stride, holds_bag=False)
    torso_bottom = 0.5 if p.upper_type != "dress" else 0.48
    f.rect(-half_torso, shoulder_v - 0.01, half_torso, torso_bottom, upper, radius=0.025)
    if p.upper_type == "dress":
        points = [
            (-half_torso, 0.47),
            (half_torso, 0.47),
            (half_torso + 0.05, 0.7),
            (-half_torso - 0.05, 0.7),
        ]
        draw.polygon([(f.x(u), f.y(v)) for u, v in points], fill=upper)
    _pattern(f, p, half_torso, shoulder_v, torso_bottom, accent, view)
    if p.upper_type in ("jacket", "coat") and view == "front":
        darker = _shade(upper, 0.55)
        f.line([(0.0, shoulder_v), (0.0, 0.7 if p.upper_type == "coat" else torso_bottom)], darker, 0.007)
        if p.upper_type == "coat":
            for v in (0.24, 0.32, 0.4, 0.48, 0.56):
                f.ellipse(0.02, v, 0.008, 0.008, darker)
    if not side_view:
        offset = half_torso + arm_width - 0.004
        arm(-offset, stride * 0.25, holds_bag=p.bag_side < 0)
        arm(offset, -stride * 0.25, holds_bag=p.bag_side > 0)
    else:
        arm(0.0, stride, holds_bag=True)

    # neck, head, hair, hat, glasses
    f.rect(-0.022, 0.12, 0.022, shoulder_v + 0.005, skin)
    head_v, head_r = 0.085, 0.058
    head_u = -0.008 if side_view else 0.0
    f.ellipse(head_u, head_v, head_r * (0.9 if side_view else 0.85), head_r, skin)
    if p.hair_style != "bald":
        if view == "back":
            f.ellipse(0.0, head_v - 0.004, head_r * 0.9, head_r * 1.02, hair)
        elif side_view:
            f.ellipse(0.012, head_v - 0.02, head_r * 0.86, head_r * 0.78, hair)
        else:
            f.ellipse(0.0, head_v - 0.028, head_r * 0.88, head_r * 0.62, hair)
        if p.hair_style == "long" and view == "back":
            f.rect(-0.068, 0.07, 0.068, 0.26, hair, radius=0.03)
        if p.hair_style == "ponytail" and view == "back":
            f.rect(-0.016, 0.08, 0.016, 0.22, hair, radius=0.012)
        if p.hair_style == "bun":
            f.ellipse(0.0 if not side_view else 0.04, head_v - 0.065, 0.028, 0.026, hair)
    hat = _shade(COLOURS[p.hat_colour], tone)
    if p.hat == "cap":
        f.ellipse(head_u, head_v - 0.03, head_r * 0.95, head_r * 0.62, hat)
        if side_view:
            f.rect(head_u - 0.1, head_v - 0.03, head_u, head_v - 0.018, hat)
        elif view == "front":
            f.rect(-0.06, head_v - 0.025, 0.06, head_v - 0.012, hat)
    elif p.hat == "hat":
        f.ellipse(head_u, head_v - 0.035, 0.1, 0.018, hat)
        f.rect(head_u - 0.05, head_v - 0.085, head_u + 0.05, head_v - 0.035, hat, radius=0.015)
    if p.glasses and view != "back":
        glasses = (24, 24, 28)
        if side_view:
            f.rect(head_u - 0.05, head_v - 0.006, head_u - 0.01, head_v + 0.012, glasses)
        else:
            f.rect(-0.045, head_v - 0.006, 0.045, head_v + 0.012, glasses)

    # bags worn on the body
    if p.bag == "backpack" and view == "back":
        f.rect(-half_torso * 0.8, 0.2, half_torso * 0.8, 0.45, bag, radius=0.025)
    elif p.bag == "backpack" and view == "front":
        for u in (-half_torso * 0.55, half_torso * 0.55):
            f.line([(u, shoulder_v), (u, 0.36)], bag, 0.014)
    elif p.bag == "shoulder bag":
        side = p.bag_side if view == "front" else -p.bag_side
        if side_view:
            side = -facing
        f.line([(-side * half_torso * 0.8, shoulder_v), (side * half_torso * 0.9, 0.46)], bag, 0.012)
        f.rect(side * half_torso - 0.045, 0.44, side * half_torso + 0.045, 0.53, bag, radius=0.012)

    if view == "right":
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if scale > 1:
        image = image.resize((width, height), Image.Resampling.BOX)
    return _photograph(image, rng), view


def _pattern(f: _Figure, p: Person, half: float, v0: float, v1: float, colour, view: str) -> None:
    """The upper garment's pattern, inside the torso rectangle."""
    inner = half - 0.012
    if p.pattern == "striped":
        v = v0 + 0.03
        while v < v1 - 0.01:
            f.rect(-inner, v, inner, v + 0.018, colour)
            v += 0.046
    elif p.pattern == "checked":
        v = v0 + 0.03
        while v < v1 - 0.01:
            f.rect(-inner, v, inner, v + 0.01, colour)
            v += 0.05
        u = -inner + 0.02
        while u < inner:
            f.rect(u, v0 + 0.01, u + 0.01, v1 - 0.01, colour)
            u += 0.05
    elif p.pattern == "dotted":
        v = v0 + 0.04
        row = 0
        while v < v1 - 0.02:
            u = -inner + 0.025 + (0.025 if row % 2 else 0.0)
            while u < inner - 0.01:
                f.ellipse(u, v, 0.011, 0.011, colour)
                u += 0.05
            v += 0.045
            row += 1
    elif p.pattern == "logo" and view != "back":
        size = min(0.05, inner * 0.6)
        f.ellipse(0.0, v0 + 0.12, size, size, colour)


def _photograph(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera effects: exposure, colour cast, blur, sensor noise."""
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.4, 1.2)))
    array = np.asarray(image, dtype=np.float32)
    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    noise = rng.standard_normal(array.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 8.0))
    array = array * gain + noise
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- captions

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


# ---------------------------------------------------------------- datasets


def write_synthetic(
    root: str | Path,
    layout: str,
    num_identities: int = 100,
    images_per_identity: int | tuple[int, int] = 4,
    captions_per_image: int = 2,
    seed: int = 0,
    image_size: tuple[int, int] = (384, 128),
    split_fractions: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = False,
) -> Path:
    """Write a synthetic dataset in the download layout of `layout`; returns the annotation file.

    Args:
        root: folder to create (annotation JSON and `imgs/` go inside).
        layout: ``"cuhk-pedes"``, ``"icfg-pedes"`` or ``"rstpreid"``: file names, keys, id numbering
            (CUHK-PEDES 1-based) and image folders follow that dataset.
        num_identities: persons to draw; split by identity into train / val / test.
        images_per_identity: photos per person, or a (min, max) range drawn per person.
        captions_per_image: descriptions per photo.
        seed: everything (attributes, photos, captions, splits) is a function of it.
        image_size: (height, width) of the photos; the real datasets' model input is 384x128.
        split_fractions: (train, val, test) shares of identities; default like the real dataset
            (ICFG-PEDES has no val split).
        overwrite: replace an existing annotation file in `root` (refused otherwise).
        progress: show a progress bar, or a callable receiving (images written, total).
    """
    spec = dataset_layout(layout)
    root = Path(root).expanduser()
    fractions = split_fractions or SPLIT_FRACTIONS[spec.name]
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be three non-negative shares summing to 1, got {fractions}")
    if "val" not in spec.splits and fractions[1] > 0:
        raise ValueError(f"{spec.title} has no val split; split_fractions[1] must be 0")
    if num_identities < 2:
        raise ValueError(f"num_identities must be >= 2, got {num_identities}")
    low, high = (
        (images_per_identity, images_per_identity)
        if isinstance(images_per_identity, int)
        else images_per_identity
    )
    if not 1 <= low <= high:
        raise ValueError(
            f"images_per_identity must be >= 1 (or a range low <= high), got {images_per_identity}"
        )
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    annotation_file = root / spec.annotation_files[0]
    if annotation_file.exists() and not overwrite:
        raise FileExistsError(
            f"{annotation_file} exists; pass overwrite=True (`--overwrite` on the command line) to replace it"
        )

    people = _draw_people(num_identities, seed)
    splits = _assign_splits(num_identities, fractions, seed)
    if spec.name == "icfg-pedes":  # image folders by MSMT17's split, unrelated to the ICFG split
        folders = [
            "test" if np.random.default_rng([seed, i, 5]).random() < ICFG_MSMT17_TEST_SHARE else "train"
            for i in range(num_identities)
        ]
    else:
        folders = splits
    counts = [int(np.random.default_rng([seed, i, 3]).integers(low, high + 1)) for i in range(num_identities)]
    total = sum(counts)
    report = _progress_reporter(progress, total, f"writing {spec.title} twin")
    entries = []
    written = 0
    try:
        for person_index, person in enumerate(people):
            pid = person_index + 1 if spec.name == "cuhk-pedes" else person_index
            for number in range(counts[person_index]):
                rng = np.random.default_rng([seed, person_index, number, 1])
                image, view = render_person(person, image_size, rng)
                relative = _image_name(spec.name, folders[person_index], pid, number, rng)
                path = root / IMAGE_DIR / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".png":
                    image.save(path, compress_level=1)
                else:
                    image.save(path, quality=int(rng.integers(75, 96)))
                captions = [
                    write_caption(person, view, np.random.default_rng([seed, person_index, number, 2, c]))
                    for c in range(captions_per_image)
                ]
                entries.append(_entry(spec.name, pid, relative, captions, splits[person_index]))
                written += 1
                report(written)
    finally:
        report(None)
    annotation_file.write_text(json.dumps(entries, indent=1))
    return annotation_file


def _draw_people(count: int, seed: int) -> list[Person]:
    rng = np.random.default_rng([seed, 0])
    people: list[Person] = []
    seen: set[tuple] = set()
    for _ in range(count):
        for _attempt in range(30):  # beyond that the attribute space is crowded: allow a repeat
            person = draw_person_attributes(rng)
            if person.signature not in seen:
                break
        seen.add(person.signature)
        people.append(person)
    return people


def _assign_splits(count: int, fractions: tuple[float, float, float], seed: int) -> list[str]:
    n_val = round(count * fractions[1]) if fractions[1] > 0 else 0
    n_test = round(count * fractions[2]) if fractions[2] > 0 else 0
    n_val = max(n_val, 1) if fractions[1] > 0 else 0
    n_test = max(n_test, 1) if fractions[2] > 0 else 0
    if n_val + n_test >= count:
        raise ValueError(f"{count} identities are too few for the split fractions {fractions}")
    labels = ["train"] * (count - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    order = np.random.default_rng([seed, 4]).permutation(count)
    return [labels[int(position)] for position in np.argsort(order)]


def _image_name(dataset: str, folder: str, pid: int, number: int, rng: np.random.Generator) -> str:
    camera = int(rng.integers(1, 16))
    frame = int(rng.integers(0, 10000))
    if dataset == "icfg-pedes":
        return f"{folder}/{pid:04d}/{pid:04d}_{camera:03d}_{number + 1:02d}_0303morning_{frame:04d}_0.jpg"
    if dataset == "rstpreid":
        return f"{pid:04d}_c{camera}_{number:04d}.jpg"
    folder = CUHK_FOLDERS[pid % len(CUHK_FOLDERS)]
    name = {
        "CUHK01": f"{pid:04d}{number + 1:03d}.png",
        "CUHK03": f"{camera}_{pid}_{number + 1}.jpg",
        "Market": f"{pid:04d}_c{camera}s1_{frame:06d}_{number:02d}.jpg",
        "cam_a": f"{pid:04d}_{number}_{frame}.jpg",
        "cam_b": f"{pid:04d}_{number}_{frame}.jpg",
        "test_query": f"p{pid}_s{number}{frame:05d}.jpg",
        "train_query": f"p{pid}_s{number}{frame:05d}.jpg",
    }[folder]
    return f"{folder}/{name}"


def _entry(dataset: str, pid: int, relative: str, captions: list[str], split: str) -> dict:
    if dataset == "rstpreid":
        return {"id": pid, "img_path": relative, "captions": captions, "split": split}
    tokens = [[word.strip(".,").lower() for word in caption.split()] for caption in captions]
    return {
        "split": split,
        "captions": captions,
        "file_path": relative,
        "processed_tokens": tokens,
        "id": pid,
    }


def _progress_reporter(progress: bool | Callable[[int, int], None], total: int, description: str):
    """A function taking the count done (None: finished) that drives a bar or a callback."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None
    from rich.progress import Progress

    bar = Progress(transient=False)
    bar.start()
    task = bar.add_task(description, total=total)

    def report(done: int | None) -> None:
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)

    return report
