"""The shapes world: seeded, vectorized images of coloured shapes with natural captions.

Every image has five attributes (colour, shape, size, position, background). Rendering is pure
torch on a batch at once, so a training stream of thousands of images per second costs little.
The same (seed, n, placement) always gives the same images, captions and labels.

Two placements: "grid" draws each shape at one of 5 fixed positions and 3 sizes (small jitter);
"free" draws it at a continuous position, size and rotation with the whole shape inside the frame,
its size and position labels being the nearest named size and position.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MopeError

COLOURS = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (235, 215, 30), "green": (40, 170, 60),
    "cyan": (40, 200, 220), "blue": (40, 70, 220), "purple": (140, 50, 190), "pink": (245, 140, 200),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
SIZES = {"small": 0.15, "medium": 0.22, "large": 0.29}
POSITIONS = {"center": (0.5, 0.5), "top left": (0.3, 0.3), "top right": (0.7, 0.3),
             "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7)}
BACKGROUNDS = {"black": (20, 20, 20), "gray": (115, 115, 115), "white": (240, 240, 240)}
ATTRIBUTES = ("colour", "shape", "size", "position", "background")
IMAGE_SIZE = 64
PLACEMENTS = ("grid", "free")
FREE_RADIUS = (0.12, 0.33)  # shape radius as a fraction of the image side, free placement
FREE_ROTATION = 15.0  # degrees either way: ±45° would turn a square into a diamond, a cross into an X
_EXTENT = 1.25  # every mask lies within this many radii of its centre (the triangle's corners: 1.24)


@dataclass
class ShapesBatch:
    """Images as uint8 (N, H, W, 3), attribute labels as int64 columns, captions per image."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    captions: list[list[str]]

    def __len__(self) -> int:
        return self.images.shape[0]

    def names(self, attribute: str) -> list[str]:
        vocab = attribute_names(attribute)
        return [vocab[i] for i in self.labels[attribute].tolist()]


def attribute_names(attribute: str) -> list[str]:
    return list({"colour": COLOURS, "shape": SHAPES, "size": SIZES,
                 "position": POSITIONS, "background": BACKGROUNDS}[attribute])


def check_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise MopeError(f"unknown shapes placement '{placement}'; use one of {', '.join(PLACEMENTS)}")
    return placement


def sample(n: int, seed: int = 0, image_size: int = IMAGE_SIZE, captions_per_image: int = 5,
           detail: str = "mixed", placement: str = "grid") -> ShapesBatch:
    """Draw n images of the world with a given seed and placement (deterministic)."""
    check_placement(placement)
    gen = torch.Generator().manual_seed(seed)
    labels = {a: torch.randint(len(attribute_names(a)), (n,), generator=gen) for a in ATTRIBUTES}
    images = render(labels, gen, image_size, placement)
    rng = random.Random(seed)
    captions = [[caption(_attrs(labels, i), rng, detail) for _ in range(captions_per_image)]
                for i in range(n)]
    return ShapesBatch(images, labels, captions)


def _attrs(labels: dict[str, torch.Tensor], i: int) -> dict[str, str]:
    return {a: attribute_names(a)[int(labels[a][i])] for a in ATTRIBUTES}


def _polar(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sqrt(u * u + v * v), torch.atan2(v, u)


# Each shape as a mask on normalized coordinates (radius 1, y pointing down), in SHAPES order.
_MASKS = (
    lambda u, v: _polar(u, v)[0] <= 1.0,                                                       # circle
    lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.8,                                       # square
    lambda u, v: (v <= 0.7) & (u.abs() <= (v + 1.0) * 0.6),                                    # triangle
    lambda u, v: u.abs() + v.abs() <= 1.0,                                                     # diamond
    lambda u, v: _star(*_polar(u, v)),                                                         # star
    lambda u, v: ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95)),  # cross
    lambda u, v: (_polar(u, v)[0] <= 1.0) & (_polar(u, v)[0] >= 0.55),                         # ring
    lambda u, v: torch.maximum(v.abs(), u.abs() * 0.866 + v.abs() * 0.5) <= 0.9,               # hexagon
)


def _star(r: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return r <= 0.45 + 0.55 * torch.cos(2.5 * (theta + torch.pi / 2)).abs() ** 3


def _jitter(gen: torch.Generator, scale: float, *shape: int) -> torch.Tensor:
    return (torch.rand(*shape, generator=gen) * 2 - 1) * scale


@dataclass
class Geometry:
    """Per image: centre (N, 2) and radius (N,) in pixels, rotation (N,) in radians or None."""

    centre: torch.Tensor
    radius: torch.Tensor
    angle: torch.Tensor | None = None


def grid_geometry(labels: dict[str, torch.Tensor], gen: torch.Generator, image_size: int) -> Geometry:
    """The labelled size and position with a little jitter, no rotation."""
    n, s = labels["size"].shape[0], image_size
    radius = torch.tensor(list(SIZES.values()))[labels["size"]] * (1 + _jitter(gen, 0.08, n)) * s
    centre = torch.tensor(list(POSITIONS.values()))[labels["position"]] * s + _jitter(gen, 0.04, n, 2) * s
    return Geometry(centre, radius)


def free_geometry(labels: dict[str, torch.Tensor], gen: torch.Generator, image_size: int) -> Geometry:
    """Continuous size, position (whole shape inside the frame) and rotation; relabels size and position."""
    n, s = labels["size"].shape[0], image_size
    lo, hi = FREE_RADIUS
    fraction = lo + torch.rand(n, generator=gen) * (hi - lo)
    margin = _EXTENT * fraction + 1.0 / s
    centre = margin.unsqueeze(1) + torch.rand(n, 2, generator=gen) * (1 - 2 * margin).unsqueeze(1)
    angle = _jitter(gen, FREE_ROTATION * torch.pi / 180, n)
    sizes = torch.tensor(list(SIZES.values()))
    labels["size"] = (fraction.unsqueeze(1) - sizes).abs().argmin(1)
    labels["position"] = torch.cdist(centre, torch.tensor(list(POSITIONS.values()))).argmin(1)
    return Geometry(centre * s, fraction * s, angle)


def render(labels: dict[str, torch.Tensor], gen: torch.Generator, image_size: int,
           placement: str = "grid") -> torch.Tensor:
    """Vectorized rendering with colour jitter, the placement's geometry and pixel noise.

    Free placement rewrites labels["size"] and labels["position"] to what was drawn.
    """
    n = labels["colour"].shape[0]
    s = image_size
    colour = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[labels["colour"]] + _jitter(gen, 18, n, 3)
    background = (torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32)[labels["background"]]
                  + _jitter(gen, 12, n, 3))
    geometry = (grid_geometry if check_placement(placement) == "grid" else free_geometry)(labels, gen, s)
    u, v = _shape_coordinates(geometry, s)
    mask = torch.zeros(n, s, s)
    for k, shape_mask in enumerate(_MASKS):  # each image's own shape only
        idx = (labels["shape"] == k).nonzero().squeeze(1)
        if len(idx):
            mask[idx] = shape_mask(u[idx], v[idx]).float()
    mask = mask.unsqueeze(-1)
    image = mask * colour.view(n, 1, 1, 3) + (1 - mask) * background.view(n, 1, 1, 3)
    image = image + torch.randn(image.shape, generator=gen) * 8.0
    return image.clamp(0, 255).round().to(torch.uint8)


def _shape_coordinates(geometry: Geometry, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's coordinates in each image's shape frame (radius 1, rotated by the image's angle)."""
    n = geometry.radius.shape[0]
    grid = torch.arange(s, dtype=torch.float32) + 0.5
    radius = geometry.radius.view(n, 1, 1)
    x = ((grid.view(1, 1, s) - geometry.centre[:, 0].view(n, 1, 1)) / radius).expand(n, s, s)
    y = ((grid.view(1, s, 1) - geometry.centre[:, 1].view(n, 1, 1)) / radius).expand(n, s, s)
    if geometry.angle is None:
        return x, y
    cos, sin = torch.cos(geometry.angle).view(n, 1, 1), torch.sin(geometry.angle).view(n, 1, 1)
    return cos * x + sin * y, cos * y - sin * x


_PHRASES = {
    "position": {"center": "in the center", "top left": "in the top left corner",
                 "top right": "in the top right corner", "bottom left": "in the bottom left corner",
                 "bottom right": "in the bottom right corner"},
}
_OPENERS = ("a", "a photo of a", "an image of a", "a picture of a", "there is a", "a drawing of a")


def caption(attrs: dict[str, str], rng: random.Random, detail: str = "mixed") -> str:
    """One natural caption naming a random subset of the attributes.

    detail: "mixed" (any subset that names the colour or the shape), "full" (colour, shape and at
    least two of size / position / background), "class" (colour and shape only).
    """
    if detail == "class":
        extras: list[str] = []
        named = {"colour", "shape"}
    else:
        extras = [a for a in ("size", "position", "background") if rng.random() < 0.5]
        if detail == "full":
            while len(extras) < 2:
                extras = sorted(set(extras) | {rng.choice(("size", "position", "background"))})
            named = {"colour", "shape"}
        else:
            named = rng.choice(({"colour", "shape"},) * 4 + ({"colour"}, {"shape"}))
    noun = attrs["shape"] if "shape" in named else "shape"
    adjectives = ([attrs["size"]] if "size" in extras else []) + ([attrs["colour"]] if "colour" in named else [])
    text = f"{rng.choice(_OPENERS)} {' '.join(adjectives + [noun])}"
    tails = []
    if "position" in extras:
        tails.append(_PHRASES["position"][attrs["position"]])
    if "background" in extras:
        tails.append(f"on a {attrs['background']} background")
    rng.shuffle(tails)
    text = " ".join([text] + tails)
    return text.replace("a orange", "an orange")


def stream(batch_size: int, seed: int = 0, start: int = 0, image_size: int = IMAGE_SIZE,
           placement: str = "grid", grid_every: int = 0):
    """Endless (step, ShapesBatch with one caption per image); batch i is a function of (seed, i).

    With grid_every=k > 0, every k-th batch (steps k-1, 2k-1, …) uses grid placement instead.
    """
    step = start
    while True:
        yield step, stream_batch(batch_size, seed, step, image_size, placement, grid_every)
        step += 1


def stream_batch(batch_size: int, seed: int, step: int, image_size: int = IMAGE_SIZE,
                 placement: str = "grid", grid_every: int = 0) -> ShapesBatch:
    """Batch `step` of the stream `stream(batch_size, seed, placement=…, grid_every=…)`."""
    if grid_every > 0 and step % grid_every == grid_every - 1:
        placement = "grid"
    return sample(batch_size, seed=_stream_seed(seed, step), image_size=image_size, captions_per_image=1,
                  placement=placement)


def named_labels(captions: list[str]) -> dict[str, torch.Tensor]:
    """Per attribute, the value each caption names, or -100 where it names none (cross-entropy's ignore)."""
    out = {}
    for attribute in ATTRIBUTES:
        names = attribute_names(attribute)
        phrases = ([_PHRASES["position"][p] for p in names] if attribute == "position" else
                   [f"{b} background" for b in names] if attribute == "background" else names)
        out[attribute] = torch.tensor([next((i for i, p in enumerate(phrases) if f" {p}" in f" {c}"), -100)
                                       for c in captions])
    return out


def _stream_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step, 7919]).generate_state(1)[0])
