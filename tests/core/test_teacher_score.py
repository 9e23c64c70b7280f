"""Scoring a pool: the cache (hits run no model call), grown pools, resume, per-image failures, file backend."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from nucleate.io import ImageError, probs_array, read_table, table_metadata, write_table
from nucleate.teacher import ProbsCache, TeacherError, load_teacher, score_images
from nucleate.teacher.random_clip import save_random_clip

CLASSES = ("nucleus", "micronucleus", "background")
RNG = np.random.default_rng(3)
POOL = {f"img{i:02d}": RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(10)}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny", "tiny")


class Spy:
    """Counts real image-model calls and the images (tiles) they saw."""

    def __init__(self, teacher):
        self.calls = self.tiles = 0
        inner = teacher.model.get_image_features

        def counted(*args, **kwargs):
            self.calls += 1
            self.tiles += kwargs["pixel_values"].shape[0]
            return inner(*args, **kwargs)

        teacher.model.get_image_features = counted


def _teacher(clip_dir, **kw):
    options = {"classes": CLASSES, "templates": ("an image of {}.",), "model": str(clip_dir), "device": "cpu",
               "batch_size": 4, **kw}
    teacher = load_teacher("clip", **options)
    return teacher, Spy(teacher)


def test_cache_hit_runs_no_model_call(clip_dir, tmp_path):
    cache = ProbsCache(tmp_path / "cache")
    teacher, spy = _teacher(clip_dir)
    first = score_images(teacher, list(POOL), POOL.__getitem__, cache=cache, chunk=3)
    assert (first.computed, first.from_cache, spy.tiles) == (10, 0, 10)
    assert cache.path(teacher.cache_key).is_file()

    fresh, fresh_spy = _teacher(clip_dir)  # a new process would build a new teacher
    again = score_images(fresh, list(POOL), POOL.__getitem__, cache=cache)
    assert fresh_spy.calls == 0 and again.computed == 0 and again.from_cache == 10
    assert again.image_ids == first.image_ids
    np.testing.assert_array_equal(again.probs, first.probs)


def test_grown_pool_computes_only_new_images(clip_dir, tmp_path):
    cache = ProbsCache(tmp_path / "cache")
    teacher, spy = _teacher(clip_dir)
    ids = list(POOL)
    score_images(teacher, ids[:6], POOL.__getitem__, cache=cache)
    assert spy.tiles == 6
    grown = score_images(teacher, ids, POOL.__getitem__, cache=cache)
    assert spy.tiles == 10 and grown.computed == 4 and grown.from_cache == 6
    direct = teacher.predict_proba([POOL[i] for i in ids])
    np.testing.assert_allclose(grown.probs, direct, atol=1e-6)
    stored = read_table("teacher_probs", cache.path(teacher.cache_key))
    assert sorted(stored.column("image_id").to_pylist()) == sorted(ids)


def test_changed_prompts_or_classes_do_not_reuse_rows(clip_dir, tmp_path):
    cache = ProbsCache(tmp_path / "cache")
    teacher, _ = _teacher(clip_dir)
    score_images(teacher, list(POOL), POOL.__getitem__, cache=cache)
    for kw in ({"templates": ("a photo of {}.",)}, {"classes": CLASSES[::-1]}):
        other, spy = _teacher(clip_dir, **kw)
        result = score_images(other, list(POOL), POOL.__getitem__, cache=cache)
        assert result.from_cache == 0 and spy.tiles == 10


def test_interrupted_run_keeps_its_rows(clip_dir, tmp_path):
    cache = ProbsCache(tmp_path / "cache")
    teacher, spy = _teacher(clip_dir)
    seen = []

    def load(image_id):
        seen.append(image_id)
        if len(seen) > 6:
            raise KeyboardInterrupt
        return POOL[image_id]

    with pytest.raises(KeyboardInterrupt):
        score_images(teacher, list(POOL), load, cache=cache, chunk=2, workers=1)
    saved = cache.load(teacher.cache_key, CLASSES)
    assert 2 <= len(saved) < 10
    resumed, spy2 = _teacher(clip_dir)
    result = score_images(resumed, list(POOL), POOL.__getitem__, cache=cache)
    assert result.from_cache == len(saved) and spy2.tiles == 10 - len(saved)


def test_unreadable_images_are_reported_and_the_rest_scored(clip_dir):
    teacher, _ = _teacher(clip_dir)
    images = dict(POOL)
    images["wrong-shape"] = np.zeros((64, 64, 4), np.uint8)  # fails in preprocessing, inside a chunk

    def load(image_id):
        if image_id == "corrupt":
            raise ImageError("pool/corrupt.tif: corrupt or truncated TIFF")
        if image_id == "gone":
            raise FileNotFoundError("pool/gone.tif: no such file")
        return images[image_id]

    ids = ["img00", "corrupt", "img01", "wrong-shape", "gone", "img02", "img00"]
    result = score_images(teacher, ids, load, chunk=4)
    assert result.image_ids == ["img00", "img01", "img02"]
    reasons = dict(result.failed)
    assert set(reasons) == {"corrupt", "gone", "wrong-shape"}
    assert "truncated" in reasons["corrupt"] and "no such file" in reasons["gone"]
    assert "(H, W, 3)" in reasons["wrong-shape"]
    np.testing.assert_allclose(result.probs, teacher.predict_proba([POOL[i] for i in result.image_ids]),
                               atol=1e-6)
    table = result.table()
    assert table_metadata(table)["classes"] == list(CLASSES)
    assert table_metadata(table)["teacher_id"] == teacher.teacher_id


def test_corrupt_cache_file_is_ignored_not_fatal(clip_dir, tmp_path):
    lines = []
    cache = ProbsCache(tmp_path / "cache", log=lines.append)
    teacher, spy = _teacher(clip_dir)
    cache.path(teacher.cache_key).parent.mkdir(parents=True)
    cache.path(teacher.cache_key).write_bytes(b"not parquet")
    result = score_images(teacher, list(POOL)[:3], POOL.__getitem__, cache=cache)
    assert result.computed == 3 and any("ignoring unreadable" in line for line in lines)
    assert len(cache.load(teacher.cache_key, CLASSES)) == 3  # rewritten as a valid file


# -- file backend ---------------------------------------------------------------------------------

def _columns(ids, probs, columns=CLASSES):
    return {"image_id": list(ids), **{c: probs[:, j].tolist() for j, c in enumerate(columns)}}


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_file_teacher_reads_columns_in_class_order(tmp_path, suffix):
    probs = RNG.dirichlet(np.ones(3), size=4)
    ids = ["a", "b", "c", "007"]
    data = _columns(ids, probs)
    table = pa.table({k: data[k] for k in ("image_id", "background", "nucleus", "micronucleus")})  # other order
    path = tmp_path / f"probs{suffix}"
    pq.write_table(table, path) if suffix == ".parquet" else pacsv.write_csv(table, path)
    teacher = load_teacher("file", classes=CLASSES, model=str(path))
    np.testing.assert_allclose(teacher.predict_proba(["c", "a", "007"]), probs[[2, 0, 3]], atol=1e-6)
    assert teacher.teacher_id.startswith(f"file:probs{suffix}@")
    result = score_images(teacher, ["a", "zzz", "b"])
    assert result.image_ids == ["a", "b"] and result.failed[0][0] == "zzz"
    assert result.failed[0][1].endswith("no row for image_id 'zzz'")
    out = write_table("teacher_probs", result.table(), tmp_path / "out.parquet")
    np.testing.assert_allclose(probs_array(out), probs[[0, 1]], atol=1e-6)


def _drop(key):
    return lambda d: {k: v for k, v in d.items() if k != key}


def _set(key, values):
    return lambda d: {**d, key: values}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [(_drop("micronucleus"), "no column for class.*micronucleus"),
     (_set("mitosis", [0.0, 0.0, 0.0]), "mitosis are not in teacher.classes"),
     (_drop("image_id"), "no 'image_id' column"),
     (_set("image_id", ["a", "b", "a"]), "'a' repeats \\(rows 0 and 2\\)"),
     (_set("nucleus", [0.2, 0.1, 0.9]), "row 2 \\(image_id c\\).*sums to"),
     (_set("nucleus", [-0.1, 0.2, 0.3]), "row 0 \\(image_id a\\).*class 0 \\(nucleus\\) is -0.1"),
     (_set("nucleus", ["x", "y", "z"]), "column 'nucleus' has type")],
)
def test_file_teacher_validation_names_the_problem(tmp_path, mutate, message):
    probs = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table(mutate(_columns(["a", "b", "c"], probs))), path)
    with pytest.raises(TeacherError, match=message):
        load_teacher("file", classes=CLASSES, model=str(path))


def test_file_teacher_missing_or_unsupported_file(tmp_path):
    with pytest.raises(TeacherError, match="probabilities file not found"):
        load_teacher("file", classes=CLASSES, model=str(tmp_path / "none.parquet"))
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(TeacherError, match="use .parquet or .csv"):
        load_teacher("file", classes=CLASSES, model=str(tmp_path / "p.json"))
    with pytest.raises(TeacherError, match="needs a path"):
        load_teacher("file", classes=CLASSES)
