"""Malformed inputs of issue 22 (part c) registered in the corpus (tests/malformed_corpus.py, run by test_malformed).

Image folders (a FIFO named like an image, a symbolic-link loop, a decompression-bomb PNG, class maps whose values
are not integers, out of range or shared by two folders), a query file with deeply nested arrays, and Dask
scheduler addresses that accept and never answer or that answer HTTP (loopback servers that stop by themselves).
Each ``run(inp, out)`` builds its input under ``inp`` and leaves ``out`` empty.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from causalgeom.errors import CausalGeomError, ConfigError, QueryError

from .malformed_corpus import _QUERY, _mediate, register
from .pipeline.test_image_folders import bomb_png, write_images
from .scale.test_scheduler_deadline import http_400, loopback_server, silent


# -- image folders, through training (`out` is the training output folder) ---------------------------------------
def _train_on(make_root):
    def run(i: Path, o: Path):
        from causalgeom import train

        root = make_root(i)
        train.train_run(train.TrainConfig(dataset="imagefolder", data_root=str(root), epochs=1, max_train_samples=4,
                                          num_threads=1), o, progress=False)
    return run


def _fifo(i: Path) -> Path:
    root = write_images(i / "images")
    os.mkfifo(root / "dog" / "stuck.png")
    return root


def _loop(i: Path) -> Path:
    root = write_images(i / "images")
    os.symlink("..", root / "cat" / "loop")
    return root


def _bomb(i: Path) -> Path:
    root = write_images(i / "images")
    bomb_png(root / "cat" / "0.png")  # replaces the first image: its size is read for the input shape
    return root


register("imagefolder: FIFO named stuck.png", ConfigError, r"stuck\.png.*FIFO")(_train_on(_fifo))
register("imagefolder: symbolic-link loop in a class folder", ConfigError, r"cat/loop.*same folder.*link loop")(
    _train_on(_loop))
register("imagefolder: decompression-bomb PNG", ConfigError, r"cat/0\.png.*(exceeds the limit|decompression bomb)")(
    _train_on(_bomb))


# -- class maps (evaluation data of a public model) ------------------------------------------------------------------
def _class_map(values: dict):
    def run(i: Path, o: Path):
        from causalgeom import data

        root = write_images(i / "images")
        (i / "map.json").write_text(json.dumps(values))
        data.open_eval_data(f"imagefolder:{root}", num_classes=10, class_map=i / "map.json")
    return run


register("class map: fractional index", ConfigError, r"map\.json.*'dog' must be an integer, got 1\.7")(
    _class_map({"cat": 0, "dog": 1.7, "emu": 2}))
register("class map: boolean index", ConfigError, r"map\.json.*'dog' must be an integer, got True")(
    _class_map({"cat": 0, "dog": True, "emu": 2}))
register("class map: index out of the model's range", ConfigError, r"map\.json.*\[0, 10\).*'emu' has 10")(
    _class_map({"cat": 0, "dog": 1, "emu": 10}))
register("class map: two folders on one index", ConfigError, r"map\.json.*'cat' and 'emu' are both mapped to class 0")(
    _class_map({"cat": 0, "dog": 1, "emu": 0}))


# -- query files --------------------------------------------------------------------------------------------------
register("query: deeply nested arrays", QueryError, r"q\.toml: arrays or inline tables nested too deeply")(
    _mediate(_QUERY.replace('mediators = ["rms"]', "mediators = " + "[" * 20_000 + "]" * 20_000)))


# -- Dask scheduler addresses (loopback servers) -------------------------------------------------------------------
def _scheduler(handler, deadline: str | None = None):
    def run(i: Path, o: Path):
        from causalgeom._util import dask as cg_dask

        old = cg_dask.CONNECT_DEADLINE
        if deadline is not None:
            cg_dask.CONNECT_DEADLINE = deadline
        try:
            with loopback_server(handler) as address, cg_dask.client(address):
                pass
        finally:
            cg_dask.CONNECT_DEADLINE = old
    return run


register("scheduler address answering HTTP", ConfigError, r"scheduler 'tcp://127\.0\.0\.1:\d+'.*not in the Dask protocol")(
    _scheduler(http_400))
register("scheduler that accepts and never answers", CausalGeomError,
         r"tcp://127\.0\.0\.1:\d+.*did not complete the Dask handshake within 2 s")(_scheduler(silent, "2s"))
