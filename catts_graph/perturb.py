"""Image perturbations that take visual evidence away.

The visual self-check contrasts the base model's support for an answer under the original image and
under a noised copy, and CDRL trains on original/noised pairs. Every perturbation here has the form
``f(image, strength, seed=0, ...) -> PIL.Image``:

- ``strength`` in [0, 1]: 0 returns an identical (RGB) copy, 1 is the strongest setting; the damage
  grows monotonically in between (for a fixed seed).
- ``seed``: the same seed gives the same image, in any process.
- ``region`` (all kinds but ``viewpoint``): an optional 2-D weight map in [0, 1] of any size, resized
  bilinearly to the image, that says where the damage goes (CDRL puts it where a CLIP relevance map
  marks the regions the question is about). ``occlusion`` draws its boxes where the weights are high;
  the other kinds blend per pixel, ``out = w * f(image) + (1 - w) * image``.

Outputs are 8-bit RGB. :data:`PERTURBATIONS` names them all and :func:`perturb` dispatches by name.

**Noise at the resolution the model sees.** A vision-language model's processor resizes every image
to its input size before the model sees it, so a perturbation applied to the full-size image means
something different for every image size (a 2x downscale halves the pixel noise a model sees).
:func:`perturbed_views` therefore resizes first, to the size an ``input_size`` function names (a
backend's :meth:`input_size`), and perturbs the image at that size, as VCD adds its noise to the
processor's tensor. It returns the clean views beside the perturbed ones, so a comparison of the two
differs only by the perturbation, never by resampling. The visual self-check, the probe and the CDRL
pairs all noise through it.
:func:`gaussian_tensor` and :func:`diffusion_tensor` do the same to a processor's normalised pixel
tensor, which is where VCD itself adds its noise.

Torch is imported only by the tensor functions, so the graph can import this module cheaply.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter

if TYPE_CHECKING:
    import torch

__all__ = [
    "DIFFUSION_STEPS",
    "PERTURBATIONS",
    "blur",
    "diffusion",
    "diffusion_noise",
    "diffusion_tensor",
    "gaussian",
    "gaussian_tensor",
    "mosaic",
    "occlusion",
    "perturb",
    "perturbed_views",
    "region_weights",
    "resize_to",
    "strength_to_step",
    "vcd_alphas_cumprod",
    "viewpoint",
]

InputSize = Callable[[Image.Image], "tuple[int, int] | None"]
"""The ``(width, height)`` a model's processor resizes an image to, or None to keep its size."""

DIFFUSION_STEPS = 1000

RGB = tuple[int, int, int]

# Floor on a cell's weight in `occlusion`: zero-weight cells come last, yet strength 1 still covers them.
_MIN_CELL_WEIGHT = 1e-6


# -- VCD's forward diffusion ------------------------------------------------------------------------


def vcd_alphas_cumprod(steps: int = DIFFUSION_STEPS) -> np.ndarray:
    """cumprod(1 - beta_t) of VCD's schedule.

    ``beta = sigmoid(linspace(-6, 6, steps)) * (5e-3 - 1e-5) + 1e-5``.
    """
    betas = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, steps))) * (5e-3 - 1e-5) + 1e-5
    return np.cumprod(1.0 - betas)


_ALPHAS_CUMPROD = vcd_alphas_cumprod()
_ALPHAS_CUMPROD.flags.writeable = False  # the schedule is a constant: computed once, never changed


def diffusion_noise(image: Image.Image, step: int = 500, seed: int = 0) -> Image.Image:
    """VCD's distorted image: the forward diffusion ``q(x_t | x_0)`` at ``step`` of 1000.

    ``x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps`` with ``x_0`` the image scaled to [-1, 1]
    and ``eps ~ N(0, I)`` from ``seed``; mapped back to 8-bit RGB (clipped).
    """
    if not 0 <= step < DIFFUSION_STEPS:
        raise ValueError(f"step must be in [0, {DIFFUSION_STEPS - 1}], got {step}")
    abar = _ALPHAS_CUMPROD[step]
    x0 = np.asarray(image.convert("RGB"), dtype=np.float64) / 127.5 - 1.0
    eps = np.random.default_rng(seed).standard_normal(x0.shape)
    xt = np.sqrt(abar) * x0 + np.sqrt(1.0 - abar) * eps
    pixels = np.clip(np.rint((xt + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def strength_to_step(strength: float) -> int:
    """The diffusion step for a strength: ``t = min(round(strength * 1000), 999)``.

    Strength 0.5 is VCD's default step 500 and strength 1 the last step, 999.
    """
    s = _check_strength(strength)
    return min(round(s * DIFFUSION_STEPS), DIFFUSION_STEPS - 1)


# -- perturbations of PIL images ---------------------------------------------------------------------


def gaussian(
    image: Image.Image,
    strength: float,
    seed: int = 0,
    *,
    region: np.ndarray | None = None,
    max_sigma: float = 0.5,
) -> Image.Image:
    """Additive Gaussian pixel noise.

    ``out = clip(x + sigma * eps, 0, 1)`` with ``x`` the image scaled to [0, 1], ``eps ~ N(0, I)``
    from ``seed`` (one draw per pixel and channel) and ``sigma = strength * max_sigma``.
    """
    s = _check_strength(strength)
    rng = _rng(seed)
    _check_positive(max_sigma, "max_sigma")
    x, weights = _pixels(image), _weights(region, image)
    if s == 0:
        return _copy(image)
    noised = np.clip(x + s * max_sigma * rng.standard_normal(x.shape), 0.0, 1.0)
    return _finish(x, noised, weights)


def diffusion(
    image: Image.Image, strength: float, seed: int = 0, *, region: np.ndarray | None = None
) -> Image.Image:
    """VCD's forward diffusion noise (:func:`diffusion_noise`) at step ``t = strength_to_step(strength)``.

    ``x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps`` on the image scaled to [-1, 1], where
    ``abar_t = prod_{i <= t} (1 - beta_i)`` of the 1000-step sigmoid schedule
    (:func:`vcd_alphas_cumprod`). Strength 0 is the image itself (step 0 would still add a little
    noise); 0.5 is VCD's default step 500.
    """
    s = _check_strength(strength)
    _check_seed(seed)
    weights = _weights(region, _checked(image))
    if s == 0:
        return _copy(image)
    noised = diffusion_noise(image, strength_to_step(s), seed)
    if weights is None:
        # Weight 1 everywhere: the blend is the noised image itself, so it skips the round trip
        # through float pixels (two conversions of a whole image, at the model's input size).
        return noised
    return _finish(_pixels(image), _pixels(noised), weights)


def occlusion(
    image: Image.Image,
    strength: float,
    seed: int = 0,
    *,
    region: np.ndarray | None = None,
    grid: int = 8,
    fill: RGB = (0, 0, 0),
) -> Image.Image:
    """Boxes of colour ``fill`` covering a fraction ``strength`` of the image.

    The image is cut into ``grid x grid`` cells (boundaries ``round(i * W / grid)``, likewise for H)
    and ``k = max(1, round(strength * grid**2))`` cells are filled (so strength 1 covers everything).
    The cells are drawn without replacement with probability proportional to their weight
    (Efraimidis-Spirakis: the ``k`` largest keys ``log(w_c) + Gumbel``, from ``seed``), where ``w_c``
    is the mean of ``region`` over the cell, floored at 1e-6, or 1 for every cell without a region.
    A larger strength with the same seed covers a superset of the boxes.
    """
    s = _check_strength(strength)
    rng = _rng(seed)
    if not isinstance(grid, numbers.Integral) or isinstance(grid, bool) or grid < 1:
        raise ValueError(f"grid={grid!r}: expected an int >= 1")
    grid = int(grid)
    colour = _check_rgb(fill, "fill")
    x, weights = _pixels(image), _weights(region, image)
    if s == 0:
        return _copy(image)
    height, width = x.shape[:2]
    rows = np.rint(np.linspace(0, height, grid + 1)).astype(int)
    cols = np.rint(np.linspace(0, width, grid + 1)).astype(int)
    cell_weights = np.ones((grid, grid))
    if weights is not None:
        for i in range(grid):
            for j in range(grid):
                cell = weights[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
                cell_weights[i, j] = cell.mean() if cell.size else 0.0
    keys = np.log(np.maximum(cell_weights.ravel(), _MIN_CELL_WEIGHT)) + rng.gumbel(size=grid * grid)
    k = max(1, round(s * grid * grid))
    out = x.copy()
    for cell in np.argsort(-keys, kind="stable")[:k]:
        i, j = divmod(int(cell), grid)
        out[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = np.asarray(colour) / 255.0
    return _to_image(out)


def mosaic(
    image: Image.Image,
    strength: float,
    seed: int = 0,
    *,
    region: np.ndarray | None = None,
    max_block: float = 0.25,
) -> Image.Image:
    """Pixelation: every ``b x b`` block (from the top-left corner) takes its mean colour.

    ``b = 1 + ceil(strength * (B - 1))`` with ``B = max(2, round(max_block * min(W, H)))``, so any
    strength above 0 changes the image and strength 1 leaves about ``1 / max_block`` blocks across
    the shorter side. Blocks at the right and bottom edges may be smaller. Deterministic: ``seed``
    is accepted for the common signature and unused.
    """
    s = _check_strength(strength)
    _check_seed(seed)
    _check_fraction(max_block, "max_block")
    x, weights = _pixels(image), _weights(region, image)
    if s == 0:
        return _copy(image)
    height, width = x.shape[:2]
    largest = max(2, round(max_block * min(width, height)))
    block = 1 + math.ceil(s * (largest - 1))
    starts_y, starts_x = np.arange(0, height, block), np.arange(0, width, block)
    sums = np.add.reduceat(np.add.reduceat(x, starts_y, axis=0), starts_x, axis=1)
    counts = np.outer(np.diff(np.append(starts_y, height)), np.diff(np.append(starts_x, width)))
    means = sums / counts[:, :, None]
    pixelated = np.repeat(np.repeat(means, block, axis=0), block, axis=1)[:height, :width]
    return _finish(x, pixelated, weights)


def blur(
    image: Image.Image,
    strength: float,
    seed: int = 0,
    *,
    region: np.ndarray | None = None,
    max_radius: float = 0.1,
) -> Image.Image:
    """Gaussian blur with standard deviation ``r = strength * max_radius * min(W, H)`` pixels.

    (PIL's ``GaussianBlur(r)`` approximates a Gaussian kernel of standard deviation ``r`` with
    three box blurs.) Deterministic: ``seed`` is accepted for the common signature and unused.
    """
    s = _check_strength(strength)
    _check_seed(seed)
    _check_fraction(max_radius, "max_radius")
    x, weights = _pixels(image), _weights(region, image)
    if s == 0:
        return _copy(image)
    radius = s * max_radius * min(image.size)
    blurred = _pixels(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)))
    return _finish(x, blurred, weights)


def viewpoint(
    image: Image.Image,
    strength: float,
    seed: int = 0,
    *,
    max_shift: float = 0.25,
    fill: RGB = (0, 0, 0),
) -> Image.Image:
    """A perspective warp, as if the image plane were seen from another viewpoint.

    Each corner moves inward by ``(dx, dy) = strength * max_shift * (W * u, H * v)`` with ``u, v``
    drawn from U[0.5, 1] per corner and axis (from ``seed``); the image is mapped onto the moved
    quadrilateral by the homography through the four corner pairs (``Image.transform`` with
    ``PERSPECTIVE``, bicubic), and the uncovered border gets ``fill``. The same seed keeps the
    directions, so the displacement grows linearly with strength. Takes no ``region``: a change of
    viewpoint moves the whole image.
    """
    s = _check_strength(strength)
    rng = _rng(seed)
    if not isinstance(max_shift, numbers.Real) or not 0 < max_shift < 0.5:
        raise ValueError(f"max_shift={max_shift!r}: expected a number in (0, 0.5), so corners never meet")
    colour = _check_rgb(fill, "fill")
    if not isinstance(image, Image.Image):
        raise TypeError(f"image: got {type(image).__name__}, expected a PIL image")
    if s == 0:
        return _copy(image)
    width, height = image.size
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    shift = s * max_shift * np.array([width, height]) * rng.uniform(0.5, 1.0, size=(4, 2))
    moved = corners + inward * shift
    # PIL maps each output pixel to the input: coefficients from the moved corners to the originals.
    coefficients = _homography(moved, corners)
    return image.convert("RGB").transform(
        (width, height),
        Image.Transform.PERSPECTIVE,
        tuple(coefficients),
        resample=Image.Resampling.BICUBIC,
        fillcolor=colour,
    )


PERTURBATIONS: dict[str, Callable[..., Image.Image]] = {
    "gaussian": gaussian,
    "diffusion": diffusion,
    "occlusion": occlusion,
    "mosaic": mosaic,
    "blur": blur,
    "viewpoint": viewpoint,
}
"""Every perturbation by name; each is ``f(image, strength, seed=0, **options) -> PIL.Image``."""


def perturb(image: Image.Image, kind: str, strength: float, seed: int = 0, **options: Any) -> Image.Image:
    """Apply the perturbation named ``kind`` (a key of :data:`PERTURBATIONS`)."""
    try:
        function = PERTURBATIONS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(PERTURBATIONS)}") from None
    return function(image, strength, seed, **options)


def resize_to(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """The image as RGB at ``size = (width, height)`` (bicubic, as Qwen-VL processors resample);
    ``None`` or its own size gives an RGB copy."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image: got {type(image).__name__}, expected a PIL image")
    rgb = image.convert("RGB")
    if size is None or tuple(size) == rgb.size:
        return rgb
    width, height = size
    if not all(isinstance(v, numbers.Integral) and v > 0 for v in (width, height)):
        raise ValueError(f"size={size!r}: expected (width, height) of positive ints")
    return rgb.resize((int(width), int(height)), Image.Resampling.BICUBIC)


def perturbed_views(
    images: Sequence[Image.Image],
    kind: str,
    strength: float,
    seed: int = 0,
    *,
    input_size: InputSize | None = None,
    regions: Sequence[np.ndarray | None] | None = None,
    **options: Any,
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Each image at the model's input size, and a perturbed copy of it: ``(views, perturbed)``.

    ``views[i] = resize_to(images[i], input_size(images[i]))`` (the image itself without
    ``input_size``) and ``perturbed[i] = perturb(views[i], kind, strength, seed + i, region=regions[i])``:
    image ``i`` draws from seed ``seed + i``, so two same-size images of a question never get the
    same noise. Feeding ``views`` (not the originals) as the clean branch leaves the perturbation
    as the only difference between the two. A region map of any size is resized to the view.
    """
    images = list(images)
    if regions is not None and len(regions) != len(images):
        raise ValueError(f"regions: got {len(regions)} maps for {len(images)} images")
    _check_seed(seed)
    views = [resize_to(image, input_size(image) if input_size is not None else None) for image in images]
    perturbed = []
    for i, view in enumerate(views):
        region = regions[i] if regions is not None else None
        extra = dict(options) if region is None else {**options, "region": region}
        perturbed.append(perturb(view, kind, strength, seed + i, **extra))
    return views, perturbed


def region_weights(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D weight map in [0, 1] resized (bilinear) to ``size = (width, height)``: an (H, W) array."""
    weights = np.asarray(region, dtype=np.float64)
    if weights.ndim != 2 or weights.size == 0:
        raise ValueError(f"region: expected a non-empty 2-D weight map, got shape {weights.shape}")
    if not np.isfinite(weights).all() or weights.min() < 0 or weights.max() > 1:
        raise ValueError("region: expected weights in [0, 1] (finite)")
    resized = Image.fromarray(weights.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)


# -- perturbations of processor tensors ----------------------------------------------------------


def gaussian_tensor(
    pixel_values: torch.Tensor, strength: float, seed: int = 0, *, max_sigma: float = 2.0
) -> torch.Tensor:
    """Additive Gaussian noise on a processor's normalised pixel tensor (any shape).

    ``out = x + strength * max_sigma * eps``, ``eps ~ N(0, I)``. The pixels are normalised per
    channel (``(p - mean) / std``; CLIP's std is about 0.27), so the default ``max_sigma = 2``
    is about half the [0, 1] pixel range, like :func:`gaussian`'s default. No clipping: the
    normalised range has no hard bounds the model relies on.
    """
    s = _check_strength(strength)
    eps = _tensor_noise(pixel_values, seed)
    _check_positive(max_sigma, "max_sigma")
    if s == 0:
        return pixel_values.clone()
    return (pixel_values.float() + s * max_sigma * eps).to(pixel_values.dtype)


def diffusion_tensor(pixel_values: torch.Tensor, strength: float, seed: int = 0) -> torch.Tensor:
    """VCD's forward diffusion on a processor's normalised pixel tensor, as the VCD code does it.

    ``x_t = sqrt(abar_t) * x + sqrt(1 - abar_t) * eps`` at step ``t = strength_to_step(strength)``
    of :func:`vcd_alphas_cumprod`, ``eps ~ N(0, I)``; strength 0 returns a copy.
    """
    s = _check_strength(strength)
    eps = _tensor_noise(pixel_values, seed)
    if s == 0:
        return pixel_values.clone()
    abar = float(_ALPHAS_CUMPROD[strength_to_step(s)])
    noised = math.sqrt(abar) * pixel_values.float() + math.sqrt(1.0 - abar) * eps
    return noised.to(pixel_values.dtype)


# -- helpers -------------------------------------------------------------------------------------


def _check_strength(strength: float) -> float:
    if not isinstance(strength, numbers.Real) or isinstance(strength, bool) or not 0 <= strength <= 1:
        raise ValueError(f"strength={strength!r}: expected a number in [0, 1]")
    return float(strength)


def _check_seed(seed: int) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an int >= 0")
    return int(seed)


def _check_positive(value: float, name: str) -> None:
    if not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive number")


def _check_fraction(value: float, name: str) -> None:
    if not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"{name}={value!r}: expected a number in (0, 1]")


def _check_rgb(fill: RGB, name: str) -> RGB:
    if (
        not isinstance(fill, tuple | list)
        or len(fill) != 3
        or not all(isinstance(c, numbers.Integral) and 0 <= c <= 255 for c in fill)
    ):
        raise ValueError(f"{name}={fill!r}: expected an RGB triple of ints in [0, 255]")
    return (int(fill[0]), int(fill[1]), int(fill[2]))


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(_check_seed(seed))


def _checked(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"image: got {type(image).__name__}, expected a PIL image")
    return image


def _pixels(image: Image.Image) -> np.ndarray:
    """The image as an (H, W, 3) float array in [0, 1]."""
    return np.asarray(_checked(image).convert("RGB"), dtype=np.float64) / 255.0


def _copy(image: Image.Image) -> Image.Image:
    """Strength 0: the image itself, as a new RGB image (``convert`` always returns a new one)."""
    return image.convert("RGB")


def _to_image(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))


def _weights(region: np.ndarray | None, image: Image.Image) -> np.ndarray | None:
    """The region resized to the image, validated whatever the strength; None without a region."""
    return None if region is None else region_weights(region, image.size)


def _finish(original: np.ndarray, perturbed: np.ndarray, weights: np.ndarray | None) -> Image.Image:
    """``w * perturbed + (1 - w) * original`` with ``w`` the region's weights (1 everywhere without)."""
    if weights is not None:
        perturbed = weights[:, :, None] * perturbed + (1.0 - weights[:, :, None]) * original
    return _to_image(perturbed)


def _homography(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 8 coefficients ``(a, b, c, d, e, f, g, h)`` of the projective map taking each source
    point ``(x, y)`` to its target ``((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1))``.
    """
    rows = []
    for (x, y), (u, v) in zip(source, target, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), target.reshape(8))


def _tensor_noise(pixel_values: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise shaped like ``pixel_values``, in float32 on its device.

    Drawn on the CPU from a ``torch.Generator`` seeded with ``seed``, so the noise is the same on
    every device.
    """
    import torch

    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values: got {type(pixel_values).__name__}, expected a floating-point torch.Tensor"
        )
    generator = torch.Generator(device="cpu").manual_seed(_check_seed(seed))
    eps = torch.randn(pixel_values.shape, generator=generator, dtype=torch.float32)
    return eps.to(pixel_values.device)
