import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import mope
from mope.data.streams import pair_stream


def _to_tensor(image):
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


def _png_bytes(colour):
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), colour, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_shapes_stream_is_a_function_of_seed_rank_and_step():
    a = next(pair_stream("shapes", _to_tensor, 4, seed=1, start=3))
    b = next(pair_stream("shapes", _to_tensor, 4, seed=1, start=3))
    c = next(pair_stream("shapes", _to_tensor, 4, seed=1, start=3, rank=1, world=2))
    assert a[0] == 3 and torch.equal(a[1], b[1]) and a[2] == b[2] and a[1].shape == (4, 3, 8, 8)
    assert not torch.equal(a[1], c[1])


def test_pairs_stream_skips_unreadable_images_and_shards_rows(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((12, 12, 3), i * 60, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"junk")
    rows = "".join(f"{i}.png,caption {i}\n" for i in range(4)) + "broken.png,bad\n"
    (tmp_path / "p.csv").write_text("image,caption\n" + rows)
    stream = pair_stream(f"pairs:{tmp_path / 'p.csv'}", _to_tensor, 3, seed=0)
    seen = {c for _, _, caps in (next(stream) for _ in range(4)) for c in caps}
    assert seen == {f"caption {i}" for i in range(4)}
    r0 = {c for _, _, caps in [next(pair_stream(f"pairs:{tmp_path / 'p.csv'}", _to_tensor, 2, rank=0, world=2))] for c in caps}
    r1 = {c for _, _, caps in [next(pair_stream(f"pairs:{tmp_path / 'p.csv'}", _to_tensor, 2, rank=1, world=2))] for c in caps}
    assert not r0 & r1


def test_webdataset_shards(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for i in range(3):
                for ext, data in (("png", _png_bytes(i * 40)), ("txt", f"shard {shard} item {i}".encode())):
                    info = tarfile.TarInfo(f"s{shard}_{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    stream = pair_stream(f"wds:{tmp_path}/shard-*.tar", _to_tensor, 4, seed=0)
    step, images, captions = next(stream)
    assert images.shape == (4, 3, 8, 8) and all(c.startswith("shard") for c in captions)
    again = pair_stream(f"wds:{tmp_path}/shard-*.tar", _to_tensor, 4, seed=0, start=1)
    assert next(again)[2] == next(stream)[2]
    with pytest.raises(mope.MopeError, match="no .tar shards"):
        next(pair_stream(f"wds:{tmp_path}/none-*.tar", _to_tensor, 4))
