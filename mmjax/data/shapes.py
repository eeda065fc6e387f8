"""The embedded "shapes" dataset: scenes, captions and question-answer pairs (numpy + Pillow only).

A scene holds 1-3 objects (colour x shape x size) in distinct cells of a 3x3 grid on a muted background
(solid, gradient or light noise). The first object is the *main* object: its size class is strictly
larger than every other object's, and it defines the class label
``label = COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)`` (name ``CLASS_NAMES[label]``).

Text is lowercase words from a closed vocabulary (``vocabulary()``, plus ``LATE_WORDS`` for questions
about one of two images, ``about_image``); questions end in "?", which
tokenizers strip. The article is always "a" (also "a orange circle"), as in the prompt templates.
``captions(scene, rng)[0]`` is the canonical caption: every object, main first, as
"a <size> <colour> <shape> in the <position>", joined by "and", then "on a <background> background";
no caption exceeds 30 words, so 32 tokens with BOS and EOT never truncate. Positions are "top left",
"top middle", ..., "center", ..., "bottom right". Answers are single words (a colour, a shape, a
number, "yes" or "no").

Held-out combinations (``HELD_OUT_COMBOS``, 25 % of colour x shape) never occur in the train and
validation splits (neither as main object nor as distractor, so never in their text); in the test split
every main object is held out. Example ``i`` of a split is a pure function of (seed, split, i, image_size).

Flips: every shape is left-right symmetric (masks are symmetrised) and the grid is symmetric, so
``render(flip_scene(s)) == np.fliplr(render(s))`` exactly, and ``flip_text`` (left <-> right) turns the
text of a scene into the text of its mirror image.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
COLOUR_RGB = (
    (220, 30, 30),
    (30, 170, 40),
    (30, 60, 220),
    (240, 210, 20),
    (140, 40, 180),
    (245, 130, 20),
    (250, 250, 250),
    (15, 15, 15),
)
# Six shapes that stay distinct at 13 px (a hexagon or a heart that small is hard to tell from a circle).
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES = ("small", "medium", "large")
SIZE_FRACTION = (0.2, 0.26, 0.32)  # side of an object's box, as a fraction of the image side
ROWS = ("top", "middle", "bottom")
COLS = ("left", "middle", "right")
BACKGROUNDS = ("grey", "brown", "beige", "teal")
BACKGROUND_RGB = ((128, 128, 128), (130, 95, 70), (205, 190, 155), (70, 125, 125))
BACKGROUND_JITTER = 16  # gradients span +-16 levels, noise +-12: far from every object colour
NUMBERS = ("zero", "one", "two", "three")
QUESTION_TYPES = ("colour", "shape", "count", "exists", "position")
SPLITS = ("train", "validation", "test")
NUM_CAPTIONS = 6
SHORT_CAPTION = 5  # captions(...)[5] names the main object alone: "a photo of a large red star"

CLASS_NAMES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
# Shape s is held out with the colours (3 * s + k) % 8 for k in {0, 5}: two colours per shape and at most
# two shapes per colour (12 of 48 combinations), so every shape keeps 6 and every colour >= 4 seen partners.
HELD_OUT_COMBOS = tuple(
    sorted((COLOURS[(3 * s + k) % len(COLOURS)], SHAPES[s]) for s in range(len(SHAPES)) for k in (0, 5))
)
_HELD_OUT_IDS = frozenset((COLOURS.index(c), SHAPES.index(s)) for c, s in HELD_OUT_COMBOS)
_ALL_IDS = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
_SEEN_IDS = [cs for cs in _ALL_IDS if cs not in _HELD_OUT_IDS]

# Two-image examples ask about one image: "in the second image what colour is the star?". These words
# came after models were trained on the vocabulary, so the tokenizer gives them the last ids.
ORDINALS = ("first", "second")
LATE_WORDS = ORDINALS

PROMPT_TEMPLATES = (
    "a {}",
    "a picture of a {}",
    "a photo of a {}",
    "an image of a {}",
    "there is a {} in the image",
    "a {} on a background",
)


def is_held_out(colour: str, shape: str) -> bool:
    return (colour, shape) in HELD_OUT_COMBOS


def label_of(colour: str, shape: str) -> int:
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


@dataclasses.dataclass(frozen=True)
class Obj:
    colour: int  # index into COLOURS
    shape: int  # index into SHAPES
    size: int  # index into SIZES
    row: int
    col: int
    x: int  # top-left corner of the object's px x px box
    y: int
    px: int

    @property
    def name(self) -> str:
        return f"{COLOURS[self.colour]} {SHAPES[self.shape]}"


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # objects[0] is the main object
    background: int  # index into BACKGROUNDS
    bg_kind: int  # 0 solid, 1 gradient, 2 noise
    bg_seed: int
    image_size: int
    mirrored: bool = False  # background pattern flipped left-right

    @property
    def label(self) -> int:
        main = self.objects[0]
        return label_of(COLOURS[main.colour], SHAPES[main.shape])


def _cell_bounds(index: int, image_size: int) -> tuple[int, int]:
    return round(index * image_size / 3), round((index + 1) * image_size / 3)


def sample_scene(rng: np.random.Generator, split: str, image_size: int = 64) -> Scene:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    n = int(rng.integers(1, 4))
    cells = rng.permutation(9)[:n]
    main_size = int(rng.integers(0, 3)) if n == 1 else int(rng.integers(1, 3))
    sizes = [main_size] + [int(rng.integers(0, main_size)) for _ in range(n - 1)]
    main_pool = sorted(_HELD_OUT_IDS) if split == "test" else _SEEN_IDS
    other_pool = _ALL_IDS if split == "test" else _SEEN_IDS
    combos = [main_pool[rng.integers(len(main_pool))]]
    while len(combos) < n:  # distinct (colour, shape) pairs, so "the red circle" is unambiguous
        cs = other_pool[rng.integers(len(other_pool))]
        if cs not in combos:
            combos.append(cs)
    objects = []
    for (colour, shape), size, cell in zip(combos, sizes, cells):
        row, col = divmod(int(cell), 3)
        px = max(4, round(SIZE_FRACTION[size] * image_size))
        (x0, x1), (y0, y1) = _cell_bounds(col, image_size), _cell_bounds(row, image_size)
        x = x0 + round(rng.random() * max(0, x1 - x0 - px))
        y = y0 + round(rng.random() * max(0, y1 - y0 - px))
        objects.append(Obj(colour, shape, size, row, col, x, y, px))
    return Scene(
        tuple(objects),
        int(rng.integers(len(BACKGROUNDS))),
        int(rng.integers(3)),
        int(rng.integers(2**31)),
        image_size,
    )


def flip_scene(scene: Scene) -> Scene:
    """The scene mirrored left-right (columns, pixel positions and background pattern)."""
    w = scene.image_size
    objects = tuple(dataclasses.replace(o, col=2 - o.col, x=w - o.x - o.px) for o in scene.objects)
    return dataclasses.replace(scene, objects=objects, mirrored=not scene.mirrored)


def twin_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """The counterfactual twin of ``scene``: the same scene with the main object's shape replaced by another
    shape, everything else (colours, sizes, positions, background) unchanged. The new colour-shape pair is
    a seen one (never a held-out combination) and differs from every other object's pair, so the twin is a
    valid training scene whose text differs from the original's only in that shape word."""
    main, others = scene.objects[0], scene.objects[1:]
    taken = {(o.colour, o.shape) for o in others}
    pool = [
        s
        for s in range(len(SHAPES))
        if s != main.shape and (main.colour, s) not in _HELD_OUT_IDS and (main.colour, s) not in taken
    ]
    new = dataclasses.replace(main, shape=pool[rng.integers(len(pool))])
    return dataclasses.replace(scene, objects=(new, *others))


def _outline(shape: str, s: float) -> list[tuple[float, float]] | None:
    """Polygon of ``shape`` in the box [0, s]^2 (None: ellipse)."""
    c, r = s / 2, s / 2
    if shape == "circle":
        return None
    if shape == "square":
        m = 0.1 * s
        return [(m, m), (s - m, m), (s - m, s - m), (m, s - m)]
    if shape == "triangle":
        return [(c, 0), (s, s), (0, s)]
    if shape == "diamond":
        return [(c, 0), (s, c), (c, s), (0, c)]
    if shape == "cross":
        a, b = s / 3, 2 * s / 3
        return [
            (a, 0),
            (b, 0),
            (b, a),
            (s, a),
            (s, b),
            (b, b),
            (b, s),
            (a, s),
            (a, b),
            (0, b),
            (0, a),
            (a, a),
        ]
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [(c + q * np.cos(t), c + 0.1 * r + q * np.sin(t)) for q, t in zip(radii, angles)]
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, px: int) -> np.ndarray:
    """Boolean [px, px] mask, exactly left-right symmetric."""
    from PIL import Image, ImageDraw  # here, so that the vocabulary (the tokenizer) needs no Pillow

    img = Image.new("L", (px, px), 0)
    draw = ImageDraw.Draw(img)
    outline = _outline(shape, px - 1)
    if outline is None:
        draw.ellipse([0, 0, px - 1, px - 1], fill=255)
    else:
        draw.polygon(outline, fill=255)
    mask = np.asarray(img) > 127
    mask = mask | mask[:, ::-1]
    mask.setflags(write=False)
    return mask


def render(scene: Scene, rgb: tuple[tuple[int, int, int], ...] | None = None) -> np.ndarray:
    """uint8 [H, W, 3] image of ``scene``; ``rgb``: each object's colour instead of its ``COLOUR_RGB``."""
    w = scene.image_size
    base = np.array(BACKGROUND_RGB[scene.background], np.float32)
    bg_rng = np.random.default_rng(scene.bg_seed)
    if scene.bg_kind == 1:  # linear gradient in a random direction
        a, b = bg_rng.uniform(-1, 1, size=2)
        ys, xs = np.mgrid[0:w, 0:w] / max(1, w - 1) * 2 - 1
        ramp = (a * xs + b * ys) / max(abs(a) + abs(b), 1e-6) * BACKGROUND_JITTER
        image = base + ramp[..., None]
    elif scene.bg_kind == 2:  # light noise
        image = base + bg_rng.integers(-12, 13, size=(w, w, 1))
    else:
        image = np.broadcast_to(base, (w, w, 3))
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    image = np.ascontiguousarray(image[:, ::-1] if scene.mirrored else image)
    for i, o in enumerate(scene.objects):
        patch = image[o.y : o.y + o.px, o.x : o.x + o.px]
        patch[shape_mask(SHAPES[o.shape], o.px)] = COLOUR_RGB[o.colour] if rgb is None else rgb[i]
    return image


# ----------------------------------------------------------------------------------------- text
def flip_text(text: str) -> str:
    """Swap "left" and "right": the text of a scene becomes the text of its mirror image."""
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", text)


def swap_shape_word(text: str, rng: np.random.Generator) -> str:
    """A hard-negative caption: one shape word of ``text`` replaced by a different shape.

    The result never describes the scene (one object's shape changes, so the multiset of shapes does),
    which is what makes it a useful negative: matching it against the image needs shape, not just the
    colours and positions that already tell most scenes apart (NegCLIP, Yuksekgonul et al. 2023).
    The new colour-shape pair is never a held-out combination: training text must not name those,
    not even as a negative (that would teach the model that they never match).
    """
    words = text.split()
    slots = [i for i, w in enumerate(words) if w in SHAPES]
    if not slots:
        return text
    i = slots[rng.integers(len(slots))]
    colour = words[i - 1] if i and words[i - 1] in COLOURS else None
    others = [s for s in SHAPES if s != words[i] and not (colour and is_held_out(colour, s))]
    words[i] = others[rng.integers(len(others))]
    return " ".join(words)


def _noun(o: Obj, size: bool = True) -> str:
    return f"a {SIZES[o.size]} {o.name}" if size else f"a {o.name}"


def _where(o: Obj) -> str:
    if (o.row, o.col) == (1, 1):
        return "in the center"
    return f"in the {ROWS[o.row]} {COLS[o.col]}"


def _relation(a: Obj, b: Obj) -> str:
    if a.col != b.col:
        return "to the left of" if a.col < b.col else "to the right of"
    return "above" if a.row < b.row else "below"


def canonical_caption(scene: Scene) -> str:
    parts = " and ".join(f"{_noun(o)} {_where(o)}" for o in scene.objects)
    return f"{parts} on a {BACKGROUNDS[scene.background]} background"


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """``NUM_CAPTIONS`` captions; [0] canonical, the rest paraphrases (word choice, order, relations)."""
    objs, bg = scene.objects, BACKGROUNDS[scene.background]
    shuffled = [objs[i] for i in rng.permutation(len(objs))]
    lead = ("a picture of", "a photo of", "an image of")[rng.integers(3)]
    main = objs[0]
    if len(objs) == 1:
        relational = f"there is a single {main.name} {_where(main)}"
    else:
        relational = f"{_noun(main)} " + " and ".join(
            f"{_relation(main, o)} {_noun(o, False)}" for o in objs[1:]
        )
    return [
        canonical_caption(scene),
        "there is " + " and ".join(_noun(o) for o in objs),  # what, without where
        f"{lead} " + " and ".join(_noun(o, False) for o in shuffled) + f" on a {bg} background",
        relational,
        f"a {bg} background with "
        + " and ".join(f"{_noun(o, bool(rng.integers(2)))} {_where(o)}" for o in shuffled),
        f"{lead} {_noun(main, bool(rng.integers(2)))}",  # short, alt-text style: the main object only
    ]


# (asked attribute, its words, the attribute that names the object, how the question names it)
_NAMED = (
    ("colour", COLOURS, "shape", lambda o: f"the {SHAPES[o.shape]}"),
    ("shape", SHAPES, "colour", lambda o: f"the {COLOURS[o.colour]} object"),
)


def _names_uniquely(o: Obj, by: str, objs) -> bool:
    """Whether ``o``'s ``by`` attribute ("colour" or "shape") is no other object's among ``objs``."""
    return sum(getattr(p, by) == getattr(o, by) for p in objs) == 1


def _relation_question(a: Obj, b: Obj, yes: bool) -> str:
    """Whether ``a`` is to the left of / right of / above / below ``b`` (left/right where their columns
    differ, else above/below), worded so that the answer is ``yes``."""
    if a.col != b.col:
        return f"is the {a.name} to the {('left', 'right')[(a.col < b.col) != yes]} of the {b.name}?"
    return f"is the {a.name} {('above', 'below')[(a.row < b.row) != yes]} the {b.name}?"


def _side_question(o: Obj, rng: np.random.Generator) -> tuple[str, str]:
    """(question, answer): whether ``o`` is on the left / right / at the top / bottom, a true side or a
    false one at even odds."""
    sides = {
        "on the left": o.col == 0,
        "on the right": o.col == 2,
        "at the top": o.row == 0,
        "at the bottom": o.row == 2,
    }
    true = [s for s, v in sides.items() if v]
    pool = true if true and rng.random() < 0.5 else [s for s, v in sides.items() if not v]
    side = pool[rng.integers(len(pool))]
    return f"is the {o.name} {side}?", "yes" if sides[side] else "no"


def questions(scene: Scene, rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
    """(questions, answers, question_types): one colour, shape, count and position question and two
    existence questions (one "yes", one "no"). Objects are named only where the name is unique."""
    objs = scene.objects
    qs, ans, types = [], [], []

    def add(q, a, t):
        qs.append(q), ans.append(a), types.append(t)

    # Ask for one attribute of an object named by the other, when that names it uniquely.
    for asked, names, by, describe in _NAMED:
        unique = [o for o in objs if _names_uniquely(o, by, objs)]
        if unique and rng.random() < 0.8:
            o = unique[rng.integers(len(unique))]
            add(f"what {asked} is {describe(o)}?", names[getattr(o, asked)], asked)
        else:
            add(f"what {asked} is the biggest object?", names[getattr(objs[0], asked)], asked)
    add("how many objects are there?", NUMBERS[len(objs)], "count")

    present = objs[rng.integers(len(objs))]
    add(f"is there a {present.name}?", "yes", "exists")
    absent_pool = [cs for cs in _SEEN_IDS if cs not in {(o.colour, o.shape) for o in objs}]
    colour, shape = absent_pool[rng.integers(len(absent_pool))]
    add(f"is there a {COLOURS[colour]} {SHAPES[shape]}?", "no", "exists")

    if len(objs) >= 2:  # the yes/no draw comes first, so the question of a mirrored scene is mirrored
        i, j = rng.permutation(len(objs))[:2]
        a, b, yes = objs[i], objs[j], bool(rng.random() < 0.5)
        add(_relation_question(a, b, yes), "yes" if yes else "no", "position")
    else:
        add(*_side_question(objs[0], rng), "position")
    return qs, ans, types


def object_questions(objects, rng: np.random.Generator, sides: bool = False) -> tuple[list[str], list[str]]:
    """More questions about a scene, from a record's ``objects`` (arrays ``colour``, ``shape``, ``row``,
    ``col``): every object's colour asked by its shape and its shape by its colour, where that names it
    uniquely, and for every pair of objects whether one is to the left of / above the other (yes or no
    at random). ``questions`` asks about one object of each kind; these ask about all of them, the
    smaller ones too (``data.vqa_questions="all"``). With ``sides`` (``data.vqa_side_questions``), also
    every object's side ("is the red circle on the left?", which ``questions`` asks only of a lone
    object): reading a named object's position among several, the half of a relation that a lone object
    does not teach. Returns (questions, answers)."""
    objs = [
        Obj(int(c), int(s), 0, int(r), int(k), 0, 0, 0)
        for c, s, r, k in zip(objects["colour"], objects["shape"], objects["row"], objects["col"])
    ]
    qs, ans = [], []
    for o in objs:
        for asked, names, by, describe in _NAMED:
            if _names_uniquely(o, by, objs):
                qs.append(f"what {asked} is {describe(o)}?"), ans.append(names[getattr(o, asked)])
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            a, b = (objs[i], objs[j]) if rng.random() < 0.5 else (objs[j], objs[i])
            yes = bool(rng.random() < 0.5)
            qs.append(_relation_question(a, b, yes)), ans.append("yes" if yes else "no")
    if sides:  # after the relations' draws, which stay as they are without it
        for o in objs:
            q, a = _side_question(o, rng)
            qs.append(q), ans.append(a)
    return qs, ans


def pair_shortcut(objects, question: str) -> bool:
    """Whether the other objects of a scene (a record's ``objects``) give away which one a colour or shape
    question is not about, by a pair the training split never shows: "what colour is the star?" with a
    green object among them, where green stars are held out, teaches "a green object is never the star"
    (an LM that learned it will not find a green star in the test split). False for other questions.
    ``data.vqa_questions="balanced"`` leaves such questions out of training."""
    words = question.rstrip("?").split()
    if words[:2] == ["what", "colour"] and words[-1] in SHAPES:  # "what colour is the star?"
        shape = words[-1]
        return any(is_held_out(COLOURS[int(c)], shape) for c in objects["colour"])
    if words[:2] == ["what", "shape"] and words[-2] in COLOURS:  # "what shape is the green object?"
        colour = words[-2]
        return any(is_held_out(colour, SHAPES[int(s)]) for s in objects["shape"])
    return False


def about_image(text: str, k: int) -> str:
    """``text`` (a question or prompt about one image) asked about the ``k``-th of several images:
    "what is in the image" -> "what is in the second image", "is there a red star?" -> "in the second
    image is there a red star?"."""
    if k >= len(ORDINALS):
        raise ValueError(f"about_image: image index {k} has no ordinal word; at most {len(ORDINALS)} images")
    if re.search(r"\bthe image\b", text):
        return re.sub(r"\bthe image\b", f"the {ORDINALS[k]} image", text, count=1)
    return f"in the {ORDINALS[k]} image {text}"


def vocabulary() -> list[str]:
    """Every word a caption, question, answer or prompt template can contain (sorted)."""
    fixed = """a an at and there is single picture photo image of in the on with background to above below
        center what colour shape how many objects object are biggest yes no left right top bottom middle"""
    words = set(fixed.split()) | set(COLOURS) | set(SHAPES) | set(SIZES) | set(ROWS) | set(COLS)
    words |= set(BACKGROUNDS) | set(NUMBERS)
    for template in PROMPT_TEMPLATES:
        words |= set(template.replace("{}", " ").split())
    return sorted(words)


def example_scene(
    seed: int, split: str, index: int, image_size: int = 64
) -> tuple[Scene, np.random.Generator]:
    """The scene of example ``index`` of ``split``, and the generator that then draws the rest of the
    example (its questions, then its captions): ``generate_example``'s first step, for re-rendering or
    editing an example's scene."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    return sample_scene(rng, split, image_size), rng


def generate_example(seed: int, split: str, index: int, image_size: int = 64) -> dict:
    """Example ``index`` of ``split``: image (uint8 [H, W, 3]), label, captions, QA and object metadata."""
    scene, rng = example_scene(seed, split, index, image_size)
    qs, ans, types = questions(scene, rng)
    return {
        "id": index,
        "image": render(scene),
        "label": scene.label,
        "captions": captions(scene, rng),
        "questions": qs,
        "answers": ans,
        "question_types": types,
        "background": scene.background,
        "objects": {
            k: np.array([getattr(o, k) for o in scene.objects], np.int64)
            for k in ("colour", "shape", "size", "row", "col")
        },
        "scene": scene,
    }
