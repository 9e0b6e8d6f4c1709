"""eval / sweep / tune on the user's own data: image folders, text files, sentence-pair files.

Small folders and files are written by the tests: Fashion-MNIST test images as PNGs (the same
images the built-in source reads, so both must give the same figures), skimage photos for an RGB
model, gensim's texts as .txt / .csv / .jsonl / pair files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, cli
from test_eval import _text_bundle, needs_data

from trimformer.errors import UsageError
from trimformer.evaluation import metrics
from trimformer.evaluation.cache import EvalCache
from trimformer.evaluation.runner import evaluate
from trimformer.evaluation.sources import parse_source
from trimformer.evaluation.sources.base import sample_indices

SHIPPED = Path(__file__).resolve().parents[1] / "samples" / "models" / "fashion-mnist-vit"
IMAGES = 200


# --- metrics ---------------------------------------------------------------------------------


def test_topk_overlap_kl_and_bootstrap() -> None:
    logits = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    labels = np.array([4, 0])
    assert metrics.topk_accuracy(logits, labels, k=5) == 0.5  # row 1's top 5 lack class 0
    same = metrics.topk_overlap(logits, logits, k=5)
    assert same == 1.0 and metrics.topk_overlap(logits, logits[::-1], k=5) == pytest.approx(0.8)
    assert metrics.mean_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)
    flat = np.zeros_like(logits)
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    expected = float(np.sum(p * np.log(p * 6)))  # KL(p || uniform) on both rows
    assert metrics.mean_kl(flat, logits) == pytest.approx(expected)
    rng = np.random.default_rng(1)
    full = rng.random(2000) < 0.8
    reduced = full & (rng.random(2000) < 0.95)  # loses 5 % of the right answers
    low, high = metrics.bootstrap_difference_ci(full, reduced)
    drop = full.mean() - reduced.mean()
    assert 0 < low < drop < high < 0.1
    assert metrics.bootstrap_difference_ci(full, full) == (0.0, 0.0)


def test_limit_takes_the_same_spread_sample_every_time() -> None:
    first = sample_indices(1000, 50)
    assert np.array_equal(first, sample_indices(1000, 50)) and len(set(first)) == 50
    assert first.max() > 500  # not the first 50 files (one class, in a class layout)
    assert np.array_equal(sample_indices(10, None), np.arange(10))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenet", "unknown data set 'imagenet'; choose from fashion-mnist, lee, polarity"),
        ("images:", "give a path after images:"),
        ("texts:q.txt?col=x", "takes no option col; it takes column, label, encoding"),
        ("pairs:p.tsv?score=", "option score needs a value"),
    ],
)
def test_bad_data_values_are_refused(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("?", r"\?")):
        parse_source(spec)


# --- image folders ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The ToMe r=8 bundle of the shipped ViT, and the first test images as PNG folders: in
    class subfolders, flat (unlabelled), and flat with a labels file."""
    from trimformer.evaluation.fashion_mnist import read_fashion_mnist
    from trimformer.exporter import ExportRequest, export_bundle
    from trimformer.profiles import ReductionConfig

    root = tmp_path_factory.mktemp("fashion-folders")
    bundle = root / "tome"
    export_bundle(ExportRequest(str(SHIPPED), bundle, ReductionConfig("tome", {"r": 8})))
    images, labels = read_fashion_mnist("test")
    lines = ["file,label"]
    for index in range(IMAGES):
        name = f"{index:05d}.png"
        classes = root / "classes" / f"class{labels[index]}"
        classes.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(classes / name)
        (root / "flat").mkdir(exist_ok=True)
        Image.fromarray(images[index]).save(root / "flat" / name)
        lines.append(f"{name},{labels[index]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return {"bundle": bundle, "root": root}


@needs_data
def test_an_image_folder_gives_the_built_in_figures(fashion, tmp_path, capsys) -> None:
    bundle, root = fashion["bundle"], fashion["root"]
    built_in = evaluate(bundle, "fashion-mnist", limit=IMAGES, threads=1)
    folder = evaluate(bundle, f"images:{root / 'classes'}", threads=1)
    by_file = evaluate(bundle, f"images:{root / 'flat'}?labels={root / 'labels.csv'}", threads=1)
    for result in (folder, by_file):
        assert result.examples == IMAGES and result.metric == "top-1 accuracy"
        assert result.value == built_in.value and result.full_value == built_in.full_value
        assert result.agreement == built_in.agreement and result.kl == pytest.approx(built_in.kl)
    assert built_in.full_value > 0.75  # the trained model
    assert folder.full_top5 >= folder.full_value and folder.top5 >= folder.value
    low, high = folder.drop_ci95
    assert low <= folder.drop <= high and high - low < 0.2
    out = tmp_path / "eval.json"
    code, stdout, err = cli(
        capsys, "eval", str(bundle), "--data", f"images:{root / 'classes'}", "--json", str(out)
    )
    assert code == 0, err
    assert "top-5 accuracy" in stdout and "95 % CI" in stdout and "KL" in stdout
    figures = json.loads(out.read_text())
    assert figures["value"] == folder.value and figures["labelled"] is True


@needs_data
def test_an_unlabelled_folder_is_scored_by_agreement(fashion, capsys) -> None:
    bundle, root = fashion["bundle"], fashion["root"]
    labelled = evaluate(bundle, f"images:{root / 'classes'}", threads=1)
    flat = evaluate(bundle, f"images:{root / 'flat'}", threads=1)
    assert not flat.labelled and flat.metric == "top-1 agreement with full"
    assert flat.value == labelled.agreement and flat.full_value == 1.0
    assert 0.0 < flat.top5_overlap <= 1.0 and flat.kl >= 0.0 and flat.top5 is None
    sample = evaluate(bundle, f"images:{root / 'flat'}", limit=50, threads=1)
    assert sample.examples == 50


def test_an_unreadable_image_is_skipped_or_refused(tome_bundle, tmp_path, capsys) -> None:
    from skimage import data

    folder = tmp_path / "photos"
    for name, picture in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (folder / name).mkdir(parents=True)
        Image.fromarray(picture).save(folder / name / f"{name}.jpg")
        Image.fromarray(picture[::2, ::2]).save(folder / name / f"{name}-small.png")
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = evaluate(tome_bundle, f"images:{folder}", threads=1)
    assert result.examples == 4 and result.skipped == 1
    code, stdout, err = cli(capsys, "eval", str(tome_bundle), "--data", f"images:{folder}")
    assert code == 0, err
    assert "skipped 1 unreadable files" in stdout
    code, _, err = cli(capsys, "eval", str(tome_bundle), "--data", f"images:{folder}", "--strict")
    assert_one_line_error(code, err, 2, "broken.jpg is not an image PIL can read", "--strict")


def test_image_folder_errors(tome_bundle, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "b").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "classes" / "a" / "x.png")
    (tmp_path / "labels.txt").write_text("x.png 0\nmissing.png 1\n")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (32, 32)).save(flat / "x.png")
    cases = [
        (f"images:{empty}", "holds no image files PIL knows"),
        (f"images:{tmp_path / 'nope'}", "is not a folder"),
        (f"images:{tmp_path / 'classes'}", "class folder b/ holds no images"),
        (f"images:{flat}?labels={tmp_path / 'labels.txt'}", "names 1 files missing"),
        ("texts:q.txt", "takes image input, but --data texts:q.txt needs text input"),
    ]
    for spec, message in cases:
        code, _, err = cli(capsys, "eval", str(tome_bundle), "--data", spec)
        assert_one_line_error(code, err, 2, message)


# --- text and pair files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _text_bundle(tmp_path_factory.mktemp("text") / "text")


def test_text_files_give_the_built_in_figures(text_bundle, tmp_path) -> None:
    from trimformer.evaluation.text_data import read_lee, read_polarity

    polarity = read_polarity()
    table = tmp_path / "polarity.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for text, label in zip(polarity.sentences, polarity.labels, strict=True):
            writer.writerow([text, "pos" if label else "neg"])
    built_in = evaluate(text_bundle, "polarity", threads=1)
    mine = evaluate(text_bundle, f"texts:{table}?label=label", threads=1)
    assert mine.metric == "5-fold logistic accuracy" and mine.examples == 200
    assert mine.value == pytest.approx(built_in.value) and mine.agreement == pytest.approx(
        built_in.agreement
    )
    lee = read_lee(limit=10)
    pairs = tmp_path / "sts.tsv"
    pairs.write_text(
        "".join(
            f"{lee.documents[a]}\t{lee.documents[b]}\t{score}\n"
            for a, b, score in zip(lee.first, lee.second, lee.ratings, strict=True)
        )
    )
    rated = evaluate(text_bundle, f"pairs:{pairs}", threads=1)
    built_in_lee = evaluate(text_bundle, "lee", limit=10, threads=1)
    assert rated.metric == built_in_lee.metric and rated.examples == 10
    assert rated.value == pytest.approx(built_in_lee.value, abs=1e-6)
    assert rated.full_value == pytest.approx(built_in_lee.full_value, abs=1e-6)


def test_unlabelled_texts_are_scored_by_cosine(text_bundle, tmp_path) -> None:
    from trimformer.evaluation.text_data import read_lee

    lines = tmp_path / "queries.txt"
    lines.write_text("\n".join(read_lee().documents[:20]) + "\n\n")
    plain = evaluate(text_bundle, f"texts:{lines}", threads=1)
    assert plain.metric == "mean cosine with full" and not plain.labelled
    assert plain.examples == 20 and plain.value == plain.agreement and plain.full_value == 1.0
    assert plain.agreement_min <= plain.agreement_p5 <= plain.agreement < 1.0
    jsonl = tmp_path / "queries.jsonl"
    jsonl.write_text("".join(json.dumps({"q": d}) + "\n" for d in read_lee().documents[:20]))
    assert evaluate(text_bundle, f"texts:{jsonl}?column=q", threads=1).value == plain.value


def test_text_file_errors(text_bundle, tmp_path, capsys) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 cr\xe8me\n".encode("cp1252"))
    table = tmp_path / "t.csv"
    table.write_text("sentence,topic\nhello,a\n")
    single = tmp_path / "single.tsv"
    single.write_text("one text, no score\n")
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": \n')
    cases = [
        (f"texts:{latin}", "is not utf-8 text (byte 0xe9 at offset 3)", "?encoding="),
        (f"texts:{table}", "has no column 'text' (it has: sentence, topic)", "?column=NAME"),
        (f"texts:{latin}?column=x", "without columns", ".csv"),
        (f"texts:{broken}", "b.jsonl:2 is not JSON", "fix the line"),
        (f"texts:{tmp_path / 'none.txt'}", "none.txt does not exist", ""),
        (f"pairs:{single}", "single.tsv:1 has 1 tab-separated fields", "text<TAB>text<TAB>score"),
        ("images:/tmp", "takes text input, but --data images:/tmp needs image input", ""),
    ]
    for spec, *messages in cases:
        code, _, err = cli(capsys, "eval", str(text_bundle), "--data", spec)
        assert_one_line_error(code, err, 2, *messages)
    ok = evaluate(text_bundle, f"texts:{latin}?encoding=cp1252", threads=1)
    assert ok.examples == 1


# --- the full-output cache, sweep and tune ---------------------------------------------------


def test_the_full_outputs_are_computed_once_and_follow_the_data(text_bundle, tmp_path) -> None:
    from trimformer.evaluation.text_data import read_lee

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(read_lee().documents[:12]))
    cache = EvalCache(tmp_path / "cache")
    first = evaluate(text_bundle, f"texts:{texts}", threads=1, cache=cache)
    again = evaluate(text_bundle, f"texts:{texts}", threads=1, cache=EvalCache(cache.folder))
    assert first.cached == () and again.cached == ("full",)
    assert again.value == first.value
    texts.write_text("\n".join(read_lee().documents[:11]))  # other data: a miss
    changed = evaluate(text_bundle, f"texts:{texts}", threads=1, cache=EvalCache(cache.folder))
    assert changed.cached == () and changed.examples == 11
    assert len(list(cache.folder.glob("*.npy"))) == 2


@needs_data
def test_sweep_and_tune_on_an_image_folder_match_the_built_in_set(fashion, tmp_path, capsys):
    folder = f"images:{fashion['root'] / 'classes'}"
    points = {}
    for data, extra in ((folder, ()), ("fashion-mnist", ("--limit", str(IMAGES)))):
        out = tmp_path / data.split(":")[0]
        code, stdout, err = cli(
            capsys,
            *("sweep", str(SHIPPED), "--method", "tome", "--r", "0,8,16", "--runs", "2"),
            *("--data", data, *extra, "-o", str(out)),
        )
        assert code == 0, err
        assert "1 computed, 1 reused" in stdout  # r=0 has no full graph: 2 points share one
        points[data] = json.loads((out / "sweep.json").read_text())["points"]
        assert (out / "full-outputs").is_dir()
    for mine, built_in in zip(points[folder], points["fashion-mnist"], strict=True):
        assert mine["label"] == built_in["label"]
        assert mine["value"] == built_in["value"] and mine["agreement"] == built_in["agreement"]
    profile = tmp_path / "tuned.yaml"
    code, stdout, err = cli(
        capsys,
        *("tune", str(SHIPPED), "--device", "cpu-ort", "--speedup", "0.01"),
        *("--methods", "tome", "--data", str(folder), "--runs", "2", "-o", str(profile)),
    )
    assert code == 0, err
    assert "top-1 accuracy" in profile.read_text()  # scored on the folder's labels
