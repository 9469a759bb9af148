"""Image pool: scanning with corrupt-file accounting, deterministic sampling, manifests, decoding."""

from __future__ import annotations

import io
import json
import os
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from ireasoner_core.config import DataConfig
from ireasoner_core.data.pool import (
    MAX_ASPECT_RATIO,
    ImagePoolError,
    PoolManifest,
    decoded_size,
    load_image,
    manifest_from_config,
    processor_problem,
    sample_pool,
    scan_images,
)


def _png(path: Path, color=(200, 30, 30), mode: str = "RGB", size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _truncated_png(path: Path) -> Path:
    _png(path, size=(32, 32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def mixed(tmp_path) -> Path:
    """3 good images, 2 corrupt ones, and files the scan must ignore."""
    _png(tmp_path / "b.png")
    (tmp_path / "a.JPG").write_bytes(_jpeg_bytes())  # extension matched case-insensitively
    _png(tmp_path / "c.gif", color=3, mode="P")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    _truncated_png(tmp_path / "half.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.json").write_text("{}")
    _png(tmp_path / ".hidden.png")
    return tmp_path


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ImagePoolError, match=re.escape(f"image folder not found: {missing}")):
        scan_images(missing)


def test_file_instead_of_folder(tmp_path):
    f = _png(tmp_path / "x.png")
    with pytest.raises(ImagePoolError, match="not a directory: .*x.png"):
        scan_images(f)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ImagePoolError, match=re.escape(f"no readable images in {tmp_path} (0 files skipped")):
        scan_images(tmp_path)


def test_only_corrupt_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "y.jpg").write_bytes(b"")
    with pytest.raises(ImagePoolError) as err:
        scan_images(tmp_path)
    msg = str(err.value)
    assert f"no readable images in {tmp_path}" in msg
    assert "2 files skipped as corrupt or unusable: x.png (" in msg and "y.jpg (" in msg


def test_corrupt_files_skipped_and_counted(mixed):
    scan = scan_images(mixed)
    assert [p.name for p in scan.images] == ["a.JPG", "b.png", "c.gif"]
    assert all(p.is_absolute() for p in scan.images)
    assert sorted(p.name for p, _ in scan.skipped) == ["garbage.png", "half.png"]
    reasons = {p.name: r for p, r in scan.skipped}
    assert "UnidentifiedImageError" in reasons["garbage.png"]


def test_subfolders_one_level_only(tmp_path):
    _png(tmp_path / "top.png")
    _png(tmp_path / "sub" / "one.png")
    _png(tmp_path / "sub" / "deep" / "two.png")
    _png(tmp_path / ".cache" / "hidden.png")
    with_sub = scan_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in with_sub.images] == ["sub/one.png", "top.png"]
    assert [p.name for p in scan_images(tmp_path, include_subfolders=False).images] == ["top.png"]
    assert [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path / "sub").images] == [
        "sub/deep/two.png", "sub/one.png"]
    _png(tmp_path / "nested" / "x" / "y" / "z.png")
    with pytest.raises(ImagePoolError, match="no readable images in .*nested"):
        scan_images(tmp_path / "nested")


def _folder_of(tmp_path: Path, n: int) -> Path:
    for i in range(n):
        _png(tmp_path / f"img{i:02d}.png", color=(i, i, i))
    return tmp_path


def test_sampling_order_is_seeded_shuffle_of_sorted_list(tmp_path):
    folder = _folder_of(tmp_path, 20)
    m = sample_pool([folder], size=None, seed=5)
    expected = sorted(str(folder.absolute() / f"img{i:02d}.png") for i in range(20))
    random.Random(5).shuffle(expected)
    assert m.images == expected
    assert sample_pool([folder], None, 5).images == m.images
    assert sample_pool([folder], None, 6).images != m.images
    assert sorted(sample_pool([folder], None, 6).images) == sorted(m.images)


def test_size_keeps_prefix_and_oversize_keeps_all(tmp_path, caplog):
    folder = _folder_of(tmp_path, 12)
    full = sample_pool([folder], None, seed=1)
    assert sample_pool([folder], 5, seed=1).images == full.images[:5]
    big = sample_pool([folder], 50, seed=1)
    assert big.images == full.images and big.size == 50
    assert big.notes == ["requested 50 images but only 12 are readable; using all of them"]
    assert "only 12 are readable" in caplog.text
    with pytest.raises(ImagePoolError, match="pool size must be .* got 0"):
        sample_pool([folder], 0, seed=1)
    with pytest.raises(ImagePoolError, match="no image folders"):
        sample_pool([], 3, seed=1)


def test_several_sources_merge_and_dedupe(tmp_path, mixed):
    other = _png(tmp_path.parent / (tmp_path.name + "_other") / "z.png").parent
    m = sample_pool([mixed, other, mixed], size=None, seed=0)
    assert sorted(Path(p).name for p in m.images) == ["a.JPG", "b.png", "c.gif", "z.png"]
    assert [Path(s) for s in m.sources] == [mixed, other, mixed]
    assert [Path(s["path"]).name for s in m.skipped] == ["garbage.png", "half.png"]
    assert set(m.skipped[0]) == {"path", "reason"}


def test_manifest_round_trip_and_hash(tmp_path, mixed):
    m = sample_pool([mixed], size=2, seed=3)
    path = m.write(tmp_path / "out" / "pool.json")
    back = PoolManifest.read(path)
    assert back == m and back.hash() == m.hash()
    assert re.fullmatch(r"[0-9a-f]{16}", m.hash())
    assert json.loads(path.read_text())["images"] == m.images


def test_hash_covers_content_and_order_only():
    m = PoolManifest(sources=["/data"], seed=0, size=2, images=["/data/a.png", "/data/b.png"])
    same = m.model_copy(update={"skipped": [{"path": "/data/x.png", "reason": "bad"}], "created_by": "other"})
    assert same.hash() == m.hash()
    for change in ({"seed": 1}, {"size": None}, {"sources": ["/other"]},
                   {"images": ["/data/b.png", "/data/a.png"]}):
        assert m.model_copy(update=change).hash() != m.hash(), change
    # Pinned so that a pool's identity in old run records stays valid across refactors.
    assert m.hash() == PoolManifest.model_validate_json(m.model_dump_json()).hash() == "d44c2897ded3f1f4"


def test_manifest_read_errors(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(ImagePoolError, match=re.escape(f"pool manifest not found: {missing}")):
        PoolManifest.read(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ImagePoolError, match=re.escape(f"invalid pool manifest {bad}")):
        PoolManifest.read(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"sources": [], "seed": "zero", "images": []}))
    with pytest.raises(ImagePoolError, match="seed: "):
        PoolManifest.read(wrong)


def test_manifest_from_config(tmp_path, mixed):
    assert manifest_from_config(DataConfig(), seed=0) is None
    sampled = manifest_from_config(DataConfig(image_dir=mixed, pool_size=2), seed=4)
    assert sampled.images == sample_pool([mixed], 2, 4).images
    written = sampled.write(tmp_path / "m.json")
    # A manifest wins over image_dir: the recorded pool is reused as is.
    assert manifest_from_config(DataConfig(image_dir=tmp_path / "gone", manifest=written), seed=9) == sampled


def test_load_image_converts_to_rgb(tmp_path):
    gray = load_image(_png(tmp_path / "g.png", color=77, mode="L"))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)
    # Fully transparent pixels become white, whatever colour is stored under them.
    clear = load_image(_png(tmp_path / "t.png", color=(10, 20, 30, 0), mode="RGBA"))
    assert clear.getpixel((0, 0)) == (255, 255, 255)
    half = load_image(_png(tmp_path / "h.png", color=(0, 0, 0, 128), mode="RGBA"))
    assert half.getpixel((0, 0)) == (127, 127, 127)  # 255 * (1 - 128/255), rounded down
    assert load_image(str(tmp_path / "g.png")).size == (8, 6)


def test_load_image_errors_name_the_file(tmp_path):
    # A truncated JPEG passes the scan's cheap verify() but fails to decode at training time.
    jpeg = _jpeg_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg[: len(jpeg) // 3])
    assert [p.name for p in scan_images(tmp_path).images] == ["cut.jpg"]
    with pytest.raises(ImagePoolError, match=re.escape(f"cannot decode image {cut}")):
        load_image(cut)
    with pytest.raises(ImagePoolError, match="image file not found: .*gone.png"):
        load_image(tmp_path / "gone.png")


def test_truncated_images_fail_even_after_lmms_eval_relaxes_pil(tmp_path):
    """lmms-eval sets PIL's global LOAD_TRUNCATED_IMAGES=True on import; pool loading stays strict."""
    import lmms_eval.api.task  # noqa: F401  (the import that flips the global)
    from PIL import Image, ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ImagePoolError, match="cannot decode image"):
        load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True     # restored for lmms-eval's own use
    assert load_image(good).size == (64, 64)


def test_16_bit_png_keeps_its_gradient(tmp_path):
    import numpy as np

    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really stored with 16 bits per pixel
    px = np.asarray(load_image(path))[0, :, 0].astype(int)
    assert px[0] == 0 and px[-1] == 255
    assert len(set(px.tolist())) > 200 and (np.diff(px) >= 0).all()  # a ramp, not a white flood
    assert abs(int(px[128]) - 128) <= 2


def test_broken_symlinks_are_skipped_and_counted(tmp_path):
    _png(tmp_path / "good.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "alias.png").symlink_to(tmp_path / "good.png")  # a working link is an image like any other
    scan = scan_images(tmp_path)
    assert [p.name for p in scan.images] == ["alias.png", "good.png"]
    reasons = {p.name: r for p, r in scan.skipped}
    assert set(reasons) == {"dangling.png", "loop.png"}
    assert all("symbolic link" in r for r in reasons.values())


def test_flow_pool_fingerprint_survives_broken_symlinks_and_sees_them_change(tmp_path):
    from tasks.pool import sources_fingerprint

    _png(tmp_path / "good.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    before = sources_fingerprint([tmp_path])
    _png(tmp_path / "missing.png")  # the dangling link now points at an image
    assert sources_fingerprint([tmp_path]) != before


# ----------------------------------------------------------------------------- issue 29: images the model cannot use


def test_aspect_ratio_limit_is_the_one_transformers_enforces(embedded_model_dir):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    cfg = json.loads((embedded_model_dir / "processor_config.json").read_text())["image_processor"]
    processors = [{}, {"factor": cfg["patch_size"] * cfg["merge_size"], "min_pixels": cfg["size"]["shortest_edge"],
                       "max_pixels": cfg["size"]["longest_edge"]}]
    sizes = [(1200, 4), (4, 1200), (201, 1), (200, 1), (1, 1), (3, 600), (3, 601), (2, 401), (640, 480)]
    for kwargs in processors:
        for w, h in sizes:
            try:
                smart_resize(h, w, **kwargs)
                refused = False
            except ValueError:
                refused = True
            assert (processor_problem(w, h) is not None) == refused, (w, h, kwargs)
    assert MAX_ASPECT_RATIO == 200


def test_a_banner_is_skipped_at_scan_and_named_in_manifest_and_log(tmp_path, caplog):
    _png(tmp_path / "good.png")
    _png(tmp_path / "banner.png", size=(1200, 4))        # a separator line from a scraped folder
    _png(tmp_path / "tall.png", size=(3, 600))            # ratio 200: the processor takes it
    with caplog.at_level("WARNING", logger="ireasoner_core.data.pool"):
        m = sample_pool([tmp_path], None, seed=0)
    assert sorted(Path(p).name for p in m.images) == ["good.png", "tall.png"]
    assert m.skipped == [{"path": str(tmp_path / "banner.png"),
                          "reason": "unusable by the model: 1200x4 pixels: aspect ratio 300 is over the "
                                    "Qwen2-VL processor's limit of 200"}]
    assert str(tmp_path / "banner.png") in caplog.text and "aspect ratio 300" in caplog.text
    # A hand-written manifest bypasses the scan: the load refuses it, naming the file, and the trainer skips it.
    with pytest.raises(ImagePoolError, match=re.escape(f"image {tmp_path / 'banner.png'} is unusable by the model")):
        load_image(tmp_path / "banner.png")


def test_a_large_image_is_downscaled_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    from ireasoner_core.data import pool

    src = tmp_path / "big.png"
    Image.effect_noise((300, 200), 40).convert("RGB").save(src)
    cache = tmp_path / "cache"
    first = load_image(src, cache_dir=cache, max_pixels=6000)
    assert first.size == decoded_size(300, 200, 6000) == (94, 63)
    assert len(list(cache.glob("*.png"))) == 1
    # The second load must not decode the source: the decode path is made to fail.
    monkeypatch.setattr(pool.ImageOps, "exif_transpose", lambda im: 1 / 0)
    again = load_image(src, cache_dir=cache, max_pixels=6000)
    assert again.tobytes() == first.tobytes()
    monkeypatch.undo()
    assert load_image(src).size == (300, 200)             # under the default cap: untouched


def test_a_large_rotated_jpeg_is_downscaled_upright(tmp_path):
    src = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                                        # stored landscape, shown portrait
    Image.effect_noise((400, 100), 40).convert("RGB").save(src, exif=exif.tobytes())
    assert load_image(src, max_pixels=4000).size == decoded_size(100, 400, 4000) == (31, 126)


def _bytes_name_png(folder: Path, name: bytes) -> None:
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        Image.new("RGB", (8, 6), (1, 2, 3)).save(f, format="PNG")


def test_a_non_utf8_file_name_is_skipped_named_and_fingerprinted(tmp_path):
    from tasks.pool import sources_fingerprint

    _png(tmp_path / "good.png")
    _bytes_name_png(tmp_path, b"\xff.png")
    m = sample_pool([tmp_path], None, seed=0)
    assert [Path(p).name for p in m.images] == ["good.png"]
    assert m.skipped == [{"path": f"{tmp_path}/\\xff.png", "reason": "file name is not valid UTF-8 (rename the file)"}]
    assert PoolManifest.read(m.write(tmp_path / "pool.json")).skipped == m.skipped
    before = sources_fingerprint([tmp_path])
    _bytes_name_png(tmp_path, b"\xfe.png")
    assert sources_fingerprint([tmp_path]) != before


def _truncated_jpeg(path: Path) -> Path:
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


@pytest.mark.slow
def test_a_run_finishes_on_the_images_it_can_use_and_names_the_others(tiny_cfg, tmp_path):
    from ireasoner_core.trainer import train

    images = tmp_path / "images"
    _png(images / "good.png", size=(64, 48))
    _png(images / "banner.png", size=(1200, 4))
    _truncated_jpeg(images / "cut.jpg")                   # passes the scan (no decoding), fails at load
    cfg = tiny_cfg(**{"data.image_dir": str(images), "schedule.iterations": 2, "checkpoint.every": 2,
                      "sampling.solver_max_new_tokens": 8, "sampling.proposer_max_new_tokens": 8})
    with pytest.warns(UserWarning, match=re.escape(f"skipping image: cannot decode image {images / 'cut.jpg'}")):
        result = train(cfg)
    assert result.iterations == 2
    pool = json.loads((cfg.checkpoint.output_dir / "pool.json").read_text())
    assert [s["path"] for s in pool["skipped"]] == [str(images / "banner.png")]
    assert result.images_skipped >= 2                     # the banner at scan, the cut JPEG at load
