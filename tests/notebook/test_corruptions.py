"""Tests for keras_bn.corruptions: MNIST-C's corruptions at graded severities.

The contract (shapes, dtypes, the identity at severity 0, seeds, chunks) is checked for
every corruption and severity; what each corruption does is checked against references
written here: Poisson moments, exact formulas, analytic images moved by the documented
geometry, the shape of a line. The severity tables below are the documented ones,
written out again, so that a change to a documented strength fails here.
"""

import math

import numpy as np
import pytest

from keras_bn.corruptions import CORRUPTIONS, corrupt

NAMES = (
    "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
    "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag",
    "canny_edges",
)
#: The corruptions that draw nothing at random.
FIXED = {"scale", "brightness", "stripe", "canny_edges"}
RANDOM = [name for name in NAMES if name not in FIXED]
SEVERITIES = range(1, 6)


# ----------------------------------------------------------------------------------------
# Images drawn here.


def _stroke_image(segments, size=28, width=1.2):
    """An anti-aliased image of line segments ((r0, c0), (r1, c1)), ink 1 within `width`/2."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    image = np.zeros((size, size))
    for (r0, c0), (r1, c1) in segments:
        d = np.array([r1 - r0, c1 - c0], float)
        t = np.clip(((rows - r0) * d[0] + (cols - c0) * d[1]) / (d @ d), 0, 1)
        distance = np.hypot(rows - r0 - t * d[0], cols - c0 - t * d[1])
        image = np.maximum(image, np.clip(width - distance + 0.5, 0, 1))
    return image


def _ring(centre, radii, size=28):
    """An anti-aliased ellipse outline, about 2 pixels thick: a "0"."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    radius = np.hypot((rows - centre[0]) / radii[0], (cols - centre[1]) / radii[1])
    return np.clip(2.0 - abs(radius - 1) * min(radii), 0, 1)


def synthetic_digits():
    """Float64 digits `(32, 28, 28)` inside MNIST's central 20x20 box: 0, 1, 4 and 7."""
    digits = []
    for shift in range(-2, 6):
        s = shift / 2
        digits += [
            _ring((14 + s, 14), (8, 5 + s / 2)),
            _stroke_image([((5 + s, 14 + s), (23, 13 - s))]),
            _stroke_image([((5, 16 + s), (17, 6)), ((17, 6), (17, 21)), ((9, 17 + s), (23, 17))]),
            _stroke_image([((6, 7), (6, 21 - s)), ((6, 21 - s), (23, 12 + s))]),
        ]
    return np.stack(digits)


DIGITS = synthetic_digits()


def blob(centre, sigma=3.0, size=28):
    """An analytic Gaussian blob as a function of (rows, cols), and its image."""

    def f(rows, cols):
        return np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma ** 2))

    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    return f, f(rows, cols)


def mean_change(images, name, severity):
    """Mean absolute change of float images from their clean version."""
    return float(np.mean(np.abs(corrupt(images, name, severity, seed=0) - images)))


# ----------------------------------------------------------------------------------------
# The contract.


def test_the_names_are_mnist_c_s_fifteen_in_its_order():
    assert CORRUPTIONS == NAMES


@pytest.mark.parametrize("severity", range(6))
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_range(name, severity):
    uint8 = np.rint(DIGITS[:3] * 255).astype(np.uint8)
    inputs = [uint8, (uint8[..., None] / 255).astype(np.float32), DIGITS[0],
              np.float16(DIGITS[:2]), uint8[:0]]
    for images in inputs:
        before = images.copy()
        out = corrupt(images, name, severity, seed=3)
        np.testing.assert_array_equal(images, before)  # the input is left alone
        assert out.shape == images.shape and out.dtype == images.dtype
        assert not np.shares_memory(out, images)
        if out.dtype != np.uint8:
            assert np.all((out >= 0) & (out <= 1))


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(name):
    uint8 = np.rint(DIGITS[:4] * 255).astype(np.uint8)
    for images in (uint8, DIGITS[:4, :, :, None].astype(np.float32), DIGITS[5]):
        out = corrupt(images, name, 0, seed=7)
        np.testing.assert_array_equal(out, images)
        assert out.dtype == images.dtype and not np.shares_memory(out, images)


@pytest.mark.parametrize("name", NAMES)
def test_severity_one_to_five_change_the_images(name):
    for severity in SEVERITIES:
        assert mean_change(DIGITS, name, severity) > 1e-3, severity


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_bits(name):
    first = corrupt(DIGITS[:6].astype(np.float32), name, 4, seed=11)
    again = corrupt(DIGITS[:6].astype(np.float32), name, 4, seed=11)
    assert first.tobytes() == again.tobytes()


#: Random corruptions whose draw is only a direction: 2 (or, for translate, 4) outcomes.
DIRECTIONS = {"shear": 2, "rotate": 2, "translate": 4}


@pytest.mark.parametrize("name", RANDOM)
def test_other_seeds_and_other_images_draw_other_randomness(name):
    same = np.repeat(DIGITS[:1], 16, axis=0)
    out = corrupt(same, name, 3, seed=0)
    distinct = len({image.tobytes() for image in out})
    # Each image of a batch gets its own draw: 16 different noises, or every direction.
    assert distinct == DIRECTIONS.get(name, 16)
    assert not np.array_equal(out, corrupt(same, name, 3, seed=1))


@pytest.mark.parametrize("name", sorted(FIXED))
def test_the_fixed_corruptions_ignore_the_seed(name):
    np.testing.assert_array_equal(corrupt(DIGITS, name, 3, seed=0),
                                  corrupt(DIGITS, name, 3, seed=5))


@pytest.mark.parametrize("name", NAMES)
def test_chunks_equal_the_whole_set(name):
    images = np.rint(np.concatenate([DIGITS, DIGITS[::-1]]) * 255).astype(np.uint8)
    whole = corrupt(images, name, 5, seed=2)
    chunks = [corrupt(images[a:b], name, 5, seed=2, first_index=a)
              for a, b in ((0, 10), (10, 11), (11, 64))]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    one = corrupt(images[20], name, 5, seed=2, first_index=20)  # a single (H, W) image
    np.testing.assert_array_equal(one, whole[20])


def test_more_than_one_internal_chunk_keeps_each_image_s_draw():
    images = np.repeat(DIGITS[:1], 1100, axis=0)  # past the 1024 images done at once
    whole = corrupt(images, "impulse_noise", 3, seed=4)
    np.testing.assert_array_equal(whole[1050:], corrupt(images[1050:], "impulse_noise", 3,
                                                        seed=4, first_index=1050))


@pytest.mark.parametrize("name", NAMES)
def test_other_sizes_work(name):
    images = np.random.default_rng(0).random((3, 20, 33))
    out = corrupt(images, name, 3)
    assert out.shape == images.shape and np.all((out >= 0) & (out <= 1))


def _assert_monotone(images, name):
    changes = [mean_change(images, name, severity) for severity in range(6)]
    assert all(np.diff(changes) > 0), f"{name}: mean |change| by severity {changes}"


@pytest.mark.parametrize("name", NAMES)
def test_strength_grows_with_severity_on_synthetic_digits(name):
    _assert_monotone(np.concatenate([DIGITS] * 4), name)


@pytest.mark.mnist
def test_strength_grows_with_severity_on_real_digits(mnist_dir):
    from keras_bn import load_mnist

    images = load_mnist(mnist_dir).test.images[:300].astype(np.float64)
    for name in NAMES:
        _assert_monotone(images, name)


# ----------------------------------------------------------------------------------------
# What each corruption does, against references written here.


def _poisson_moments(value, photons):
    """Mean and variance of min(k / photons, 1) for k ~ Poisson(photons * value)."""
    lam = photons * value
    ks = np.arange(60)
    pmf = np.array([math.exp(-lam) * lam ** k / math.factorial(k) for k in ks])
    values = np.minimum(ks / photons, 1)
    mean = float(pmf @ values)
    return mean, float(pmf @ (values - mean) ** 2)


@pytest.mark.parametrize("severity, photons", list(zip(SEVERITIES, (12, 6, 3, 2, 1))))
def test_shot_noise_has_poisson_statistics(severity, photons):
    grey = np.full((64, 28, 28), 0.2)
    out = corrupt(grey, "shot_noise", severity, seed=1)
    counts = out * photons
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-9)  # k / c, k an integer
    mean, variance = _poisson_moments(0.2, photons)
    n = out.size
    assert abs(out.mean() - mean) < 4 * math.sqrt(variance / n)
    assert abs(out.var() / variance - 1) < 0.05
    np.testing.assert_array_equal(corrupt(np.zeros((2, 28, 28)), "shot_noise", severity), 0)


@pytest.mark.parametrize("severity, amount", list(zip(SEVERITIES, (0.03, 0.09, 0.17, 0.27, 0.38))))
def test_impulse_noise_replaces_the_expected_fraction(severity, amount):
    grey = np.full((64, 28, 28), 0.5)
    out = corrupt(grey, "impulse_noise", severity, seed=2)
    changed = out != 0.5
    assert set(np.unique(out[changed])) <= {0.0, 1.0}
    sd = math.sqrt(amount * (1 - amount) / out.size)
    assert abs(changed.mean() - amount) < 4 * sd
    assert abs((out == 1).mean() - amount / 2) < 4 * sd


def test_glass_blur_keeps_constants_ink_and_locality():
    np.testing.assert_allclose(corrupt(np.full((4, 28, 28), 0.3), "glass_blur", 5), 0.3)
    out = corrupt(DIGITS, "glass_blur", 3)
    np.testing.assert_allclose(out.sum(axis=(1, 2)) / DIGITS.sum(axis=(1, 2)), 1, atol=0.15)
    dot = np.zeros((8, 28, 28))
    dot[:, 14, 14] = 1
    out = corrupt(dot, "glass_blur", 5, seed=3)  # sigma 1.1, moves of up to 2 px, 2 rounds
    rows, cols = np.nonzero(np.any(out > 1e-3, axis=0))
    reach = 2 * math.ceil(4 * 1.1) + 2 * 2
    assert max(abs(rows - 14).max(), abs(cols - 14).max()) <= reach
    assert not np.allclose(out[0], out[1])


@pytest.mark.parametrize("severity", SEVERITIES)
def test_motion_blur_smears_a_dot_along_a_ray_within_45_degrees(severity):
    sigma = float(severity)
    dot = np.zeros((16, 41, 41))
    dot[:, 20, 20] = 1
    out = corrupt(dot, "motion_blur", severity, seed=4)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 1, atol=1e-9)  # the ink is kept
    rows, cols = np.mgrid[0:41, 0:41] - 20.0
    for image in out:
        r, c = (image * rows).sum(), (image * cols).sum()  # the trail's centre of mass
        assert abs(r) <= abs(c) + 1e-9  # within 45 degrees of the horizontal
        length = math.hypot(r, c)
        # Every inked pixel lies within a pixel of the ray and within its length.
        ink = image > 1e-9
        along = (rows * r + cols * c) / length
        across = np.abs(rows * c - cols * r) / length
        assert across[ink].max() < 1.5
        assert along[ink].min() > -1.5 and along[ink].max() < math.ceil(10 * sigma / 3) + 1.5
        assert image[20, 20] == image.max()  # the weights fall along the trail


def _matches_one_of(out, expected, tolerance):
    """Whether `out` is within `tolerance` (max abs) of one of `expected`, and how far."""
    errors = [np.abs(out - e).max() for e in expected]
    return min(errors) < tolerance, errors


def _affine_blobs(name, severity, expected_for, signs=(-1, 1)):
    """Corrupts a blob off the centre; returns the error against each expected image."""
    f, image = blob((10.0, 17.0))
    out = corrupt(image, name, severity, seed=5)
    rows, cols = np.mgrid[0:28, 0:28].astype(float) - 13.5
    return out, [expected_for(f, rows, cols, sign) for sign in signs]


@pytest.mark.parametrize("severity, k", list(zip(SEVERITIES, (0.15, 0.25, 0.4, 0.55, 0.7))))
def test_shear_matches_the_analytic_shear(severity, k):
    out, expected = _affine_blobs(
        "shear", severity, lambda f, r, c, sign: f(r + 13.5, c + sign * k * r + 13.5))
    ok, errors = _matches_one_of(out, expected, 0.04)
    assert ok and max(errors) > 0.2, errors
    kept = corrupt(DIGITS, "shear", severity).sum(axis=(1, 2)) / DIGITS.sum(axis=(1, 2))
    np.testing.assert_allclose(kept, 1, atol=0.03)  # a shear keeps the area


@pytest.mark.parametrize("severity, s", list(zip(SEVERITIES, (0.9, 0.8, 0.7, 0.6, 0.5))))
def test_scale_matches_the_analytic_shrink(severity, s):
    out, (expected,) = _affine_blobs(
        "scale", severity, lambda f, r, c, sign: f(r / s + 13.5, c / s + 13.5), signs=(1,))
    assert np.abs(out - expected).max() < 0.04
    kept = corrupt(DIGITS, "scale", severity).sum(axis=(1, 2)) / DIGITS.sum(axis=(1, 2))
    # The ink shrinks with the area; thin strokes resampled lose or gain a little.
    np.testing.assert_allclose(kept, s ** 2, rtol=0.1)


@pytest.mark.parametrize("severity, degrees", list(zip(SEVERITIES, (10, 16, 23, 34, 45))))
def test_rotate_matches_the_analytic_rotation(severity, degrees):
    def rotated(f, r, c, sign):
        a = math.radians(sign * degrees)
        cos, sin = math.cos(a), math.sin(a)
        return f(cos * r - sin * c + 13.5, sin * r + cos * c + 13.5)

    out, expected = _affine_blobs("rotate", severity, rotated)
    ok, errors = _matches_one_of(out, expected, 0.04)
    assert ok and max(errors) > 0.2, errors


@pytest.mark.parametrize("severity, c", list(zip(SEVERITIES, (0.2, 0.35, 0.5, 0.65, 0.8))))
def test_brightness_adds_and_clips(severity, c):
    out = corrupt(DIGITS, "brightness", severity)
    np.testing.assert_allclose(out, np.minimum(DIGITS + c, 1), atol=1e-12)
    assert out.mean() > DIGITS.mean() + 0.9 * c * (1 - DIGITS.mean())


def _shifted(image, dr, dc):
    """`image` moved by (dr, dc) pixels, zeros coming in."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dr, 0):h + min(dr, 0), max(dc, 0):w + min(dc, 0)] = \
        image[max(-dr, 0):h - max(dr, 0), max(-dc, 0):w - max(dc, 0)]
    return out


@pytest.mark.parametrize("severity", SEVERITIES)
def test_translate_moves_by_the_severity_s_pixels(severity):
    out = corrupt(DIGITS, "translate", severity, seed=6)
    rows, cols = np.mgrid[0:28, 0:28]
    moves = set()
    for clean, moved in zip(DIGITS, out):
        candidates = {(dr, dc): _shifted(clean, dr, dc)
                      for dr in (-severity, severity) for dc in (-severity, severity)}
        (move,) = [m for m, image in candidates.items() if np.allclose(moved, image, atol=1e-12)]
        moves.add(move)
        inked = np.nonzero(clean.any(axis=0))[0], np.nonzero(clean.any(axis=1))[0]
        margin = min(min(a.min(), 27 - a.max()) for a in inked)
        if margin >= severity:  # nothing leaves the frame: the centre of mass moves as much
            centre = [(clean * a).sum() / clean.sum() for a in (rows, cols)]
            after = [(moved * a).sum() / moved.sum() for a in (rows, cols)]
            np.testing.assert_allclose(np.subtract(after, centre), move, atol=1e-9)
    assert len(moves) == 4  # every direction turns up


@pytest.mark.parametrize("severity, width", list(zip(SEVERITIES, (2, 4, 7, 9, 11))))
def test_stripe_inverts_the_outer_columns(severity, width):
    expected = DIGITS.copy()
    expected[:, :, :width] = 1 - expected[:, :, :width]
    expected[:, :, 28 - width:] = 1 - expected[:, :, 28 - width:]
    np.testing.assert_allclose(corrupt(DIGITS, "stripe", severity), expected, atol=1e-12)


@pytest.mark.parametrize("severity, strength", list(zip(SEVERITIES, (1, 2, 3, 4, 5))))
def test_fog_adds_a_smooth_haze_and_lowers_the_contrast(severity, strength):
    out = corrupt(DIGITS, "fog", severity, seed=7)
    peak = DIGITS.max(axis=(1, 2), keepdims=True)
    haze = out - DIGITS * peak / (peak + strength)
    assert haze.min() > -1e-9 and haze.max() < strength / (1 + strength) + 1e-9
    # The haze is a field, not pixel noise: neighbours are strongly correlated.
    a, b = haze[:, :, :-1].ravel(), haze[:, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8
    assert out[DIGITS == 0].mean() > 0.1 * strength / (1 + strength)  # the background greys


@pytest.mark.parametrize("severity", SEVERITIES)
def test_spatter_covers_pixels_with_grey_mud(severity):
    out = corrupt(DIGITS, "spatter", severity, seed=8)
    mud = 63 / 255
    covered = ~np.isclose(out, DIGITS, atol=1e-12)
    # Where mud lies (weight m >= 0.8), the pixel is at least 80 % of the way to the mud.
    assert np.all(np.abs(out - mud)[covered] <= 0.2 * np.abs(DIGITS - mud)[covered] + 1e-12)
    assert 0.01 < covered.mean() < 0.5


def _line_fit(added):
    """Per column the ink-weighted row of `added` (an image), the least-squares line and
    how far each inked column's row lies from it."""
    rows = np.arange(added.shape[0])[:, None]
    inked = added.sum(axis=0) > 0
    cols = np.nonzero(inked)[0]
    centre = (added * rows).sum(axis=0)[inked] / added.sum(axis=0)[inked]
    slope, offset = np.polyfit(cols, centre, 1)
    return cols, centre - (slope * cols + offset)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_dotted_line_adds_only_bright_dashes_along_a_straight_line(severity):
    out = corrupt(DIGITS, "dotted_line", severity, seed=9)
    assert np.all(out >= DIGITS - 1e-12)
    rows, cols = np.mgrid[0:28, 0:28].astype(float)
    for added in corrupt(np.zeros((12, 28, 28)), "dotted_line", 3, seed=severity):
        assert added.max() == 1.0
        ink = added > 0
        # From the left edge to the right one, but for a gap between dashes at the end.
        assert ink[:, 0].any() and ink[:, 24:].any()
        # The line through the ink (its principal axis): every inked pixel is within a
        # stroke's half width (1.5) of it, give or take the fit, and along it the ink stops
        # and starts: dashes.
        points = np.stack([rows[ink], cols[ink]], axis=1)
        centred = points - points.mean(axis=0)
        direction = np.linalg.svd(centred, full_matrices=False)[2][0]
        across = np.abs(centred @ [-direction[1], direction[0]])
        assert across.max() < 2.0
        along = np.sort(centred @ direction)
        assert np.count_nonzero(np.diff(along) > 1.5) >= 5


@pytest.mark.parametrize("severity", SEVERITIES)
def test_zigzag_adds_only_bright_teeth_about_a_line(severity):
    out = corrupt(DIGITS, "zigzag", severity, seed=10)
    assert np.all(out >= DIGITS - 1e-12)
    for added in corrupt(np.zeros((12, 28, 28)), "zigzag", 3, seed=severity):
        cols, residual = _line_fit(added)
        assert cols.min() <= 3 and cols.max() >= 24
        signs = np.sign(residual[np.abs(residual) > 0.5])
        assert np.count_nonzero(np.diff(signs)) >= 4  # it crosses its own line again and again


def _gradient(image):
    """|gradient| of an image by NumPy's central differences."""
    return np.hypot(*np.gradient(image))


def _near(mask, pixels):
    """`mask` grown by `pixels` in every direction (a square)."""
    grown = mask.copy()
    for _ in range(pixels):
        padded = np.pad(grown, 1)
        grown = np.any([padded[1 + i:29 + i, 1 + j:29 + j] for i in (-1, 0, 1)
                        for j in (-1, 0, 1)], axis=0)
    return grown


@pytest.mark.parametrize("severity", SEVERITIES)
def test_canny_edges_lie_on_the_digit_s_outline(severity):
    uint8 = np.rint(DIGITS * 255).astype(np.uint8)
    out = corrupt(uint8, "canny_edges", severity)
    assert set(np.unique(out)) <= {0, 255}
    for clean, edges in zip(DIGITS, out == 255):
        strong = _gradient(clean) > 0.1
        # Every edge pixel is near a strong gradient, and the edges follow the outline.
        assert np.all(_near(strong, severity)[edges])
        assert _near(edges, 2)[strong].mean() > 0.9
    np.testing.assert_array_equal(corrupt(np.full((2, 28, 28), 0.5), "canny_edges"), 0)


# ----------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("name", ["gaussian_noise", "Shot_Noise", "", None, 3])
def test_an_unknown_name_lists_the_known_ones(name):
    with pytest.raises(ValueError, match=r"`name` must be one of the corruptions .*'shot_noise'"
                                         r".*'canny_edges'.*Received: name="):
        corrupt(DIGITS[:1], name)


@pytest.mark.parametrize("severity", [-1, 6, 2.0, 2.5, True, "3", None])
def test_a_severity_outside_0_to_5_is_refused(severity):
    with pytest.raises(ValueError, match=r"`severity` must be an int from 0 \(none\) to 5 "
                                         rf"\(harshest\)\. Received: severity={severity!r}"):
        corrupt(DIGITS[:1], "rotate", severity)


@pytest.mark.parametrize("argument", ["seed", "first_index"])
@pytest.mark.parametrize("value", [-1, 1.0, False, "0"])
def test_seed_and_first_index_are_ints_from_zero(argument, value):
    with pytest.raises(ValueError, match=rf"`{argument}` must be an int >= 0\. "
                                         rf"Received: {argument}={value!r}"):
        corrupt(DIGITS[:1], "rotate", **{argument: value})


@pytest.mark.parametrize("shape", [(28,), (2, 28, 28, 3), (2, 1, 28, 28, 1), (0, 28), (),
                                   (2, 0, 28, 1), (2, 28, 0)])
def test_a_wrong_shape_is_refused(shape):
    with pytest.raises(ValueError, match=r"`images` must have shape \(H, W\), \(N, H, W\) or "
                                         rf"\(N, H, W, 1\).*Received: images of shape "
                                         rf"{re_escape(shape)}"):
        corrupt(np.zeros(shape), "rotate")


def test_one_image_with_a_channel_axis_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"\(N, H, 1\) would be N images one pixel wide; "
                                         r"for one image \(H, W, 1\) pass `images\[None\]`"):
        corrupt(np.zeros((28, 28, 1)), "rotate")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, bool, np.complex64])
def test_a_dtype_other_than_uint8_or_float_is_refused(dtype):
    with pytest.raises(TypeError, match=r"`images` must be uint8 in \[0, 255\] or floating "
                                        rf"point in \[0, 1\]\. Received: images of dtype "
                                        rf"{np.dtype(dtype)}"):
        corrupt(np.zeros((2, 28, 28), dtype), "rotate")


@pytest.mark.parametrize("bad, shown", [(1.5, "max=1.5"), (-0.25, "min=-0.25"),
                                        (np.nan, "nan"), (255.0, "max=255.0")])
def test_float_images_outside_0_1_are_refused(bad, shown):
    images = np.zeros((2, 28, 28), np.float32)
    images[1, 3, 4] = bad
    with pytest.raises(ValueError, match=rf"float `images` must have values in \[0, 1\] "
                                         rf"\(uint8 images in \[0, 255\]\)\. Received: .*{shown}"):
        corrupt(images, "rotate")
    corrupt(images[:1], "rotate")  # the same array without the bad pixel passes


def re_escape(shape):
    """`shape` as the message prints it, escaped for a regular expression."""
    import re

    return re.escape(str(shape))
