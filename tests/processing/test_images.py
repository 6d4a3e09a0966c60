"""Images as users have them: every PIL mode, EXIF orientation, tiny, huge and extreme aspect ratios.

Each kind is written to a file in code, converted to RGB (checked against an independent expectation), trained on
through `SupervisedDataset` + `Collator` + one forward/backward of a tiny patched model, and scored by the lmms-eval
model. What the model cannot represent (today: empty images; a processor whose token count disagrees with the
model's features, as older transformers had for some aspect ratios, is simulated) is skipped in training with a named
reason and refused per document in evaluation while the rest of the batch is scored.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, LlavaOnevisionImageProcessorPil

from llava_manager import apply_manager, get_managers
from llava_manager.families.llava_onevision import ONEVISION_PINPOINTS, onevision_0_5b_config
from llava_manager.processing.images import (
    ImageError,
    model_feature_count,
    open_image,
    processor_token_count,
    to_rgb,
    unsupported_reason,
)
from llava_manager.processing.processors import build_processor
from llava_manager.synthetic.data import draw_shape, tiny_model_config, tiny_processor
from llava_manager.training.data import BATCH_INFO, Collator, SupervisedDataset

EXTREME_SIZES = [
    (1, 1),
    (1, 2),
    (2, 1),
    (3, 1),
    (12, 2400),
    (2400, 12),
    (1, 4000),
    (4000, 1),
    (3000, 4000),
    (4000, 3000),
    (767, 2),
    (385, 1),
]  # (width, height)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def rgb_of(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


# ---------------------------------------------------------------------------------------------------------------------
# Conversion to RGB, against independent expectations


def test_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once
    expected = rgb_of(np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.int64))
    path = tmp_path / "gradient16.png"
    Image.frombytes("I;16", (256, 256), values.astype("<u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16"
    assert (pixels(Image.open(path).convert("RGB")) == 255).mean() > 0.99  # what a plain convert does: white
    converted = open_image(path)
    assert converted.mode == "RGB" and np.array_equal(pixels(converted), expected)
    big_endian = Image.frombytes("I;16B", (256, 256), values.astype(">u2").tobytes())
    assert np.array_equal(pixels(to_rgb(big_endian)), expected)


def test_32_bit_integer_and_float(tmp_path):
    values = np.arange(65536, dtype=np.int32).reshape(256, 256)
    Image.fromarray(values).save(tmp_path / "int.tif")
    expected = rgb_of(np.floor(values * 255 / 65535 + 0.5).astype(np.int64))
    assert Image.open(tmp_path / "int.tif").mode == "I"
    assert np.array_equal(pixels(open_image(tmp_path / "int.tif")), expected)
    eight_bit = np.arange(256, dtype=np.int32).reshape(16, 16)  # an I image holding 8-bit values stays as it is
    assert np.array_equal(pixels(to_rgb(Image.fromarray(eight_bit))), rgb_of(eight_bit.astype(np.int64)))

    levels = np.arange(256).reshape(16, 16)
    unit = ((levels + np.where(levels < 255, 0.25, -0.25)) / 255).astype(np.float32)  # 0..1, off the midpoints
    Image.fromarray(unit).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    assert np.array_equal(pixels(open_image(tmp_path / "float.tif")), rgb_of(levels))
    wide = np.array([[-3.0, 0.0, 99.7, 254.6, 300.0, np.nan]], dtype=np.float32)  # 8-bit floats: rounded, clipped
    assert np.array_equal(pixels(to_rgb(Image.fromarray(wide)))[..., 0], [[0, 0, 100, 255, 255, 0]])


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 10, 10, 0)  # invisible red: white
    rgba[0, 1] = (200, 10, 10, 255)  # opaque red
    rgba[0, 2] = (0, 0, 0, 128)  # half black
    rgba[1] = (10, 200, 10, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = pixels(open_image(tmp_path / "rgba.png"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1].tolist() == [[255, 255, 255]] * 3
    assert out[0, 1].tolist() == [200, 10, 10]
    assert np.abs(out[0, 2] - 255 * (1 - 128 / 255)).max() <= 1

    la = np.array([[[30, 0], [30, 255], [0, 128]]], dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = pixels(open_image(tmp_path / "la.png"))
    assert out[0, 0].tolist() == [255] * 3 and out[0, 1].tolist() == [30] * 3
    assert np.abs(out[0, 2] - 127).max() <= 1

    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    palette.putdata([0, 1, 2])
    palette.save(tmp_path / "p.png")
    assert pixels(open_image(tmp_path / "p.png")).tolist() == [[[0, 0, 0], [255, 0, 0], [0, 0, 255]]]
    palette.save(tmp_path / "p_transparent.png", transparency=0)  # index 0 (black) transparent
    assert Image.open(tmp_path / "p_transparent.png").info.get("transparency") == 0
    assert pixels(open_image(tmp_path / "p_transparent.png")).tolist() == [[[255, 255, 255], [255, 0, 0], [0, 0, 255]]]

    premultiplied = Image.new("RGBa", (1, 1), (0, 0, 0, 0))  # premultiplied modes are unpremultiplied first
    assert pixels(to_rgb(premultiplied)).tolist() == [[[255, 255, 255]]]
    assert pixels(to_rgb(Image.new("La", (1, 1), (0, 0)))).tolist() == [[[255, 255, 255]]]


def test_cmyk_one_bit_and_grayscale(tmp_path):
    cmyk = Image.new("CMYK", (4, 1))
    cmyk.putdata([(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)])
    cmyk.save(tmp_path / "cmyk.tif")
    assert pixels(open_image(tmp_path / "cmyk.tif")).tolist() == [
        [[0, 255, 255], [255, 0, 255], [0, 0, 0], [255, 255, 255]]
    ]

    bits = np.array([[0, 1, 1, 0]], dtype=bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    assert np.array_equal(pixels(open_image(tmp_path / "bits.png")), rgb_of(bits.astype(np.int64) * 255))

    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(pixels(open_image(tmp_path / "gray.png")), rgb_of(gray.astype(np.int64)))


# EXIF orientation -> how the stored pixels become the upright image (EXIF 2.3, tag 0x0112), in numpy terms.
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),  # mirrored horizontally, then rotated 90 counter-clockwise
    6: lambda a: np.rot90(a, k=-1),  # rotated 90 clockwise
    7: lambda a: np.rot90(a[:, ::-1], k=-1),  # mirrored horizontally, then rotated 90 clockwise
    8: lambda a: np.rot90(a, k=1),  # rotated 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # 64 wide, 32 high; red top-left, blue bottom-right
    stored[:16, :32] = (255, 0, 0)
    stored[16:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"orientation{orientation}.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    decoded = pixels(Image.open(path).convert("RGB"))  # the stored pixels as the JPEG decoder gives them
    upright = open_image(path)
    assert np.array_equal(pixels(upright), ORIENTATIONS[orientation](decoded))
    if orientation == 6:  # rotated 90 clockwise: 32 wide, 64 high, the stored top-left (red) now top-right
        assert upright.size == (32, 64)
        assert pixels(upright)[2, 29].tolist() == pytest.approx([255, 0, 0], abs=30)
        assert pixels(upright)[61, 2].tolist() == pytest.approx([0, 0, 255], abs=30)


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="corrupt image") as error:
        open_image(tmp_path / "broken.png")
    assert error.value.reason == "corrupt image"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "whole.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:200])
    with pytest.raises(ImageError, match="corrupt image"):
        open_image(tmp_path / "truncated.jpg")
    with pytest.raises(ImageError, match="missing image") as error:
        open_image(tmp_path / "nowhere.png")
    assert error.value.reason == "missing image"


def test_truncated_files_are_refused_even_when_a_library_allows_them(tmp_path, monkeypatch):
    """lmms-eval sets PIL's process-wide `ImageFile.LOAD_TRUNCATED_IMAGES = True` at import; a truncated training
    image must still be refused, not decoded half grey, and the flag is left as it was."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    rng = torch.Generator().manual_seed(0)
    noise = (torch.rand(96, 96, 3, generator=rng) * 255).to(torch.uint8).numpy()
    Image.fromarray(noise).save(tmp_path / "whole.jpg")
    (tmp_path / "half.jpg").write_bytes(
        (tmp_path / "whole.jpg").read_bytes()[: (tmp_path / "whole.jpg").stat().st_size // 2]
    )
    with Image.open(tmp_path / "half.jpg") as image:
        image.load()  # PIL itself accepts it under the flag
    with pytest.raises(ImageError, match="corrupt image"):
        open_image(tmp_path / "half.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


# ---------------------------------------------------------------------------------------------------------------------
# What the model can represent


def onevision_processor(tokenizer):
    """The 0.5B-SI checkpoint's image preprocessing (384 px crops, 27 x 27 patches, pinpoints 384..2304)."""
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 384, "width": 384}, image_grid_pinpoints=ONEVISION_PINPOINTS
    )
    return build_processor(
        image_processor,
        tokenizer,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )


def test_every_size_is_representable_and_the_count_is_the_models(processor):
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(tiny_model_config(processor)).eval()
    for width, height in EXTREME_SIZES[:8] + [(5, 113), (57, 1), (199, 7)]:
        image = Image.new("RGB", (width, height), (90, 20, 200))
        assert unsupported_reason(processor, image) is None
        assert unsupported_reason(processor, image, model.config) is None
        inputs = processor.image_processor([[image]], return_tensors="pt")
        with torch.no_grad():
            [features] = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
        tokens = len(processor.replace_image_token(inputs, 0)) // len(processor.image_token)
        assert model_feature_count(model.config, height, width) == len(features) == tokens
    # The real 0.5B-SI layout: processor and model agree on every size, 1 px and 4000 px sides included.
    big, config = onevision_processor(processor.tokenizer), onevision_0_5b_config()
    sizes = EXTREME_SIZES + [(w, h) for h in (1, 2, 3, 12, 383, 384, 385) for w in range(1, 4001, 37)]
    for width, height in sizes:
        assert processor_token_count(big, height, width) == model_feature_count(config, height, width), (width, height)
        assert unsupported_reason(big, Image.new("1", (width, height)), config) is None
    assert processor_token_count(big, 3000, 4000) == model_feature_count(config, 3000, 4000) == 7309


def test_empty_images_are_not_representable(processor):
    for size in [(0, 5), (5, 0), (0, 0)]:
        assert unsupported_reason(processor, Image.new("RGB", size)) == f"empty image ({size[0]}x{size[1]} pixels)"
        assert unsupported_reason(processor, Image.new("RGB", size), multi_image=True).startswith("empty image")


def off_by_one(processor, width: int, height: int):
    """`processor` counting one token too many for `width` x `height` images, as transformers' processor did for
    some aspect ratios before 4.49 (issues #34625, #35775): the model then raises at its first forward."""
    count = processor._get_number_of_features

    def wrong(orig_height, orig_width, *args):
        return count(orig_height, orig_width, *args) + ((orig_height, orig_width) == (height, width))

    processor._get_number_of_features = wrong
    return processor


def test_a_token_feature_mismatch_is_found_before_the_model(processor):
    wrong = off_by_one(tiny_processor(), 2400, 12)
    image = Image.new("RGB", (2400, 12), (200, 30, 30))
    reason = unsupported_reason(wrong, image)
    assert reason == (
        "the processor writes 17 image tokens for a 2400x12 image (aspect ratio 200.0:1) but the model "
        "packs 16 features"
    )
    assert unsupported_reason(wrong, Image.new("RGB", (12, 2400))) is None
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(tiny_model_config(wrong)).eval()
    inputs = wrong(text=["<image> red"], images=[[image]], return_tensors="pt")
    with pytest.raises(ValueError, match="Image features and image tokens do not match"), torch.no_grad():
        model(**inputs)


# ---------------------------------------------------------------------------------------------------------------------
# Training: every kind through SupervisedDataset + Collator + one forward/backward


def shape(size=(56, 28)):
    return draw_shape("circle", "red", "left", "white", (size[1], size[0]))  # draw_shape takes (height, width)


def write_kinds(folder) -> dict[str, str]:
    """One file per kind of image users have; returns kind -> file name."""
    folder.mkdir(exist_ok=True)
    base = shape()
    files = {}

    def save(kind, image, name, **kwargs):
        image.save(folder / name, **kwargs)
        files[kind] = name

    save("L", base.convert("L"), "l.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    save("RGBA", rgba, "rgba.png")
    save("LA", rgba.convert("LA"), "la.png")
    save("P", base.quantize(8), "p.png")
    save("P+transparency", base.quantize(8), "p_transparent.png", transparency=0)
    save("CMYK", base.convert("CMYK"), "cmyk.jpg")
    save("I;16", Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257), "i16.png")
    save("I", Image.fromarray(np.asarray(base.convert("L"), dtype=np.int32) * 257), "i32.tif")
    save("F", Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255), "f.tif")
    save("1", base.convert("1"), "bits.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    save("EXIF-6 JPEG", base, "exif6.jpg", exif=exif.tobytes())
    save("1x1", Image.new("RGB", (1, 1), (200, 30, 30)), "one.png")
    save("4000x3000", shape((4000, 3000)), "big.jpg", quality=80)
    save("2400x12", shape((2400, 12)), "wide.png")
    save("12x2400", shape((12, 2400)), "tall.png")
    save("multi-image 1x1 + 2400x12", Image.new("RGB", (1, 1)), "one_b.png")
    return files


KINDS = [
    "L",
    "RGBA",
    "LA",
    "P",
    "P+transparency",
    "CMYK",
    "I;16",
    "I",
    "F",
    "1",
    "EXIF-6 JPEG",
    "1x1",
    "4000x3000",
    "2400x12",
    "12x2400",
    "multi-image 1x1 + 2400x12",
]


@pytest.fixture(scope="module")
def training(processor, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    files = write_kinds(folder)
    torch.manual_seed(0)
    model = apply_manager(AutoModelForImageTextToText.from_config(tiny_model_config(processor)), interval=2)
    with torch.no_grad():
        for manager in get_managers(model):
            manager.weight.normal_(std=0.5)
    return folder, files, model.train()


def record(image) -> dict:
    return {
        "id": "x",
        "image": image,
        "conversations": [{"from": "human", "value": "What colour is the shape ?"}, {"from": "gpt", "value": "red ."}],
    }


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_trains(processor, training, kind):
    folder, files, model = training
    image = [files[kind], files["2400x12"]] if kind.startswith("multi-image") else files[kind]
    sample = SupervisedDataset([record(image)], processor, folder, strict=True)[0]
    assert sample["skipped"] == []
    batch = Collator(processor.tokenizer.pad_token_id)([sample, sample])
    assert batch.pop(BATCH_INFO) == {"skipped": []}
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [manager.weight.grad for manager in get_managers(model)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_training_images_are_converted_like_open_image(processor, training):
    folder, files, _ = training
    dataset = SupervisedDataset([record(files["I;16"])], processor, folder)
    assert np.array_equal(pixels(dataset.load_image(files["I;16"])), pixels(shape().convert("L").convert("RGB")))
    assert dataset.load_image(files["EXIF-6 JPEG"]).size == (28, 56)  # 56 x 28 stored, rotated upright


def test_unrepresentable_images_are_skipped_with_a_named_reason(training):
    folder, files, _ = training
    wrong = off_by_one(tiny_processor(), 2400, 12)
    records = [record(files["2400x12"]), record(files["L"])]
    sample = SupervisedDataset(records, wrong, folder)[0]
    [skip] = sample["skipped"]
    assert skip["reason"] == "unsupported image"
    assert skip["detail"] == (
        "unsupported image: wide.png: the processor writes 17 image tokens for a 2400x12 image "
        "(aspect ratio 200.0:1) but the model packs 16 features"
    )
    assert sample["image_sizes"].tolist() == [[28, 56]]  # the next sample (l.png) instead
    with pytest.raises(ValueError, match=r"sample 0 \(id 'x'\): unsupported image: wide.png: .* 2400x12"):
        SupervisedDataset(records, wrong, folder, strict=True)[0]
    (folder / "broken.png").write_bytes(b"\x89PNG broken")  # corrupt and missing files: skipped as before
    sample = SupervisedDataset([record("broken.png"), record("nowhere.png"), record(files["L"])], wrong, folder)[0]
    assert [s["reason"] for s in sample["skipped"]] == ["corrupt image", "missing image"]


def test_analysis_inputs_are_converted_and_bad_files_skipped(processor, tmp_path, caplog):
    from llava_manager.analysis.inputs import load_samples

    write_kinds(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"broken")
    with caplog.at_level("WARNING"):
        samples = load_samples(tmp_path, processor=off_by_one(tiny_processor(), 2400, 12))
    assert len(samples) == 16 - 1 and all(image.mode == "RGB" for image, _ in samples)
    assert "broken.png" in caplog.text and "wide.png" in caplog.text and "2400x12" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation: per-document refusal in the lmms-eval model


@pytest.fixture(scope="module")
def evaluator(processor, tmp_path_factory):
    pytest.importorskip("lmms_eval")
    from llava_manager.evaluation.lmms_eval_model import LlavaOvManager

    root = tmp_path_factory.mktemp("eval_model")
    torch.manual_seed(0)
    model = apply_manager(AutoModelForImageTextToText.from_config(tiny_model_config(processor)), interval=2)
    with torch.no_grad():
        for manager in get_managers(model):
            manager.weight.normal_(std=2.0)
    model.save_pretrained(root)
    processor.save_pretrained(root)
    lm = LlavaOvManager(pretrained=str(root), device="cpu", dtype="float32", batch_size=4)
    lm.task_dict = {
        "shapes": {
            "test": [
                {"image": shape()},  # 0: good
                {"image": Image.new("RGB", (0, 5))},  # 1: empty: the model cannot represent it
                {"image": draw_shape("square", "blue", "top", "black", (56, 56)).convert("RGBA")},  # 2: good, RGBA
                {"image": shape((2400, 12))},  # 3: good here; the simulated mismatch of `off_by_one`
                {"image": {"bytes": b"?"}},  # 4: not an image
            ]
        }
    }
    return lm


def generate(lm, doc_ids):
    from lmms_eval.api.instance import Instance

    kwargs = {"max_new_tokens": 4, "temperature": 0, "until": ["."]}
    return lm.generate_until(
        [
            Instance(
                "generate_until",
                ("What colour is the shape ?", kwargs, lambda doc: [doc["image"]], d, "shapes", "test"),
                idx=0,
                metadata={"task": "shapes", "doc_id": d, "repeats": 1},
            )
            for d in doc_ids
        ]
    )


def loglikelihood(lm, doc_ids):
    from lmms_eval.api.instance import Instance

    return [
        r.text
        for r in lm.loglikelihood(
            [
                Instance(
                    "loglikelihood",
                    ("What colour is the shape ?", " red", lambda doc: [doc["image"]], d, "shapes", "test"),
                    idx=0,
                    metadata={"task": "shapes", "doc_id": d, "repeats": 1},
                )
                for d in doc_ids
            ]
        )
    ]


@pytest.fixture
def messages():
    from loguru import logger

    caught = []
    handler = logger.add(lambda message: caught.append(str(message)), level="WARNING")
    yield caught
    logger.remove(handler)


def test_refused_documents_and_the_rest_of_the_batch(evaluator, messages):
    alone = generate(evaluator, [0]) + generate(evaluator, [2])
    assert all(alone)
    assert generate(evaluator, [0, 1, 4]) == [alone[0], "", ""]  # in one batch: doc 0 as when scored alone
    pair = generate(evaluator, [0, 2])
    assert generate(evaluator, [0, 1, 2]) == [pair[0], "", pair[1]]  # the others as when batched without it
    assert any(
        "refusing document 1 of task shapes (split test): unsupported image: empty image (0x5 pixels); "
        'it gets an empty answer ("")' in m
        for m in messages
    )
    assert any("refusing document 4 of task shapes" in m and "type dict is not an image" in m for m in messages)
    assert any("generate_until: refused 2 of 3 requests" in m for m in messages)

    scored = loglikelihood(evaluator, [0, 2])
    mixed = loglikelihood(evaluator, [0, 1, 2, 4])
    assert mixed[0] == scored[0] and mixed[2] == scored[1] and math.isfinite(scored[0][0])
    assert mixed[1] == mixed[3] == (math.inf, False)  # never the argmin of lmms-eval's multiple choice
    assert any("refusing document 1 of task shapes" in m and "+inf negative log-likelihood" in m for m in messages)


def test_mismatch_is_refused_before_the_model_or_caught_at_run_time(evaluator, messages, monkeypatch):
    alone = generate(evaluator, [0])
    alone_ll = loglikelihood(evaluator, [0])
    off_by_one(evaluator._image_processor, 2400, 12)
    try:
        assert generate(evaluator, [0, 3]) == [alone[0], ""]
        assert any(
            "refusing document 3 of task shapes (split test): unsupported image: the processor writes 17 "
            "image tokens for a 2400x12 image" in m
            for m in messages
        )
        messages.clear()
        # Without the check the model itself raises for the batch: each document is then scored on its own.
        monkeypatch.setattr("llava_manager.evaluation.lmms_eval_model.unsupported_reason", lambda *args, **kwargs: None)
        assert generate(evaluator, [0, 3]) == [alone[0], ""]
        assert loglikelihood(evaluator, [3, 0]) == [(math.inf, False), alone_ll[0]]
        assert any(
            "refusing document 3 of task shapes" in m and "Image features and image tokens do not match" in m
            for m in messages
        )
    finally:
        del evaluator._image_processor._get_number_of_features
