"""The embedded model's predictions depend on its image: the warm-start's loss on held-out synthetic
images is lower with each example's own image than with another image of the same kind.

This is the floor of the "model organism": if the image pathway broke (pixels not reaching the
merger, image tokens misplaced, a collapsed tower), the gap would vanish while the loss on the
text prior stayed low. Measured with these 30 images on the shipped build v3-974d36d86a-w70070b0db5,
identical to 4 decimals with 1 and 2 threads: describe gap 0.079 (transcripts), direct answers
0.059, benchmark-formatted Solver 0.011, Solver 0.009 (too thin to assert). A gap is a difference
of mean losses, which floats move by ~1e-5 (docs/embedded_model.md, "How far floats move it"); a
broken pathway gives exactly 0.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_the_embedded_model_reads_its_image(embedded_model_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from ireasoner_core.embedded.diagnose import image_reliance

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(embedded_model_dir)
    r = image_reliance(model, AutoProcessor.from_pretrained(embedded_model_dir), images=30, per_pool=24)
    # Transcripts ("Bars: red=5, ...") can only come from the image: the clearest signal.
    assert r["describe"]["gap"] > 0.04, r
    # Direct answers to benchmark-formatted questions are also better with the right figure.
    assert r["direct"]["gap"] > 0.003, r


def test_too_few_images_to_swap_within_a_kind_is_refused():
    from ireasoner_core.embedded.diagnose import image_reliance

    with pytest.raises(ValueError, match="images=4"):
        image_reliance(None, None, images=4)


def test_the_circle_label_probe_draws_circles_that_differ_only_in_their_radius(embedded_model_dir):
    """The probe's question is sound: every image is a circle, and the radii drawn vary, so a model
    that writes one transcript for all of them (a prior) scores at most the share of one radius."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from ireasoner_core.data.synthetic import make_item
    from ireasoner_core.embedded.diagnose import HELD_OUT_SEED, label_reading

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(embedded_model_dir)
    r = label_reading(model, AutoProcessor.from_pretrained(embedded_model_dir), circles=12)
    radii = {make_item(i, "geometry", seed=HELD_OUT_SEED, occurrence=3 * i + 2)[0].meta["radius"] for i in range(12)}
    assert r["distinct_drawn"] == len(radii) >= 6, (r, radii)
    records = r["records"]
    assert len(records) == r["circles"] == 12
    assert all(e["drawn"].startswith("A circle with radius r=") for e in records), r
    # The counts are of what was read: exact matches, and distinct transcripts.
    assert r["exact"] == sum(e["read"] == e["drawn"] for e in records), r
    assert r["distinct_written"] == len({e["read"] for e in records}), r


def test_the_circle_label_probe_refuses_zero_circles():
    from ireasoner_core.embedded.diagnose import label_reading

    with pytest.raises(ValueError, match="circles=0"):
        label_reading(None, None, circles=0)
