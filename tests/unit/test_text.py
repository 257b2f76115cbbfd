"""The pretrained text encoder and the encoding step: the shipped weights load, are checked and encode
deterministically; a tampered or pickled model is refused; vectors are cached; bad text columns are refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raytrain.text.encoder import EncoderError, TextEncoder, shipped_dir

ROOT = Path(__file__).resolve().parents[2]
TITLES = ["Toy Story (1995) | Animation Children's Comedy", "Toy Story 2 (1999) | Animation Children's Comedy",
          "Schindler's List (1993) | Drama War", "GoldenEye (1995) | Action Adventure Thriller"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_the_shipped_encoder_loads_and_encodes_deterministically(encoder):
    a, b = encoder.encode(TITLES), encoder.encode(list(TITLES))
    assert a.shape == (4, 384) and a.dtype == np.float32 and encoder.dim == 384
    assert np.array_equal(a, b)  # the same texts, the same bits
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # batch size changes padding, not the vectors
    np.testing.assert_allclose(encoder.encode(TITLES, batch_size=1), a, atol=1e-5)
    # it knows language: the sequel is nearer Toy Story than a war drama or a spy film is
    sim = a @ a.T
    assert sim[0, 1] > 0.7 and sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert encoder.encode([]).shape == (0, 384)


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    """A copy of the cache whose weights file differs by one byte from the pinned sha256 is refused, naming it."""
    import raytrain.text.encoder as enc

    real = shipped_dir()
    monkeypatch.setenv("RAYTRAIN_CACHE", str(tmp_path))
    copy = tmp_path / "encoders" / real.name
    shutil.copytree(real, copy)
    assert shipped_dir() == copy  # the intact copy passes
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(EncoderError, match=r"encoder weights .*model.safetensors: sha256 [0-9a-f]{64}, expected "
                                           + enc.WEIGHTS_SHA256):
        shipped_dir()
    with pytest.raises(EncoderError, match="sha256"):
        TextEncoder()


def test_a_model_with_only_pickled_weights_is_never_loaded(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(EncoderError, match=r"no \.safetensors weights \(it has pytorch_model\.bin: pickled weights "
                                           r"are never loaded"):
        TextEncoder(str(tmp_path))
    with pytest.raises(EncoderError, match="not 'minilm', an existing directory or a hub id"):
        TextEncoder("no such model")


def test_a_local_copy_of_an_encoder_loads_by_path_and_encodes_the_same(encoder):
    local = TextEncoder(str(shipped_dir()))
    assert local.identity.startswith("path:") and np.array_equal(local.encode(TITLES), encoder.encode(TITLES))


def test_encoded_vectors_are_cached_and_reused(tmp_path, monkeypatch, capsys, encoder):
    from raytrain.text import encode

    monkeypatch.setenv("RAYTRAIN_CACHE", str(tmp_path))
    monkeypatch.setattr("raytrain.text.encoder.shipped_dir", lambda: Path(encoder.location))
    ids = np.array([3, 1, 2, 9])
    first, _ = encode.encode_catalogue(ids, TITLES)
    assert "encoded with minilm" in capsys.readouterr().out
    np.testing.assert_allclose(first, encoder.encode(TITLES), atol=1e-6)
    calls = []
    monkeypatch.setattr(encode, "_in_process", lambda *a: calls.append(a))
    again, _ = encode.encode_catalogue(ids, TITLES)
    assert calls == [] and np.array_equal(again, first)  # read back, not encoded again
    assert "read from the cache" in capsys.readouterr().out
    # another text is another key: it is encoded
    monkeypatch.undo()
    monkeypatch.setenv("RAYTRAIN_CACHE", str(tmp_path))
    monkeypatch.setattr("raytrain.text.encoder.shipped_dir", lambda: Path(encoder.location))
    changed, _ = encode.encode_catalogue(ids, [*TITLES[:3], "Heat (1995) | Action Crime Thriller"])
    assert np.array_equal(changed[:3], first[:3]) and not np.allclose(changed[3], first[3])
    assert len(list((tmp_path / "text").glob("vectors-*.parquet"))) == 2
    with pytest.raises(Exception, match="ids must be unique"):
        encode.encode_catalogue(np.array([1, 1]), TITLES[:2])


def test_the_projection_keeps_the_catalogues_geometry():
    from raytrain.text.encode import fit_projection, project

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 3)) @ rng.normal(size=(3, 40))).astype(np.float32)  # rank 3 in 40 dimensions
    p = fit_projection(x, 3)
    z = project(p, x)
    assert z.shape == (300, 3)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)
    back = (z * p["scale"]) @ p["components"] + p["mean"]  # three components hold all of it
    np.testing.assert_allclose(back, x, atol=1e-3)


@pytest.mark.parametrize("override, words", [
    ("data.text={item: [movie_titel]}", "text.item: 'movie_titel' is not a text column of movielens-100k (it has "
                                        "movie_title, release_year, class) (did you mean 'movie_title'?)"),
    ("data.text={item: [age]}", "text.item: 'age' is not a text column of movielens-100k"),
    ("data.text={item: []}", "name one or more distinct text columns"),
])
def test_a_missing_or_non_text_column_exits_2_naming_it(override, words):
    out = subprocess.run([sys.executable, "-m", "raytrain.cli.main", "validate", str(ROOT / "jobs/train_ml100k.yaml"),
                          override], capture_output=True, text=True)
    assert out.returncode == 2 and words in out.stdout + out.stderr, out.stdout + out.stderr


def test_a_sequential_item_table_starts_from_projected_text(tmp_path, encoder):
    """The rows of items with text become their vectors' principal components, scaled to the initial rows' mean
    norm; the padding row and an item without text keep zeros; similar texts start close."""
    import torch

    from raytrain.train.sequential.text_init import init_from_text

    texts = TITLES + ["Toy Story 3 (2010) | Animation Children's Comedy", "Heat (1995) | Action Crime Thriller"]
    vectors = np.zeros((8, 384), np.float32)
    vectors[1:7] = encoder.encode(texts)  # item 7 has no text
    np.savez(tmp_path / "sequences.npz", items=np.zeros(1, np.int64), text=vectors)
    model = torch.nn.Module()
    model.item_table = torch.nn.Module()
    model.item_table.embeddings = torch.nn.ModuleDict({"t_item": torch.nn.Embedding(8, 16)})
    before = model.item_table.embeddings["t_item"].weight.detach().clone()
    assert init_from_text(model, tmp_path / "sequences.npz", rank=0)
    after = model.item_table.embeddings["t_item"].weight.detach()
    assert torch.all(after[0] == 0) and torch.all(after[7] == 0)
    assert float(after[1:7].norm(dim=1).mean()) == pytest.approx(float(before.norm(dim=1).mean()), rel=1e-4)
    cos = torch.nn.functional.normalize(after[1:7], dim=1) @ torch.nn.functional.normalize(after[1:7], dim=1).T
    assert cos[0, 1] > cos[0, 2] and cos[0, 4] > cos[0, 2]  # Toy Story nearer its sequels than a war drama
    np.savez(tmp_path / "plain.npz", items=np.zeros(1, np.int64))
    assert not init_from_text(model, tmp_path / "plain.npz", rank=0)  # no text: the table is left as it is
