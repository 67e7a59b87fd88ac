"""Image folders read safely: an lstat walk (no FIFOs, devices or link loops), a stated pixel limit, checked maps.

The reference for what a well-formed folder yields is torchvision's own ``ImageFolder`` (same classes, same
samples in the same order); the malformed folders must end in a `ConfigError` naming the file, never a hang, a
miscount or a library exception. The last test checks the CLI exit status (2, one line) for this issue's inputs,
including a query file with deeply nested arrays.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from causalgeom import data
from causalgeom.cli import main
from causalgeom.errors import ConfigError, QueryError

CLASSES = ("cat", "dog", "emu")


def write_images(folder: Path, classes=CLASSES, per_class: int = 2, size=(8, 6), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    return folder


def bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A PNG whose header claims width x height 1-bit pixels (9e8 > the limit) in a few hundred bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * 4, 9)  # a few rows only: never decoded, the header is refused first
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_scan_matches_torchvision_imagefolder(tmp_path):
    """Nested folders, upper-case endings, non-image files, a linked class folder: the same samples, same order."""
    import torchvision

    root = write_images(tmp_path / "root", per_class=3)
    write_images(tmp_path / "root" / "cat" / "sub", classes=("deeper",), per_class=2, seed=1)
    (tmp_path / "root" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "root" / "dog" / "2.png").rename(tmp_path / "root" / "dog" / "2.PNG")
    write_images(tmp_path / "elsewhere", classes=("fox",), per_class=2, seed=2)
    os.symlink(tmp_path / "elsewhere" / "fox", root / "fox")  # a linked class folder is a class
    ours = data._image_folder(root)
    ref = torchvision.datasets.ImageFolder(str(root.resolve()))
    assert ours.classes == ref.classes == ["cat", "dog", "emu", "fox"]
    assert ours.samples == ref.samples and len(ours) == 13


def test_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    root = write_images(tmp_path / "root")
    os.mkfifo(root / "dog" / "stuck.png")
    result: list = []

    def scan():
        try:
            data.open_eval_data(f"imagefolder:{root}")
        except BaseException as exc:  # noqa: BLE001
            result.append(exc)

    t = threading.Thread(target=scan, daemon=True)
    t.start()
    t.join(60)  # a hang check: the scan must return, not block on the FIFO
    if t.is_alive():  # unblock the reader so the test process can end
        fd = os.open(root / "dog" / "stuck.png", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("reading an image folder with a FIFO in it blocked")
    assert isinstance(result[0], ConfigError)
    assert "stuck.png" in str(result[0]) and "FIFO" in str(result[0])
    with pytest.raises(ConfigError, match="stuck.png.*FIFO"):  # also through the training loader
        data.load_dataset("imagefolder", "train", root)
    with pytest.raises(ConfigError, match="stuck.png.*not a regular image file"):  # the reader itself
        data.open_image(root / "dog" / "stuck.png")


def test_symlink_loop_in_a_class_folder_is_refused(tmp_path):
    root = write_images(tmp_path / "root")
    os.symlink("..", root / "cat" / "up")  # cat/up/cat/up/... : torchvision counted the images many times
    with pytest.raises(ConfigError, match=r"root' and .*root/cat/up' are the same folder.*link loop"):
        data.open_eval_data(f"imagefolder:{root}")
    (root / "cat" / "up").unlink()
    os.symlink(root / "dog", root / "cat" / "dogs")  # a second link to another class's folder
    with pytest.raises(ConfigError, match=r"root/cat/dogs' and .*root/dog' are the same folder"):
        data.open_eval_data(f"imagefolder:{root}")
    (root / "cat" / "dogs").unlink()
    os.symlink("self.png", root / "cat" / "self.png")  # a link to itself: cannot be followed
    with pytest.raises(ConfigError, match="self.png.*cannot be followed"):
        data.open_eval_data(f"imagefolder:{root}")
    (root / "cat" / "self.png").unlink()
    assert len(data.open_eval_data(f"imagefolder:{root}")) == 6


def test_decompression_bomb_refused_naming_the_file(tmp_path, monkeypatch):
    assert data.MAX_IMAGE_PIXELS == 89_478_485  # the limit stated in docs/reliability.md
    root = write_images(tmp_path / "root")
    bomb = bomb_png(root / "dog" / "bomb.png")
    assert bomb.stat().st_size < 10_000
    ds = data.open_eval_data(f"imagefolder:{root}")
    i = ds.sample_ids.index(os.path.join("dog", "bomb.png"))
    with pytest.raises(ConfigError, match=r"bomb\.png.*(exceeds the limit|decompression bomb)"):
        ds[i]
    # our own limit, below Pillow's (which would only warn up to twice its limit): checked from the header
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 40)
    with pytest.raises(ConfigError, match=r"0\.png.*8 x 6|0\.png.*6 x 8"):
        data.load_dataset("imagefolder", "train", root)[0]
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 48)  # 8 x 6 = 48 pixels: at the limit is allowed
    (root / "dog" / "bomb.png").unlink()
    x, _ = data.load_dataset("imagefolder", "test", root)[0]
    assert tuple(x.shape) == (3, 8, 6)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = data.open_eval_data(f"imagefolder:{root}")
    with pytest.raises(ConfigError, match=r"broken\.png.*not a readable image"):
        ds[ds.sample_ids.index(os.path.join("dog", "broken.png"))]


@pytest.mark.parametrize("value,match", [
    (1.7, r"folder 'dog' must be an integer, got 1\.7"),
    (True, r"folder 'dog' must be an integer, got True"),
    ("1", r"folder 'dog' must be an integer, got '1'"),
    (-1, r"class indices must lie in >= 0.*'dog' has -1"),
    (0, r"folders 'cat' and 'dog' are both mapped to class 0"),
])
def test_class_map_values_checked(tmp_path, value, match):
    root = write_images(tmp_path / "root")
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"cat": 0, "dog": value, "emu": 2}))
    with pytest.raises(ConfigError, match=match) as err:
        data.open_eval_data(f"imagefolder:{root}", class_map=path)
    assert str(path) in str(err.value)  # the file is named
    with pytest.raises(ConfigError, match=match):  # the same rule for a dict
        data.open_eval_data(f"imagefolder:{root}", class_map={"cat": 0, "dog": value, "emu": 2})


def test_class_map_in_range_of_the_model(tmp_path):
    root = write_images(tmp_path / "root")
    with pytest.raises(ConfigError, match=r"class indices must lie in \[0, 5\).*'emu' has 5"):
        data.open_eval_data(f"imagefolder:{root}", num_classes=5, class_map={"cat": 0, "dog": 1, "emu": 5})
    ds = data.open_eval_data(f"imagefolder:{root}", num_classes=5, class_map={"cat": 4, "dog": 0, "emu": 2,
                                                                             "unused": 4})
    assert ds.labels.tolist() == [4, 4, 0, 0, 2, 2]  # keys of absent folders are not checked for uniqueness


@pytest.mark.slow
def test_cli_exit_2_with_one_line_naming_the_file(tmp_path, capsys):
    root = write_images(tmp_path / "root")
    os.mkfifo(root / "cat" / "stuck.png")
    toml = tmp_path / "grid.toml"
    toml.write_text(f'dataset = "imagefolder"\nmodel = "small_cnn"\nseeds = [0]\n[train]\ndata_root = "{root}"\n'
                    'epochs = 1\nnum_threads = 1\n[[regularizers]]\nname = "ce"\n')
    out = tmp_path / "out"
    assert main(["train", str(toml), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stuck.png" in err and "FIFO" in err, err
    assert not out.exists() or not [p for p in out.rglob("*") if not p.name.endswith(".lock")]  # nothing written
    # a query file with deeply nested arrays: QueryError naming the file, no RecursionError
    (tmp_path / "table.csv").write_text("run_id,regularizer,rms,overconfidence\n" + "".join(
        f"r{r},{'ce' if r % 2 else 'label_smoothing'},{0.1 * s + r},{0.01 * s * r}\n" for r in range(4)
        for s in range(3)))
    q = tmp_path / "deep.toml"
    q.write_text('[query]\ntreatment = "regularizer"\noutcomes = ["overconfidence"]\nmediators = '
                 + "[" * 50_000 + "]" * 50_000 + "\n")
    assert main(["mediate", str(tmp_path / "table.csv"), "--query", str(q), "--out", str(tmp_path / "m"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(q) in err and "nested too deeply" in err, err
    assert "RecursionError" not in err and not (tmp_path / "m").exists()
    with pytest.raises(QueryError, match="nested too deeply"):
        from causalgeom.causal.query import read_queries

        read_queries(q)
