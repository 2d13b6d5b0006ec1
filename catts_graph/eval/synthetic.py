"""A procedural visual QA benchmark: rendered scenes of shapes and digits, with exact answers.

No benchmark data reaches our machines, and a model trained here needs questions whose answers are
known by construction. Each item is drawn from its own random stream, ``Random("{split}:{seed}:{index}")``
(string seeds hash with SHA-512, so they are the same in every process): the splits are disjoint
streams, and an item never depends on how many others were asked for.

A :class:`Scene` is a plain description (shapes with colour, size and centre; digits; clutter
lines) that :func:`render` draws at 224x224 on white, like ``examples/images/shapes.png``; every
gold answer is computed from the scene by :func:`answer_of`, never from the generator's intent.

Question kinds (:data:`KINDS`), each at difficulty level 1-3 (more objects, smaller and more
similar shapes, then clutter lines), drawn uniformly by default (:data:`MIXED_LEVELS`, the regime the
organisms trained on), and the hard level 4 (:data:`HARD_LEVEL`), asked for by name: always 8
shapes, smaller than any at level 3 (radius 10-14), 6 clutter lines among the shapes and across the
digits, and comparisons whose counts are one apart. It is where the base organism is unsure and the
expert still reads (docs/organism.md, "The hard regime"); it was chosen on validation scenes.

- ``colour``  "What colour is the triangle?" (the only triangle): four colour options, a letter.
- ``count``   "How many red circles are there?": an integer, 0-4.
- ``compare`` "Are there more red shapes than blue shapes?": options yes / no.
- ``position`` "Where is the green square?" (the only one): top left / top right / bottom left /
  bottom right, a letter.
- ``digits``  level 1 "What digit is written in the image?"; levels 2-4 "What is the sum of the
  two digits?" (digits 0-4 at level 2, 0-9 at levels 3-4): an integer.

Items carry their image as a PNG data URI (about 3 kB), so loading needs no cache folder.
"""

from __future__ import annotations

import base64
import io
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COLOURS",
    "HARD_LEVEL",
    "KINDS",
    "LEVELS",
    "MIXED_LEVELS",
    "POSITIONS",
    "SHAPES",
    "SPLITS",
    "Digit",
    "Question",
    "Scene",
    "Shape",
    "answer_of",
    "describe_focus",
    "describe_scene",
    "draw_shapes",
    "image_data_uri",
    "item_id",
    "item_question",
    "load_synthetic",
    "make_question",
    "parse_item_id",
    "render",
]

IMAGE_SIZE = 224
KINDS: tuple[str, ...] = ("colour", "count", "compare", "position", "digits")
LEVELS: tuple[int, ...] = (1, 2, 3, 4)
MIXED_LEVELS: tuple[int, ...] = (1, 2, 3)
"""The levels a question draws from when none is asked: the mixed regime the organisms trained on."""
HARD_LEVEL = 4
"""The hard regime: asked for by name (``level=HARD_LEVEL``), never drawn in the mix."""
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "blue": (45, 75, 220),
    "green": (40, 160, 60),
    "yellow": (235, 195, 25),
    "purple": (135, 55, 180),
    "orange": (245, 130, 25),
}
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
YES_NO: tuple[str, ...] = ("yes", "no")
DEFAULT_SIZES: dict[str, int] = {"train": 100_000, "validation": 500, "test": 500}
"""Items per split when no ``limit`` is given (train is a stream: ask for as many as needed)."""

# Radius (half the side for squares and triangles) by level: big flat shapes first, then smaller.
_RADII: dict[int, tuple[int, int]] = {1: (22, 28), 2: (16, 26), 3: (13, 24), 4: (10, 14)}
_OBJECTS: dict[int, tuple[int, int]] = {1: (2, 4), 2: (4, 6), 3: (6, 8), 4: (8, 8)}
# Clutter lines among the shapes, and across the digits.
_SCENE_LINES: dict[int, int] = {1: 0, 2: 0, 3: 4, 4: 6}
_DIGIT_LINES: dict[int, int] = {1: 0, 2: 0, 3: 3, 4: 6}
_MAX_COUNT = 4
_ONE_APART = tuple((a, b) for a in range(_MAX_COUNT + 1) for b in range(_MAX_COUNT + 1) if abs(a - b) == 1)
_DIGIT_SIZE = 84


@dataclass(frozen=True)
class Shape:
    """A filled shape: ``x, y`` its centre and ``r`` its radius (half side) in 224-pixel units."""

    shape: str
    colour: str
    x: int
    y: int
    r: int

    @property
    def quadrant(self) -> str:
        half = IMAGE_SIZE // 2
        return POSITIONS[(2 if self.y >= half else 0) + (1 if self.x >= half else 0)]


@dataclass(frozen=True)
class Digit:
    """A black digit centred at ``x, y``."""

    value: int
    x: int
    y: int


@dataclass(frozen=True)
class Scene:
    """Everything drawn: shapes, digits, and grey clutter lines ``(x0, y0, x1, y1)``."""

    shapes: tuple[Shape, ...] = ()
    digits: tuple[Digit, ...] = ()
    lines: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class Question:
    """One generated question: its scene, the asked ``target`` and the gold answer."""

    kind: str
    level: int
    question: str
    options: tuple[str, ...] | None
    answer: str
    scene: Scene
    target: dict[str, Any] = field(default_factory=dict)


# --- answers from the scene -----------------------------------------------------------------


def answer_of(kind: str, scene: Scene, target: dict[str, Any], options: Sequence[str] | None) -> str:
    """The gold answer of a ``kind`` question about ``scene``, computed from the scene alone."""
    if kind == "colour":
        (match,) = [s for s in scene.shapes if s.shape == target["shape"]]
        return _letter(options, match.colour)
    if kind == "count":
        return str(sum(s.colour == target["colour"] and s.shape == target["shape"] for s in scene.shapes))
    if kind == "compare":
        first = sum(s.colour == target["colours"][0] for s in scene.shapes)
        second = sum(s.colour == target["colours"][1] for s in scene.shapes)
        return _letter(options, "yes" if first > second else "no")
    if kind == "position":
        (match,) = [s for s in scene.shapes if s.shape == target["shape"] and s.colour == target["colour"]]
        return _letter(options, match.quadrant)
    if kind == "digits":
        return str(sum(d.value for d in scene.digits))
    raise ValueError(f"kind {kind!r} is not one of {KINDS}")


def _letter(options: Sequence[str] | None, text: str) -> str:
    if not options or text not in options:
        raise ValueError(f"{text!r} is not among the options {options!r}")
    return "ABCDEFGH"[list(options).index(text)]


# --- generation ---------------------------------------------------------------------------------


def make_question(
    split: str, index: int, *, seed: int = 0, kind: str | None = None, level: int | None = None
) -> Question:
    """Question ``index`` of ``split``: deterministic in ``(split, seed, index, kind, level)``.

    By default the kind cycles through :data:`KINDS` with the index (balanced splits) and the
    level is drawn uniformly from :data:`LEVELS`.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    kind = kind or KINDS[index % len(KINDS)]
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    rng = random.Random(f"{split}:{seed}:{index}:{kind}:{level}")
    level = level or rng.choice(MIXED_LEVELS)
    if level not in LEVELS:
        raise ValueError(f"level {level!r} is not one of {LEVELS}")
    return _BUILDERS[kind](rng, level)


def _colour_question(rng: random.Random, level: int) -> Question:
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    target = Shape(shape, colour, 0, 0, 0)
    others = [s for s in SHAPES if s != shape]
    scene = _scene(rng, level, [target], lambda: (rng.choice(others), rng.choice(list(COLOURS))))
    wrong = rng.sample([c for c in COLOURS if c != colour], 3)
    options = [colour, *wrong]
    rng.shuffle(options)
    t = {"shape": shape}
    text = f"What colour is the {shape}?"
    return Question("colour", level, text, tuple(options), answer_of("colour", scene, t, options), scene, t)


def _count_question(rng: random.Random, level: int) -> Question:
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    low, high = _OBJECTS[level]
    count = rng.randint(0, min(_MAX_COUNT, high))
    wanted = [Shape(shape, colour, 0, 0, 0)] * count

    def distractor() -> tuple[str, str]:
        # At level 1 a distractor differs in colour and shape; later only in one of them.
        while True:
            pair = (rng.choice(SHAPES), rng.choice(list(COLOURS)))
            if pair != (shape, colour) and (level > 1 or (pair[0] != shape and pair[1] != colour)):
                return pair

    scene = _scene(rng, level, wanted, distractor, total=max(count, rng.randint(low, high)))
    t = {"shape": shape, "colour": colour}
    text = f"How many {colour} {shape}s are there?"
    return Question("count", level, text, None, answer_of("count", scene, t, None), scene, t)


def _compare_question(rng: random.Random, level: int) -> Question:
    first, second = rng.sample(list(COLOURS), 2)
    low, high = _OBJECTS[level]
    if level == HARD_LEVEL:
        # Counts one apart: the answer needs both colours counted exactly.
        n_first, n_second = rng.choice(_ONE_APART)
    else:
        n_first, n_second = rng.sample(range(0, min(_MAX_COUNT, high) + 1), 2)
    wanted = [Shape(rng.choice(SHAPES), first, 0, 0, 0) for _ in range(n_first)]
    wanted += [Shape(rng.choice(SHAPES), second, 0, 0, 0) for _ in range(n_second)]
    rest = [c for c in COLOURS if c not in (first, second)]
    scene = _scene(
        rng,
        level,
        wanted,
        lambda: (rng.choice(SHAPES), rng.choice(rest)),
        total=max(len(wanted), rng.randint(low, high) if level > 1 else len(wanted)),
    )
    t = {"colours": [first, second]}
    text = f"Are there more {first} shapes than {second} shapes?"
    return Question("compare", level, text, YES_NO, answer_of("compare", scene, t, YES_NO), scene, t)


def _position_question(rng: random.Random, level: int) -> Question:
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    quadrant = rng.randrange(4)
    # Keep the target clear of the centre lines, so its quadrant is unambiguous.
    r = rng.randint(*_RADII[level])
    margin = 6
    xs = (r + margin, IMAGE_SIZE // 2 - r - margin)
    x = rng.randint(*xs) + (IMAGE_SIZE // 2 if quadrant % 2 else 0)
    y = rng.randint(*xs) + (IMAGE_SIZE // 2 if quadrant >= 2 else 0)
    target = Shape(shape, colour, x, y, r)

    def distractor() -> tuple[str, str]:
        while True:
            pair = (rng.choice(SHAPES), rng.choice(list(COLOURS)))
            if pair != (shape, colour):
                return pair

    scene = _scene(rng, level, [target], distractor, placed=True)
    t = {"shape": shape, "colour": colour}
    text = f"Where is the {colour} {shape}?"
    return Question("position", level, text, POSITIONS, answer_of("position", scene, t, POSITIONS), scene, t)


def _digits_question(rng: random.Random, level: int) -> Question:
    if level == 1:
        values = [rng.randint(0, 9)]
        text = "What digit is written in the image?"
    else:
        top = 4 if level == 2 else 9
        values = [rng.randint(0, top), rng.randint(0, top)]
        text = "What is the sum of the two digits?"
    half = IMAGE_SIZE // 2
    if len(values) == 1:
        digits = (Digit(values[0], half + rng.randint(-30, 30), half + rng.randint(-30, 30)),)
    else:
        y = half + rng.randint(-40, 40)
        digits = (
            Digit(values[0], half // 2 + rng.randint(-12, 12), y + rng.randint(-10, 10)),
            Digit(values[1], half + half // 2 + rng.randint(-12, 12), y + rng.randint(-10, 10)),
        )
    scene = Scene(digits=digits, lines=_lines(rng, _DIGIT_LINES[level]))
    return Question("digits", level, text, None, answer_of("digits", scene, {}, None), scene, {})


_BUILDERS = {
    "colour": _colour_question,
    "count": _count_question,
    "compare": _compare_question,
    "position": _position_question,
    "digits": _digits_question,
}


def _scene(
    rng: random.Random,
    level: int,
    wanted: list[Shape],
    distractor: Any,
    *,
    total: int | None = None,
    placed: bool = False,
) -> Scene:
    """Place ``wanted`` (already placed when ``placed``) plus distractors up to ``total`` shapes,
    without overlaps; levels 3-4 add clutter lines."""
    low, high = _OBJECTS[level]
    total = max(len(wanted), total if total is not None else rng.randint(low, high))
    kinds = [(s.shape, s.colour) for s in wanted] + [distractor() for _ in range(total - len(wanted))]
    shapes: list[Shape] = list(wanted) if placed else []
    for shape, colour in kinds[len(shapes) :]:
        shapes.append(_place(rng, level, shape, colour, shapes))
    order = list(shapes)
    rng.shuffle(order)
    return Scene(shapes=tuple(order), lines=_lines(rng, _SCENE_LINES[level]))


def _place(rng: random.Random, level: int, shape: str, colour: str, taken: list[Shape]) -> Shape:
    for _ in range(1000):
        r = rng.randint(*_RADII[level])
        x = rng.randint(r + 2, IMAGE_SIZE - r - 3)
        y = rng.randint(r + 2, IMAGE_SIZE - r - 3)
        if all((x - o.x) ** 2 + (y - o.y) ** 2 >= (r + o.r + 6) ** 2 for o in taken):
            return Shape(shape, colour, x, y, r)
    raise RuntimeError("could not place a shape without overlap")  # not reached at these sizes


def _lines(rng: random.Random, n: int) -> tuple[tuple[int, int, int, int], ...]:
    return tuple(
        (
            rng.randrange(IMAGE_SIZE),
            rng.randrange(IMAGE_SIZE),
            rng.randrange(IMAGE_SIZE),
            rng.randrange(IMAGE_SIZE),
        )
        for _ in range(n)
    )


# --- description -------------------------------------------------------------------------------


def describe_scene(scene: Scene) -> str:
    """What a scene shows, in words: ``"circle red top left; square blue bottom right."`` for shapes
    (in reading order: by quadrant, then left to right), ``"digits 3 and 7."`` for digits. Clutter
    lines are not mentioned. This is the reasoning the organism models are taught to write before
    their answer (:mod:`catts_experiments.train`)."""
    parts = []
    if scene.shapes:
        parts.append("; ".join(_entry(s) for s in _reading_order(scene.shapes)))
    if scene.digits:
        values = [str(d.value) for d in sorted(scene.digits, key=lambda d: d.x)]
        parts.append(("digit " if len(values) == 1 else "digits ") + " and ".join(values))
    return "; ".join(parts) + "." if parts else "nothing."


def _reading_order(shapes: Sequence[Shape]) -> list[Shape]:
    return sorted(shapes, key=lambda s: (POSITIONS.index(s.quadrant), s.x, s.y))


def _entry(shape: Shape) -> str:
    # Shape first: a question names an object by its shape ("What colour is the square?"), and
    # what follows the shape is then a forward copy from the description (measured, base
    # architecture, 250 validation items: colour questions 0.52 after 8,000 steps with colour
    # first, 0.56 after 1,500 steps with shape first).
    return f"{shape.shape} {shape.colour} {shape.quadrant}"


def describe_focus(question: Question) -> str | None:
    """The objects a question is about, numbered in reading order, under a label copied from the
    question: ``"green triangles: 1 triangle green top left; 2 triangle green bottom left."``;
    ``"red circles: none."`` when there are none; for a comparison one such list per colour. ``None``
    for digit questions (their description already holds everything).

    This is the step between seeing and answering that the organisms are taught to write (select
    the relevant objects from the description, then answer from them): each of its tokens is a copy
    from the description or the question, or a count one above the last, so the answer is always a
    short-range step from what precedes it.
    """
    target = question.target
    if question.kind == "digits":
        return None
    if question.kind == "compare":
        lists = [
            _focus_list(f"{colour} shapes", [s for s in question.scene.shapes if s.colour == colour])
            for colour in target["colours"]
        ]
        return " ".join(lists)
    if question.kind == "colour":
        label = target["shape"]
        wanted = [s for s in question.scene.shapes if s.shape == target["shape"]]
    else:
        label = f"{target['colour']} {target['shape']}" + ("s" if question.kind == "count" else "")
        wanted = [
            s for s in question.scene.shapes if s.shape == target["shape"] and s.colour == target["colour"]
        ]
    return _focus_list(label, wanted)


def _focus_list(label: str, shapes: Sequence[Shape]) -> str:
    if not shapes:
        return f"{label}: none."
    return f"{label}: " + "; ".join(f"{i} {_entry(s)}" for i, s in enumerate(_reading_order(shapes), 1)) + "."


# --- rendering ---------------------------------------------------------------------------------


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: the same glyphs on every machine (system fonts differ).
    return ImageFont.load_default(size=_DIGIT_SIZE)


def render(scene: Scene) -> Image.Image:
    """The scene drawn at 224x224 RGB on white."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    draw = ImageDraw.Draw(image)
    for line in scene.lines:
        draw.line(line, fill=(150, 150, 150), width=3)
    draw_shapes(draw, scene.shapes)
    for d in scene.digits:
        draw.text((d.x, d.y), str(d.value), fill="black", font=_font(), anchor="mm")
    return image


def draw_shapes(draw: ImageDraw.ImageDraw, shapes: Sequence[Shape], fill: Any = None) -> None:
    """Draw ``shapes`` filled in their colours, or all in ``fill`` (e.g. 255 for a mask)."""
    for s in shapes:
        colour = COLOURS[s.colour] if fill is None else fill
        box = (s.x - s.r, s.y - s.r, s.x + s.r, s.y + s.r)
        if s.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif s.shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(s.x, s.y - s.r), (s.x - s.r, s.y + s.r), (s.x + s.r, s.y + s.r)], fill=colour)


def image_data_uri(image: Image.Image) -> str:
    """``image`` as a PNG data URI."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- as benchmark items ------------------------------------------------------------------------


def load_synthetic(
    split: str = "test",
    *,
    limit: int | None = None,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
    levels: Sequence[int] | None = None,
    level: int | None = None,
) -> list[Any]:
    """The first ``limit`` items of ``split`` (default sizes: :data:`DEFAULT_SIZES`) as
    :class:`~catts_graph.eval.datasets.Item` objects of benchmark ``"synthetic"``.

    ``level`` asks every question at that level (``make_question(..., level=level)``: another
    stream than the mixed one, so its item ids are ``"{split}-{index}-level{level}"``); without
    it the levels are drawn from :data:`MIXED_LEVELS` and the ids are ``"{split}-{index}"``.
    ``kinds`` / ``levels`` keep only those kinds / levels of the mix (the stream is filtered, so
    item ids stay those of the full split). ``category`` is the kind; ``metadata`` holds the level
    and the scene.
    """
    from catts_graph.task import Item

    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level {level!r} is not one of {LEVELS}")
    if level is not None and levels:
        raise ValueError(f"levels={list(levels)!r} filters the mix; level={level} asks every question at one")
    bad = [k for k in kinds or () if k not in KINDS] + [lv for lv in levels or () if lv not in MIXED_LEVELS]
    if bad:
        raise ValueError(
            f"kinds / levels: {bad} not among {KINDS} / the mix's {MIXED_LEVELS} (the hard level: level=4)"
        )
    size = limit or DEFAULT_SIZES[split]
    items = []
    index = 0
    while len(items) < size and index < DEFAULT_SIZES[split] * 10:
        question = make_question(split, index, seed=seed, level=level)
        index += 1
        if (kinds and question.kind not in kinds) or (levels and question.level not in levels):
            continue
        items.append(
            Item(
                id=item_id(split, index - 1, level),
                benchmark="synthetic",
                images=[image_data_uri(render(question.scene))],
                question=question.question,
                options=list(question.options) if question.options else None,
                answer=question.answer,
                answer_type="choice" if question.options else "integer",
                category=question.kind,
                metadata={
                    "kind": question.kind,
                    "level": question.level,
                    "seed": seed,
                    "target": question.target,
                    "scene": asdict(question.scene),
                },
            )
        )
    return items


def item_id(split: str, index: int, level: int | None = None) -> str:
    """The id of question ``index`` of ``split`` as :func:`load_synthetic` names it:
    ``"{split}-{index}"`` in the mix, ``"{split}-{index}-level{level}"`` at one asked level.

    >>> item_id("test", 12), item_id("test", 12, 4)
    ('test-12', 'test-12-level4')
    """
    return f"{split}-{index}" + (f"-level{level}" if level is not None else "")


def parse_item_id(text: str) -> tuple[str, int, int | None]:
    """``(split, index, level)`` of an :func:`item_id` (level None: the mix); the inverse of it.

    >>> parse_item_id("validation-7"), parse_item_id("test-12-level4")
    (('validation', 7, None), ('test', 12, 4))
    """
    match = re.fullmatch(r"(?P<split>[a-z]+)-(?P<index>\d+)(?:-level(?P<level>\d+))?", text)
    if match is None or match["split"] not in SPLITS:
        raise ValueError(
            f"item id {text!r}: expected '<split>-<index>' or '<split>-<index>-level<level>' with a split "
            f"of {SPLITS}"
        )
    level = int(match["level"]) if match["level"] is not None else None
    if level is not None and level not in LEVELS:
        raise ValueError(f"item id {text!r}: level {level} is not one of {LEVELS}")
    return match["split"], int(match["index"]), level


def item_question(text: str, *, seed: int = 0) -> Question:
    """The generator's :class:`Question` behind the item id ``text`` of :func:`load_synthetic` run
    with ``seed`` (at the id's level, when it names one): its scene and reply, which the item lacks."""
    split, index, level = parse_item_id(text)
    return make_question(split, index, seed=seed, level=level)
