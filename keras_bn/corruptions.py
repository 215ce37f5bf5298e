"""MNIST-C's fifteen corruptions, in NumPy, at five graded severities.

Mu and Gilmer's MNIST-C corrupts the MNIST test set fifteen ways, each at one strength,
chosen so that the digit stays readable. `corrupt` applies the same fifteen, written
here in NumPy, at severities 1 to 5: severity 3 is MNIST-C's strength, 1 and 2 are
milder, 4 and 5 harsher, and 0 is the clean image. Where MNIST-C has no strength
(stripe, dotted line, zigzag, canny edges), the grades are this module's and severity 3
is MNIST-C's version. On real digits the mean absolute change from the clean image grows
with the severity for every corruption (the tests check it).

| corruption | what it does | severities 1 to 5 |
| --- | --- | --- |
| `shot_noise` | Poisson noise, `poisson(c x) / c` | `c` = 12, 6, 3, 2, 1 |
| `impulse_noise` | pixels set to 0 or 1 (even odds) | 3, 9, 17, 27, 38 % |
| `glass_blur` | blur, pixels moved, blur | (sigma, reach, rounds) below |
| `motion_blur` | a one-sided trail, -45 to 45 degrees | sigma 1, 2, 3, 4, 5 px |
| `shear` | `col += k (row - centre)`, either way | `k` = 0.15, 0.25, 0.4, 0.55, 0.7 |
| `scale` | shrunk about the centre | 0.9, 0.8, 0.7, 0.6, 0.5 |
| `rotate` | about the centre, either way | 10, 16, 23, 34, 45 degrees |
| `brightness` | `x + c` | `c` = 0.2, 0.35, 0.5, 0.65, 0.8 |
| `translate` | moved along each axis, either way | 1, 2, 3, 4, 5 px |
| `stripe` | outer columns inverted, `1 - x` | 2, 4, 7, 9, 11 each side |
| `fog` | `(x + c f) m / (m + c)`, `f` fractal | `c` = 1, 2, 3, 4, 5 |
| `spatter` | blobs of grey mud (63 / 255) | 3, 7, 13, 23, 36 % covered |
| `dotted_line` | dashed lines, edge to edge | 1 line at 0.4, 0.7, 1; 2; 3 |
| `zigzag` | zigzag lines, teeth 2 px high | 1 line at 0.4, 0.7, 1; 2; 3 |
| `canny_edges` | Canny's edge map, 0 or 1 | blur sigma 0.5, 0.75, 1, 1.5, 2 |

Glass blur's (sigma, reach, rounds) are (0.5, 1, 1), (0.6, 1, 2), (0.7, 1, 2),
(0.9, 2, 1) and (1.1, 2, 2): a Gaussian blur of `sigma` pixels, then `rounds` rounds in
which each pixel has even odds of taking the value of a neighbour up to `reach` pixels
away, then the blur again. Fog's field `f` in [0, 1] is rougher with severity
(diamond-square's decay 2, 1.7, 1.4, 1.3, 1.2) and `m` is the image's maximum. Dotted
lines and zigzags come at brightness 0.4, 0.7 and 1 for severities 1 to 3, then two and
three lines at 1. Results are clipped to [0, 1] (or [0, 255]). Strengths are in pixels
of 28x28 images and stay in pixels at other sizes. Stripe, as in MNIST-C, inverts its
columns: background there turns white and ink there turns dark.

Every image draws its randomness from its own generator, seeded by `seed`, the
corruption and the image's index in the whole set (`first_index` plus its place in the
batch), so a set corrupted in chunks equals the set corrupted at once, and two
corruptions of one image draw independently. Scale, brightness, stripe and canny edges
draw nothing.

The code is this module's own; what each corruption does follows the paper and its
published code, with these differences: the shear is a pure shear (MNIST-C's,
scikit-image's shear angle of 0.4 radians, also rescaled the rows by `cos(0.4)`); glass
blur's pixels take a neighbour's value rather than swap with it, so that the batch is
done at once; fog's fractal field is drawn in Fourier space with diamond-square's
spectrum; dashes are measured along the line, not along the columns.

Reference:
    - [Mu and Gilmer, 2019](https://arxiv.org/abs/1906.02337), "MNIST-C: A Robustness
      Benchmark for Computer Vision".
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["CORRUPTIONS", "corrupt"]

#: The fifteen corruptions, in MNIST-C's order.
CORRUPTIONS = (
    "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
    "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag",
    "canny_edges",
)

#: Images corrupted at once: keeps the float64 work arrays a few MB each.
_CHUNK = 1024
#: Grey of MNIST-C's mud, 63 of 255.
_MUD = 63 / 255


def corrupt(images, name, severity=3, *, seed=0, first_index=0):
    """Returns `images` corrupted by MNIST-C's corruption `name` at `severity`.

    The result is a new array of the input's shape and dtype: uint8 images in `[0, 255]`
    come back uint8 (rounded and clipped), float images in `[0, 1]` come back in the
    same float dtype, clipped to `[0, 1]`. The input is never modified. Severity 0
    returns an equal copy; severities 1 to 5 grow in strength, 3 being MNIST-C's (the
    table in the module's docstring). The same `seed` gives the same output bit for bit.

    Args:
        images: one image `(H, W)` or a batch `(N, H, W)` or `(N, H, W, 1)`, uint8 in
            `[0, 255]` or float in `[0, 1]`, as `keras_bn.load_mnist` returns them.
        name: one of `CORRUPTIONS`, e.g. `"shot_noise"`.
        severity: an int from 0 (none) to 5 (harshest). Defaults to `3`.
        seed: an int >= 0; with the corruption and the image's index it seeds each
            image's own generator. Defaults to `0`.
        first_index: the index of `images[0]` in the whole set, so that a set
            corrupted in chunks (`first_index=10` for `images[10:]`) gets the
            randomness it would get at once. Defaults to `0`.

    Returns:
        The corrupted images, a new array of the same shape and dtype.

    Raises:
        ValueError: for an unknown `name` (the message lists `CORRUPTIONS`), a
            `severity` other than an int in 0..5, a `seed` or `first_index` other than
            an int >= 0, a shape other than `(H, W)`, `(N, H, W)` or `(N, H, W, 1)`
            (or `(N, H, 1)`, which reads as images one pixel wide: for one image
            `(H, W, 1)` pass `images[None]`), or float images with values outside
            `[0, 1]` (NaN included).
        TypeError: if `images` are neither uint8 nor floating point.

    Example:

    >>> import numpy as np
    >>> from keras_bn.corruptions import corrupt
    >>> digit = np.zeros((28, 28), np.uint8)
    >>> digit[6:22, 12:16] = 255  # a "1"
    >>> rotated = corrupt(digit, "rotate", severity=3, seed=0)
    >>> rotated.shape, rotated.dtype, bool(np.any(rotated != digit))
    ((28, 28), dtype('uint8'), True)
    >>> np.array_equal(corrupt(digit, "rotate", 0), digit)
    True
    >>> batch = np.repeat(digit[None, :, :, None] / 255, 4, axis=0)
    >>> whole = corrupt(batch, "shot_noise", seed=1)
    >>> halves = [corrupt(batch[:2], "shot_noise", seed=1),
    ...           corrupt(batch[2:], "shot_noise", seed=1, first_index=2)]
    >>> np.array_equal(whole, np.concatenate(halves))
    True
    """
    _check_choice(name, severity)
    seed = _check_index("seed", seed)
    first_index = _check_index("first_index", first_index)
    array = _check_images(images)
    if severity == 0:
        return array.copy()
    spatial = array.shape[1:3] if array.ndim == 4 else array.shape[-2:]
    batch = array.reshape((-1,) + spatial)
    corruption, stream = _CORRUPTIONS[name], CORRUPTIONS.index(name)
    out = np.empty(batch.shape, np.float64)
    for start in range(0, len(batch), _CHUNK):
        chunk = batch[start:start + _CHUNK].astype(np.float64)
        if array.dtype == np.uint8:
            chunk /= 255
        rngs = [np.random.default_rng([seed, stream, first_index + start + i])
                for i in range(len(chunk))]
        out[start:start + len(chunk)] = corruption(chunk, severity - 1, rngs)
    out = np.clip(out, 0.0, 1.0).reshape(array.shape)
    if array.dtype == np.uint8:
        return np.rint(out * 255).astype(np.uint8)
    return out.astype(array.dtype)


def _check_choice(name, severity):
    """Raises a `ValueError` unless `name` is a corruption and `severity` an int in 0..5."""
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise ValueError(
            f"`name` must be one of the corruptions {CORRUPTIONS}. Received: name={name!r}"
        )
    if not _is_int(severity) or not 0 <= severity <= 5:
        raise ValueError(
            "`severity` must be an int from 0 (none) to 5 (harshest). "
            f"Received: severity={severity!r}"
        )


def _check_index(argument, value):
    """Returns `int(value)`, or raises a `ValueError` naming `argument` unless an int >= 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"`{argument}` must be an int >= 0. Received: {argument}={value!r}")
    return int(value)


def _is_int(value):
    """Whether `value` is an int (NumPy's included), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_images(images):
    """Returns `images` as an array, or raises for a wrong dtype, shape or value range."""
    array = np.asarray(images)
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            "`images` must be uint8 in [0, 255] or floating point in [0, 1]. "
            f"Received: images of dtype {array.dtype}"
        )
    shape = array.shape
    spatial = shape[1:3] if array.ndim == 4 else shape[-2:]
    if not (array.ndim in (2, 3) or (array.ndim == 4 and shape[-1] == 1)) or 0 in spatial:
        raise ValueError(
            "`images` must have shape (H, W), (N, H, W) or (N, H, W, 1) with H, W >= 1. "
            f"Received: images of shape {shape}"
        )
    if array.ndim == 3 and shape[-1] == 1:
        raise ValueError(
            "`images` of shape (N, H, 1) would be N images one pixel wide; for one image "
            f"(H, W, 1) pass `images[None]`. Received: images of shape {shape}"
        )
    if array.dtype != np.uint8 and array.size:
        low, high = np.min(array), np.max(array)
        if not (low >= 0 and high <= 1):  # False for NaN too
            raise ValueError(
                "float `images` must have values in [0, 1] (uint8 images in [0, 255]). "
                f"Received: images with min={low} and max={high}"
            )
    return array


# The corruptions. Each takes float64 images `(n, h, w)` in [0, 1], the severity's index
# (0 for severity 1) and one generator per image, and returns images `corrupt` clips.


def _shot_noise(x, level, rngs):
    """Poisson noise: a pixel `x` becomes `poisson(c x) / c`, `c` photons for white."""
    photons = (12, 6, 3, 2, 1)[level]
    return np.stack([rng.poisson(photons * image) for rng, image in zip(rngs, x)]) / photons


def _impulse_noise(x, level, rngs):
    """Salt and pepper: a fraction of the pixels, drawn at random, set to 0 or 1 (even odds)."""
    amount = (0.03, 0.09, 0.17, 0.27, 0.38)[level]
    draws = _per_image(rngs, lambda rng: rng.random((2,) + x.shape[1:]))
    return np.where(draws[:, 0] < amount, 1.0 * (draws[:, 1] < 0.5), x)


def _glass_blur(x, level, rngs):
    """A blur; then, in each round, each pixel has even odds of taking the value of a
    neighbour up to `reach` pixels away along each axis; then the blur again."""
    sigma, reach, rounds = ((0.5, 1, 1), (0.6, 1, 2), (0.7, 1, 2), (0.9, 2, 1), (1.1, 2, 2))[level]
    n, h, w = x.shape

    def moves(rng):
        steps = rng.integers(-reach, reach + 1, (rounds, 2, h, w))
        return steps * (rng.random((rounds, 1, h, w)) < 0.5)

    images, rows, cols = np.arange(n)[:, None, None], np.arange(h)[:, None], np.arange(w)
    x = _blur(x, sigma)
    for step in np.moveaxis(_per_image(rngs, moves), 1, 0):
        x = x[images, np.clip(rows + step[:, 0], 0, h - 1), np.clip(cols + step[:, 1], 0, w - 1)]
    return _blur(x, sigma)


def _motion_blur(x, level, rngs):
    """A one-sided trail: the image shifted by 0, 1, ..., `ceil(10 sigma / 3)` pixels along
    an angle drawn in [-45, 45] degrees, weighted by a Gaussian of `sigma` in the shift
    (MNIST-C's radius 10 for sigma 3)."""
    sigma = (1.0, 2.0, 3.0, 4.0, 5.0)[level]
    angles = np.deg2rad(_per_image(rngs, lambda rng: rng.uniform(-45, 45)))[:, None, None]
    shifts = np.arange(int(np.ceil(10 * sigma / 3)) + 1)
    weights = np.exp(-0.5 * (shifts / sigma) ** 2)
    rows, cols = np.arange(x.shape[1])[:, None], np.arange(x.shape[2])
    trail = sum(weight * _sample(x, rows + shift * np.sin(angles), cols - shift * np.cos(angles))
                for shift, weight in zip(shifts, weights))
    return trail / weights.sum()


def _shear(x, level, rngs):
    """A horizontal shear about the centre, `column += k (row - centre)`, either way."""
    k = (0.15, 0.25, 0.4, 0.55, 0.7)[level] * _signs(rngs)
    return _warp(x, _matrices(1, 0, k, 1, n=len(x)))


def _scale(x, level, rngs):
    """The image shrunk about its centre by a factor `s`."""
    s = (0.9, 0.8, 0.7, 0.6, 0.5)[level]
    return _warp(x, _matrices(1 / s, 0, 0, 1 / s, n=len(x)))


def _rotate(x, level, rngs):
    """A rotation about the centre by an angle, either way."""
    angle = np.deg2rad((10, 16, 23, 34, 45)[level]) * _signs(rngs)
    cos, sin = np.cos(angle), np.sin(angle)
    return _warp(x, _matrices(cos, -sin, sin, cos, n=len(x)))


def _brightness(x, level, rngs):
    """`x + c`: for a grey image, what raising the value channel of HSV by `c` does."""
    return x + (0.2, 0.35, 0.5, 0.65, 0.8)[level]


def _translate(x, level, rngs):
    """The image moved `c` pixels along each axis, each way drawn; zeros come in."""
    signs = _per_image(rngs, lambda rng: 2.0 * rng.integers(2, size=2) - 1)
    shift = (1, 2, 3, 4, 5)[level] * signs
    return _warp(x, _matrices(1, 0, 0, 1, n=len(x)), shift)


def _stripe(x, level, rngs):
    """The outer `c` columns at each side inverted, `1 - x` (MNIST-C: 7 of 28)."""
    width = min((2, 4, 7, 9, 11)[level], x.shape[2] // 2)
    x = x.copy()
    for side in (slice(0, width), slice(x.shape[2] - width, x.shape[2])):
        x[:, :, side] = 1 - x[:, :, side]
    return x


def _fog(x, level, rngs):
    """A fractal haze `f` in [0, 1] added `c` times and the contrast scaled back:
    `(x + c f) m / (m + c)`, `m` the image's maximum; rougher haze with severity."""
    strength, decay = ((1.0, 2.0), (2.0, 1.7), (3.0, 1.4), (4.0, 1.3), (5.0, 1.2))[level]
    peak = x.max(axis=(1, 2), keepdims=True)
    return (x + strength * _fractal(rngs, x.shape[1:], decay)) * peak / (peak + strength)


def _spatter(x, level, rngs):
    """Mud: where a blurred noise field N(0.65, 0.3) passes a threshold, the image turns
    grey (63 / 255), the blobs' edges softened; a lower threshold with severity."""
    threshold = (0.69, 0.67, 0.65, 0.63, 0.61)[level]
    liquid = _blur(_per_image(rngs, lambda rng: rng.normal(0.65, 0.3, x.shape[1:])), 1.0)
    mud = _blur(1.0 * (liquid > threshold), 1.5)
    mud[mud < 0.8] = 0.0
    return x * (1 - mud) + _MUD * mud


#: Dotted lines and zigzags per severity: how many lines, and how bright.
_LINES = ((1, 0.4), (1, 0.7), (1, 1.0), (2, 1.0), (3, 1.0))


def _dotted_line(x, level, rngs):
    """Dashed lines, 2 pixels on and 2 off, from the left edge to the right edge between
    rows drawn at random, added to the image."""
    count, brightness = _LINES[level]
    n, h, w = x.shape
    ends = _per_image(rngs, lambda rng: rng.uniform(0, h - 1, (count, 2)))
    for line in range(count):
        start = np.stack([ends[:, line, 0], np.zeros(n)], axis=-1)
        stop = np.stack([ends[:, line, 1], np.full(n, w - 1.0)], axis=-1)
        distance, along = _segment(x.shape[1:], start, stop)
        x = x + brightness * _ink(distance) * (along % 4 < 2)
    return x


def _zigzag(x, level, rngs):
    """Zigzag lines added to the image: teeth 2 pixels high every 4 pixels, along a line
    from column 2 to `w - 3` that climbs or falls up to 5 pixels, inside rows 2 to `h - 3`."""
    count, brightness = _LINES[level]
    n, h, w = x.shape
    ends = _per_image(rngs, lambda rng: rng.uniform([[2, -5]] * count, [[h - 3, 5]] * count))
    ends[..., 1] = np.clip(ends[..., 0] + ends[..., 1], 2, h - 3)
    teeth = max(1, round((w - 5) / 4))
    for line in range(count):
        start = np.stack([ends[:, line, 0], np.full(n, 2.0)], axis=-1)
        stop = np.stack([ends[:, line, 1], np.full(n, w - 3.0)], axis=-1)
        across = (stop - start)[:, ::-1] * [1, -1] / np.hypot(*(stop - start).T)[:, None]
        corners = [start + (stop - start) * j / teeth + 2.0 * (-1) ** j * across
                   for j in range(teeth + 1)]
        strokes = [_segment(x.shape[1:], a, b)[0] for a, b in itertools.pairwise(corners)]
        ink = _ink(np.min(strokes, axis=0))
        x = x + brightness * ink
    return x


def _canny_edges(x, level, rngs):
    """Canny's edge map, 0 or 1, after a Gaussian blur of `sigma` (MNIST-C: 1)."""
    return _canny(x, (0.5, 0.75, 1.0, 1.5, 2.0)[level])


_CORRUPTIONS = dict(zip(CORRUPTIONS, (
    _shot_noise, _impulse_noise, _glass_blur, _motion_blur, _shear, _scale, _rotate,
    _brightness, _translate, _stripe, _fog, _spatter, _dotted_line, _zigzag, _canny_edges,
)))


# What the corruptions share.


def _per_image(rngs, draw):
    """Stacks `draw(rng)` over the images' generators."""
    return np.stack([draw(rng) for rng in rngs])


def _signs(rngs):
    """-1 or +1 per image, even odds: which way an image is sheared or rotated."""
    return _per_image(rngs, lambda rng: 2.0 * rng.integers(2) - 1)


def _matrices(a, b, c, d, *, n):
    """The `n` matrices `[[a, b], [c, d]]`, each entry a number or `n` numbers."""
    return np.stack(np.broadcast_arrays(a, b, c, d, np.empty(n))[:4], axis=-1).reshape(n, 2, 2)


def _warp(x, matrices, shift=(0.0, 0.0)):
    """Images whose pixel `p` (row, column) is `x` at `centre + matrix (p - centre) - shift`,
    interpolated bilinearly; `shift` is one pair or one per image."""
    h, w = x.shape[1:]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])[:, None, None]
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")) - centre
    source = np.einsum("nij,jhw->nihw", matrices, grid) + centre
    source -= np.reshape(shift, (-1, 2, 1, 1))
    return _sample(x, source[:, 0], source[:, 1])


def _sample(x, rows, cols):
    """Bilinear values of the images `x` `(n, h, w)` at `rows` and `cols` (broadcast to
    `(n, h, w)`); 0 outside the image."""
    n, h, w = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    top, left = np.floor(rows), np.floor(cols)
    down, right = rows - top, cols - left
    images = np.arange(n)[:, None, None]

    def at(dr, dc):
        # Clipped to the zero border: a pixel outside the image reads 0.
        i = np.clip(top + dr, -1, h).astype(np.intp) + 1
        j = np.clip(left + dc, -1, w).astype(np.intp) + 1
        return padded[images, i, j]

    return ((1 - down) * ((1 - right) * at(0, 0) + right * at(0, 1))
            + down * ((1 - right) * at(1, 0) + right * at(1, 1)))


def _blur(x, sigma):
    """`x` blurred over its last two axes by a Gaussian of `sigma` pixels, edges repeated."""
    radius = max(1, int(np.ceil(4 * sigma)))
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    for axis in (-2, -1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded, size = np.moveaxis(np.pad(x, pad, mode="edge"), axis, 0), x.shape[axis]
        x = np.moveaxis(sum(w * padded[k:k + size] for k, w in enumerate(weights)), 0, axis)
    return x


def _fractal(rngs, shape, decay):
    """Per image a fractal field in [0, 1] of `shape`, with diamond-square's statistics
    (MNIST-C's fog) drawn in Fourier space.

    Diamond-square divides its random displacements by `decay` each time the scale halves,
    so the field's amplitude falls as `frequency ** -(1 + log2(decay))`. The field is made
    on a square twice the image's size, so that it does not wrap around, scaled to [0, 1]
    there and cropped.
    """
    size = 2 * max(shape)
    grid = np.meshgrid(np.fft.fftfreq(size), np.fft.rfftfreq(size), indexing="ij")
    frequency = np.hypot(*grid)
    frequency[0, 0] = np.inf  # no constant term
    noise = _per_image(rngs, lambda rng: rng.standard_normal((size, size)))
    spectrum = np.fft.rfft2(noise) * frequency ** -(1 + np.log2(decay))
    field = np.fft.irfft2(spectrum, s=(size, size))[:, :shape[0], :shape[1]]
    low = field.min(axis=(1, 2), keepdims=True)
    return (field - low) / (field.max(axis=(1, 2), keepdims=True) - low)


def _segment(shape, start, stop):
    """Each pixel's distance to the segments `start`-`stop` (`(n, 2)` rows and columns)
    and how far along them its nearest point is, in pixels."""
    rows = np.arange(shape[0])[:, None] - start[:, 0, None, None]
    cols = np.arange(shape[1]) - start[:, 1, None, None]
    d_row, d_col = ((stop - start)[:, :, None, None]).transpose(1, 0, 2, 3)
    length = np.maximum(np.hypot(d_row, d_col), 1e-12)
    t = np.clip((rows * d_row + cols * d_col) / length ** 2, 0, 1)
    return np.hypot(rows - t * d_row, cols - t * d_col), t * length


def _ink(distance):
    """A stroke's brightness at `distance` pixels from its centre line: 1 up to half a
    pixel, fading to 0 at one and a half (a line about 2 pixels wide, anti-aliased)."""
    return np.clip(1.5 - distance, 0.0, 1.0)


def _canny(x, sigma, low=0.1, high=0.2):
    """Canny's edge map (0 or 1) of images in [0, 1], with scikit-image's thresholds on the
    Sobel gradient's magnitude."""
    h, w = x.shape[1:]

    def shifted(a, dr, dc):
        # `a` padded by one pixel, moved by (dr, dc): the neighbour of each pixel.
        return a[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    smooth = np.pad(_blur(x, sigma), ((0, 0), (1, 1), (1, 1)), mode="edge")
    pairs = ((-1, 1), (0, 2), (1, 1))  # Sobel: a difference, smoothed by (1, 2, 1) across it
    down = sum(k * (shifted(smooth, 1, i) - shifted(smooth, -1, i)) for i, k in pairs)
    right = sum(k * (shifted(smooth, i, 1) - shifted(smooth, i, -1)) for i, k in pairs)
    magnitude = np.hypot(down, right)
    # Thin the edges: keep a pixel whose magnitude is at least that of both neighbours
    # along the gradient, its direction rounded to 45 degrees.
    sector = np.rint(np.mod(np.arctan2(down, right), np.pi) / (np.pi / 4)).astype(int) % 4
    padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))
    ridge = np.zeros(magnitude.shape, bool)
    for s, (dr, dc) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead, behind = shifted(padded, dr, dc), shifted(padded, -dr, -dc)
        ridge |= (sector == s) & (magnitude >= ahead) & (magnitude >= behind)
    # Hysteresis: the strong pixels, then the weak ones that touch them, until none joins.
    weak, edges = ridge & (magnitude >= low), ridge & (magnitude >= high)
    while True:
        padded = np.pad(edges, ((0, 0), (1, 1), (1, 1)))
        grown = weak & np.any([shifted(padded, i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], 0)
        if np.array_equal(grown, edges):
            return 1.0 * edges
        edges = grown
