"""Drawing a person as a surveillance photo: figure, view, pose, background, lighting, blur, noise."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from promptdecouple.data.synthetic.people import COLOURS, HAIR_COLOURS, Person


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
