"""Pictures of text-to-image retrieval: a query, its ranked gallery images and the true ones.

`draw_retrieval` returns a plain Pillow image, so the same picture serves the `search` command (saved
as PNG), notebooks (displayed inline) and the W&B panel (`wandb.Image`). Only Pillow is used; the text
is set in Pillow's built-in font, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

MATCH_COLOUR = (0, 170, 60)
MISS_COLOUR = (215, 30, 30)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)
MUTED_COLOUR = (110, 110, 110)
NEUTRAL_FRAME = (200, 200, 200)


def draw_retrieval(
    query: str,
    images: Sequence[Image.Image],
    scores: Sequence[float],
    matches: Sequence[bool] | None = None,
    true_images: Sequence[Image.Image] | None = None,
    true_ranks: Sequence[int] | None = None,
    note: str | None = None,
    thumbnail_height: int = 192,
    max_true_images: int = 10,
    min_width: int = 480,
) -> Image.Image:
    """Draw one query and its top-ranked gallery images as an RGB picture.

    Layout, top to bottom: the query text, wrapped to the picture's width (and `note` below it, in
    grey); the ranked images, left to right in rank order, each scaled to `thumbnail_height` and labelled
    with its rank and score; and, when `true_images` are given, the gallery images of the query's
    identity in a row below (at most `max_true_images`; the heading says how many there are), each
    labelled with its rank in the whole ranking when `true_ranks` are given.

    Args:
        query: the text that was searched for.
        images: the retrieved images, best first.
        scores: their similarity scores, same length.
        matches: per retrieved image, whether it shows the query's identity: a green (right) or red
            (wrong) frame. None: a neutral frame, for free-text queries whose identity is unknown.
        true_images: the images of the query's identity, if known.
        true_ranks: the rank (1 = best) of each true image in the whole ranking, same length.
        note: a line under the query, e.g. where it comes from.
        thumbnail_height: height of every thumbnail in pixels; widths keep each image's aspect ratio.
        max_true_images: most true images drawn.
        min_width: the picture is at least this wide, so that short rows still leave room for the text.
    """
    images = list(images)
    scores = [float(score) for score in scores]
    if not images:
        raise ValueError("images is empty: there is nothing to draw")
    if len(scores) != len(images):
        raise ValueError(f"scores has {len(scores)} values for {len(images)} images")
    if matches is not None and len(matches) != len(images):
        raise ValueError(f"matches has {len(matches)} values for {len(images)} images")
    if thumbnail_height < 16:
        raise ValueError(f"thumbnail_height must be at least 16 pixels, got {thumbnail_height}")
    if true_ranks is not None and len(true_ranks) != len(true_images or []):
        raise ValueError(f"true_ranks has {len(true_ranks)} values for {len(true_images or [])} true images")
    if max_true_images < 1:
        raise ValueError(f"max_true_images must be >= 1, got {max_true_images}")

    label_font = _font(max(11, round(thumbnail_height / 12)))
    query_font = _font(max(12, round(thumbnail_height / 10)))
    margin = max(8, thumbnail_height // 16)
    gap = max(6, thumbnail_height // 20)
    frame = max(2, thumbnail_height // 48)

    if matches is None:
        colours = [NEUTRAL_FRAME] * len(images)
    else:
        colours = [MATCH_COLOUR if match else MISS_COLOUR for match in matches]
    rows = [
        _Row(
            f"top {len(images)}",
            [_thumbnail(image, thumbnail_height) for image in images],
            colours,
            [[f"#{rank}", f"{score:.3f}"] for rank, score in enumerate(scores, start=1)],
        )
    ]
    if true_images:
        true_images = list(true_images)
        shown = min(len(true_images), max_true_images)
        heading = f"true images ({len(true_images)})"
        if shown < len(true_images):
            heading = f"true images (first {shown} of {len(true_images)})"
        ranks = (
            [[f"rank {int(rank)}"] for rank in true_ranks[:shown]] if true_ranks is not None else [[]] * shown
        )
        rows.append(
            _Row(
                heading,
                [_thumbnail(image, thumbnail_height) for image in true_images[:shown]],
                [MATCH_COLOUR] * shown,
                ranks,
            )
        )

    label_line = _line_height(label_font)
    query_line = _line_height(query_font)
    width = max(min_width, *(2 * margin + row.width(label_font, frame, gap) for row in rows))
    query_lines = _wrap(query, query_font, width - 2 * margin)
    note_lines = _wrap(note, label_font, width - 2 * margin) if note else []
    height = margin + len(query_lines) * query_line + len(note_lines) * label_line + margin
    height += sum(gap + row.height(thumbnail_height, label_line, frame, gap) for row in rows)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = margin
    for text in query_lines:
        draw.text((margin, y), text, font=query_font, fill=TEXT_COLOUR)
        y += query_line
    for text in note_lines:
        draw.text((margin, y), text, font=label_font, fill=MUTED_COLOUR)
        y += label_line
    for row in rows:
        y += gap
        row.draw(canvas, draw, (margin, y), label_font, frame, gap)
        y += row.height(thumbnail_height, label_line, frame, gap)
    return canvas


class _Row:
    """A heading, then framed thumbnails side by side, each with lines of text centred below it."""

    def __init__(
        self, heading: str, thumbs: list[Image.Image], colours: list[tuple], labels: list[list[str]]
    ) -> None:
        self.heading, self.thumbs, self.colours, self.labels = heading, thumbs, colours, labels

    def cells(self, font, frame: int) -> list[int]:
        return [
            max([thumb.width + 2 * frame] + [round(font.getlength(text)) for text in label])
            for thumb, label in zip(self.thumbs, self.labels, strict=True)
        ]

    def width(self, font, frame: int, gap: int) -> int:
        cells = self.cells(font, frame)
        return sum(cells) + gap * (len(cells) - 1)

    def height(self, thumbnail_height: int, line: int, frame: int, gap: int) -> int:
        label_lines = max(len(label) for label in self.labels)
        below = label_lines * line + gap // 4 if label_lines else 0
        return line + gap // 2 + thumbnail_height + 2 * frame + below

    def draw(
        self, canvas: Image.Image, draw: ImageDraw.ImageDraw, at: tuple[int, int], font, frame, gap
    ) -> None:
        x, y = at
        line = _line_height(font)
        draw.text((x, y), self.heading, font=font, fill=MUTED_COLOUR)
        y += line + gap // 2
        for thumb, colour, label, cell in zip(
            self.thumbs, self.colours, self.labels, self.cells(font, frame), strict=True
        ):
            left = x + (cell - thumb.width - 2 * frame) // 2
            right, bottom = left + thumb.width + 2 * frame - 1, y + thumb.height + 2 * frame - 1
            draw.rectangle((left, y, right, bottom), fill=colour)
            canvas.paste(thumb, (left + frame, y + frame))
            text_y = bottom + 1 + gap // 4
            for text in label:
                draw.text(
                    (x + (cell - round(font.getlength(text))) // 2, text_y), text, font=font, fill=TEXT_COLOUR
                )
                text_y += line
            x += cell + gap


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at `size` pixels (its fixed-size bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    top, bottom = font.getbbox("Ag|")[1::2]
    return bottom - min(top, 0) + max(2, (bottom - top) // 4)


def _thumbnail(image: Image.Image, height: int) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    image = image.convert("RGB")
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are split between characters."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if font.getlength(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            while font.getlength(word) > width and len(word) > 1:
                cut = next((i for i in range(len(word) - 1, 0, -1) if font.getlength(word[:i]) <= width), 1)
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines
