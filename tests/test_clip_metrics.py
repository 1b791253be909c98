"""pathreasoner_jax.clip.metrics against values worked out by hand, and R@k against a
plain-Python loop."""
import json

import numpy as np
import pytest
from PIL import Image

from pathreasoner_jax.clip import metrics


def test_normalize_unit_rows_and_zero_row():
    out = metrics.normalize([[3.0, 4.0], [0.0, 0.0]])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_class_embeddings_normalises_each_prompt_before_averaging():
    table = {"a x": [3, 0, 0], "the x": [0, 2, 0], "a y": [0, 0, 1], "the y": [0, 0, 5]}
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([table[t] for t in texts], dtype=np.float32)

    emb = metrics.class_embeddings(encode, ["x", "y"], ["a {}", "the {}"])
    assert calls == [["a x", "the x"], ["a y", "the y"]]
    # x: mean([1,0,0], [0,1,0]) = [.5,.5,0] → [1/√2, 1/√2, 0]; without the per-prompt
    # normalisation it would be [1.5, 1, 0]/|.| instead
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(emb, [[s, s, 0], [0, 0, 1]], atol=1e-12)


def _four_images():
    # class embeddings are scaled axes (normalisation must undo the 2 and 0.5);
    # image i's cosine with class c is its normalised component c
    classes = np.array([[2.0, 0, 0], [0, 0.5, 0], [0, 0, 1]])
    images = np.array([
        [1.0, 0.5, 0],  # true 0, predicted 0
        [0.2, 1.0, 0],  # true 0, predicted 1 (wrong)
        [0, 2.0, 1.0],  # true 1, predicted 1
        [0, 0.1, 1.0],  # true 2, predicted 2
    ])
    return images, classes, np.array([0, 0, 1, 2])


def test_zero_shot_by_hand():
    images, classes, labels = _four_images()
    out = metrics.zero_shot(images, classes, labels, ["tumor", "stroma", "normal"])
    json.dumps(out)  # plain JSON
    assert out["accuracy"] == pytest.approx(0.75)
    # recalls 1/2, 1/1, 1/1 → mean 5/6 (accuracy weights class 0 twice: 3/4)
    assert out["balanced_accuracy"] == pytest.approx(5 / 6)
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    pc = out["per_class"]
    assert pc["tumor"] == {"recall": 0.5, "precision": 1.0, "support": 2}
    assert pc["stroma"] == {"recall": 1.0, "precision": 0.5, "support": 1}  # images 1, 2 predicted stroma
    assert pc["normal"] == {"recall": 1.0, "precision": 1.0, "support": 1}
    assert "top5_accuracy" not in out  # only 3 classes


def test_zero_shot_undefined_precision_and_recall_are_none():
    images, classes, _ = _four_images()
    # every image labelled "tumor": stroma/normal have no support (recall undefined),
    # and nothing is predicted for a 4th class (precision undefined)
    classes4 = np.vstack([classes, [[1.0, 1.0, 1.0]]])  # scores below each image's best
    out = metrics.zero_shot(images, classes4, [0, 0, 0, 0], ["a", "b", "c", "d"])
    assert out["per_class"]["b"]["recall"] is None
    assert out["per_class"]["d"]["precision"] is None
    assert out["per_class"]["b"]["precision"] == 0.0  # predicted twice, never right
    assert out["balanced_accuracy"] == pytest.approx(0.25)  # only class a present: recall 1/4


def test_zero_shot_top5():
    classes = np.eye(7)
    images = np.array([
        [0.1, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],  # label 0: six classes score higher → 7th, miss
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 3: 4th → hit
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 4: 5th → hit (the edge)
    ])
    out = metrics.zero_shot(images, classes, [0, 3, 4], list("abcdefg"))
    assert out["top5_accuracy"] == pytest.approx(2 / 3)
    assert out["accuracy"] == 0.0


def test_zero_shot_rejects_bad_labels():
    images, classes, _ = _four_images()
    with pytest.raises(ValueError):
        metrics.zero_shot(images, classes, [0, 1, 2, 3], ["a", "b", "c"])


# Images are (scaled) axes, so sim[i, t] is component i of text t (all texts unit norm):
#          t0   t1   t2   t3   t4   t5
#   img0  .28  .60  .96  0    0    .80     own captions t0, t1
#   img1  .96  .48  0    .60  .28  0       own captions t2, t3
#   img2  0    .64  .28  .80  .96  .60     own captions t4, t5
# image→text (best own caption's position): img0 t2,t5,t1 → 3; img1 t0,t3 → 2; img2 t4 → 1
# text→image (its image's position in its column): t0 2, t1 2, t2 3, t3 2, t4 1, t5 2
_IMAGES = np.array([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 0.5]])
_TEXTS = np.array([
    [0.28, 0.96, 0], [0.6, 0.48, 0.64],
    [0.96, 0, 0.28], [0, 0.6, 0.8],
    [0, 0.28, 0.96], [0.8, 0, 0.6],
])
_IMAGE_OF_TEXT = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("chunk", [1024, 1])  # one block, and one query per block
def test_retrieval_by_hand(chunk):
    out = metrics.retrieval(_IMAGES, _TEXTS, _IMAGE_OF_TEXT, ks=(1, 2, 5), chunk=chunk)
    json.dumps(out)
    assert (out["n_images"], out["n_texts"]) == (3, 6)
    # i2t ranks [3, 2, 1]
    assert out["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert out["image_to_text_R@2"] == pytest.approx(2 / 3)
    assert out["image_to_text_R@5"] == pytest.approx(1.0)
    assert out["image_to_text_mean_rank"] == pytest.approx(2.0)
    assert out["image_to_text_median_rank"] == pytest.approx(2.0)
    # t2i ranks [2, 2, 3, 2, 1, 2]; k=5 clamps to the 3 images
    assert out["text_to_image_R@1"] == pytest.approx(1 / 6)
    assert out["text_to_image_R@2"] == pytest.approx(5 / 6)
    assert out["text_to_image_R@5"] == pytest.approx(1.0)
    assert out["text_to_image_mean_rank"] == pytest.approx(2.0)
    assert out["text_to_image_median_rank"] == pytest.approx(2.0)


def test_retrieval_ties_count_against_the_query():
    # all scores equal: each image's 2 captions sit behind the 4 other texts (rank 5), each
    # text's image behind the 2 other images (rank 3)
    out = metrics.retrieval(np.ones((3, 2)), np.ones((6, 2)), _IMAGE_OF_TEXT, ks=(1, 5))
    assert out["image_to_text_R@1"] == 0.0 and out["image_to_text_R@5"] == 1.0
    assert out["image_to_text_mean_rank"] == 5.0
    assert out["text_to_image_R@1"] == 0.0 and out["text_to_image_mean_rank"] == 3.0


def test_retrieval_rejects_image_without_caption():
    with pytest.raises(ValueError):
        metrics.retrieval(_IMAGES, _TEXTS, [0, 0, 1, 1, 1, 1])


def _loop_recall(images, texts, image_of_text, k):
    """Plain Python: sort every candidate list by cosine, look for a hit in the first k."""
    def cos(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    i2t = 0
    for i, im in enumerate(images):
        order = sorted(range(len(texts)), key=lambda t: -cos(im, texts[t]))
        i2t += any(image_of_text[t] == i for t in order[:k])
    t2i = 0
    for t, tx in enumerate(texts):
        order = sorted(range(len(images)), key=lambda i: -cos(images[i], tx))
        t2i += image_of_text[t] in order[:k]
    return i2t / len(images), t2i / len(texts)


def test_retrieval_matches_python_loop_on_random_data():
    rng = np.random.default_rng(0)
    n, m, e = 20, 50, 8
    images, texts = rng.normal(size=(n, e)), rng.normal(size=(m, e))
    # every image gets ≥ 1 caption, the rest at random
    image_of_text = np.concatenate([rng.permutation(n), rng.integers(0, n, m - n)])
    ks = (1, 3, 5, 10, 60)
    out = metrics.retrieval(images, texts, image_of_text, ks=ks, chunk=7)
    for k in ks:
        i2t, t2i = _loop_recall(images, texts, image_of_text, k)
        assert out[f"image_to_text_R@{k}"] == pytest.approx(i2t), k
        assert out[f"text_to_image_R@{k}"] == pytest.approx(t2i), k
    assert 0 < out["image_to_text_R@1"] < out["image_to_text_R@10"] < 1  # non-trivial data


def test_confusion_png(tmp_path):
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 9]]
    path = str(tmp_path / "sub" / "confusion.png")
    assert metrics.confusion_png(cm, ["tumor", "stroma", "normal"], path) == path
    with Image.open(path) as im:
        im.verify()  # raises on a corrupt PNG
        assert im.format == "PNG"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["confusion.png"]  # no temp left
    with pytest.raises(ValueError):
        metrics.confusion_png(cm, ["a", "b"], path)
