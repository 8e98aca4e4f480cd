import io
import os
import signal
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import mope
from mope.data import shapes
from mope.data.streams import BatchLoader, pair_batches, pair_stream, resolve_workers, shard_files


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


def _shards(folder):
    for shard in range(2):
        with tarfile.open(folder / f"shard-{shard}.tar", "w") as tar:
            for i in range(3):
                for ext, data in (("png", _png_bytes(i * 40)), ("txt", f"shard {shard} item {i}".encode())):
                    info = tarfile.TarInfo(f"s{shard}_{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path):
    _shards(tmp_path)
    stream = pair_stream(f"wds:{tmp_path}/shard-*.tar", _to_tensor, 4, seed=0)
    step, images, captions = next(stream)
    assert images.shape == (4, 3, 8, 8) and all(c.startswith("shard") for c in captions)
    again = pair_stream(f"wds:{tmp_path}/shard-*.tar", _to_tensor, 4, seed=0, start=1)
    assert next(again)[2] == next(stream)[2]
    with pytest.raises(mope.MopeError, match="no .tar shards"):
        next(pair_stream(f"wds:{tmp_path}/none-*.tar", _to_tensor, 4))


def test_a_glob_through_a_symlink_does_not_leave_its_folder(tmp_path):
    """Issue 11, item 2: `wds:/allowed/link_ou*/shard-*.tar` with link_out → a folder outside is refused
    where the glob is expanded (the library's own check, whoever calls it), symlinks resolved."""
    outside, allowed = tmp_path / "outside", tmp_path / "allowed"
    outside.mkdir()
    _shards(outside)
    (allowed / "real").mkdir(parents=True)
    _shards(allowed / "real")
    (allowed / "link_out").symlink_to(outside)
    (allowed / "real" / "shard-9.tar").symlink_to(outside / "shard-0.tar")
    for pattern in (f"{allowed}/link_ou*/shard-*.tar", f"{allowed}/*/shard-*.tar", f"{allowed}/real/shard-*.tar"):
        with pytest.raises(mope.MopeError, match="leads outside"):
            next(pair_stream(f"wds:{pattern}", _to_tensor, 4))
    (allowed / "real" / "shard-9.tar").unlink()
    assert next(pair_stream(f"wds:{allowed}/re*/shard-*.tar", _to_tensor, 4))[1].shape[0] == 4
    assert shard_files(f"{allowed}/link_out/shard-*.tar") == [f"{allowed}/link_out/shard-{i}.tar" for i in (0, 1)]


def _batches(dataset, workers, n):
    from itertools import islice

    return list(islice(BatchLoader(dataset, workers=workers), n))


def _same(a, b):
    return len(a) == len(b) and all(x[0] == y[0] and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))


def _augmenting(image):
    """Like a training transform: draws from torch's global generator."""
    return _to_tensor(image) + torch.rand(1)


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    _shards(tmp_path)
    for i in range(5):
        Image.fromarray(np.full((12, 12, 3), i * 50, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "p.csv").write_text("image,caption\n" + "".join(f"{i}.png,caption {i}\n" for i in range(5)))
    for spec in ("shapes", f"pairs:{tmp_path / 'p.csv'}", f"wds:{tmp_path}/shard-*.tar"):
        alone = _batches(pair_batches(spec, _augmenting, 2, seed=3, start=2), 0, 4)
        assert [b[0] for b in alone] == [2, 3, 4, 5]
        assert _same(alone, _batches(pair_batches(spec, _augmenting, 2, seed=3, start=2), 2, 4)), spec
        assert _same(alone[1:], _batches(pair_batches(spec, _augmenting, 2, seed=3, start=3), 1, 3)), spec  # resume


def test_workers_tokenize_and_stop(tmp_path):
    tokenize = lambda captions: torch.tensor([len(c) for c in captions])  # noqa: E731
    got = _batches(pair_batches("shapes", _to_tensor, 3, tokenizer=tokenize, stop=4), 2, 10)
    assert [b[0] for b in got] == [0, 1, 2, 3]
    assert all(torch.equal(b[3], tokenize(b[2])) for b in got)


def test_worker_errors_keep_their_message_and_a_dead_worker_names_the_data(tmp_path, monkeypatch):
    (tmp_path / "p.csv").write_text("image,caption\nmissing.png,a cat\n")
    with pytest.raises(mope.MopeError, match="could be read") as raised:
        _batches(pair_batches(f"pairs:{tmp_path / 'p.csv'}", _to_tensor, 2), 2, 1)
    assert "Traceback" not in str(raised.value)

    def dying(batch_size, seed, step, image_size=64):
        if step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(batch_size, seed, step, image_size)

    real = shapes.stream_batch
    monkeypatch.setattr(shapes, "stream_batch", dying)
    with pytest.raises(mope.MopeError, match="worker reading 'shapes' died"):
        _batches(pair_batches("shapes", _to_tensor, 2), 2, 6)


def test_resolve_workers():
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(None) == min(8, cores // 2) and resolve_workers(0) == 0
    with pytest.warns(UserWarning, match=f"using {cores}"):
        assert resolve_workers(cores + 5) == cores
    with pytest.raises(mope.MopeError, match="0 or more"):
        resolve_workers(-1)
