import io
import json
import logging
import tarfile

import pytest
import torch
from PIL import Image

from openhart.data import ImageCaptionFolder, TarShards, epoch_order


def _image(color, size=(40, 30)):
    return Image.new("RGB", size, color)


@pytest.fixture
def sidecar_folder(tmp_path):
    for i, color in enumerate(["red", "green", "blue", "white", "black"]):
        _image(color).save(tmp_path / f"img{i}.png")
        (tmp_path / f"img{i}.txt").write_text(f"a {color} square\n")
    return tmp_path


def test_sidecar_captions_and_preprocessing(sidecar_folder):
    data = ImageCaptionFolder(sidecar_folder, 16)
    assert len(data) == 5
    sample = data.load(0)
    assert sample.image.shape == (3, 16, 16) and sample.caption == "a red square"
    assert sample.image.min() >= -1 and sample.image.max() <= 1
    torch.testing.assert_close(sample.image[0], torch.ones(16, 16))  # red channel at +1


def test_metadata_jsonl(tmp_path):
    (tmp_path / "sub").mkdir()
    _image("red").save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "sub/a.jpg", "text": "red"}) + "\n")
    data = ImageCaptionFolder(tmp_path, 8, random_crop=True)
    assert [s.caption for s in data.iterate(0, seed=0)] == ["red"]


def test_epoch_order_is_seeded_and_split_across_ranks():
    a, b = epoch_order(10, 1, 0), epoch_order(10, 1, 0)
    assert a == b and sorted(a) == list(range(10)) and a != epoch_order(10, 1, 1)
    shards = [epoch_order(10, 1, 0, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))


def test_corrupt_images_are_skipped_and_counted(sidecar_folder, caplog):
    (sidecar_folder / "img2.png").write_bytes(b"not a png")
    data = ImageCaptionFolder(sidecar_folder, 8)
    with caplog.at_level(logging.WARNING):
        samples = list(data.iterate(0, seed=0))
    assert len(samples) == 4 and data.skipped == 1 and "skipping unreadable image" in caplog.text


def test_resume_position(sidecar_folder):
    data = ImageCaptionFolder(sidecar_folder, 8)
    full = [s.key for s in data.iterate(3, seed=5)]
    assert [s.key for s in data.iterate(3, seed=5, start=2)] == full[2:]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no images in"),
    (lambda d: _image("red").save(d / "x.png"), "have no caption"),
    (lambda d: (d / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "t"}\n'), "do not exist"),
    (lambda d: (d / "metadata.jsonl").write_text('{"file": "x"}\n'), "a 'file_name' and a 'text' string"),
])
def test_bad_folders(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(ValueError, match=message):
        ImageCaptionFolder(tmp_path, 8)


def _shard(path, items):
    with tarfile.open(path, "w") as tar:
        for key, payload in items:
            for ext, data in payload.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _png(color):
    buffer = io.BytesIO()
    _image(color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_tar_shards_split_across_ranks_and_skip_bad_members(tmp_path):
    _shard(tmp_path / "0.tar", [("a", {"png": _png("red"), "txt": b"red"}),
                                ("b", {"png": b"broken", "txt": b"broken"})])
    _shard(tmp_path / "1.tar", [("c", {"jpg": _png("blue"), "json": b'{"text": "blue"}'})])
    shards = TarShards([tmp_path / "0.tar", tmp_path / "1.tar"], 8)
    everything = sorted(s.caption for s in shards.iterate(0, seed=0))
    assert everything == ["blue", "red"] and shards.skipped == 1
    per_rank = [sorted(s.caption for s in TarShards(shards.shards, 8).iterate(0, 0, r, 2)) for r in range(2)]
    assert sorted(sum(per_rank, [])) == ["blue", "red"] and all(len(p) == 1 for p in per_rank)
    with pytest.raises(ValueError, match="not found"):
        TarShards([tmp_path / "missing.tar"], 8)


def test_batch_stream_crosses_epochs_and_resumes_exactly(sidecar_folder):
    from openhart.data.stream import BatchStream
    data = ImageCaptionFolder(sidecar_folder, 8, random_crop=True)
    stream = BatchStream(data, 2, seed=3)
    batches = [stream.next_batch() for _ in range(6)]  # 12 examples: more than two epochs of 5
    assert stream.position.epoch == 2
    keys = [s.key for b in batches for s in b]
    assert sorted(keys[:5]) == sorted(keys[5:10]) and keys[:5] != keys[5:10]
    saved = BatchStream(data, 2, seed=3)
    for _ in range(4):
        saved.next_batch()
    resumed = BatchStream(data, 2, seed=3, position=saved.state_dict())
    for want in batches[4:]:
        got = resumed.next_batch()
        assert [s.key for s in got] == [s.key for s in want]
        for a, b in zip(got, want):
            assert torch.equal(a.image, b.image)  # the same random crop after a resume


def test_random_crops_do_not_depend_on_the_number_of_processes(tmp_path):
    for i in range(4):
        Image.effect_noise((30, 20), 50 + i).convert("RGB").save(tmp_path / f"n{i}.png")
        (tmp_path / f"n{i}.txt").write_text(f"noise {i}")
    data = ImageCaptionFolder(tmp_path, 12, random_crop=True)
    alone = {s.key: s.image for s in data.iterate(0, seed=1)}
    split = {s.key: s.image for r in range(2) for s in data.iterate(0, seed=1, rank=r, world_size=2)}
    assert alone.keys() == split.keys()
    for key in alone:
        assert torch.equal(alone[key], split[key])


def test_a_stream_with_nothing_readable_stops_with_a_clear_error(sidecar_folder):
    from openhart.data.stream import BatchStream
    for png in sidecar_folder.glob("*.png"):
        png.write_bytes(b"broken")
    with pytest.raises(ValueError, match="no readable example"):
        BatchStream(ImageCaptionFolder(sidecar_folder, 8), 2, seed=0).next_batch()


def test_prefetching_gives_the_same_batches_and_positions(sidecar_folder):
    from openhart.data.stream import BatchStream
    data = ImageCaptionFolder(sidecar_folder, 8, random_crop=True)
    plain, ahead = BatchStream(data, 2, seed=4), BatchStream(data, 2, seed=4, prefetch=3)
    for _ in range(7):
        a, b = plain.next_batch(), ahead.next_batch()
        assert [s.key for s in a] == [s.key for s in b] and plain.position == ahead.position
        assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    resumed = BatchStream(data, 2, seed=4, prefetch=2)
    resumed.position = ahead.position  # set before the first batch, as a resume does
    assert [s.key for s in resumed.next_batch()] == [s.key for s in plain.next_batch()]


def test_errors_of_the_prefetch_thread_reach_the_caller(sidecar_folder):
    from openhart.data.stream import BatchStream
    for png in sidecar_folder.glob("*.png"):
        png.write_bytes(b"broken")
    with pytest.raises(ValueError, match="no readable example"):
        BatchStream(ImageCaptionFolder(sidecar_folder, 8), 2, seed=0, prefetch=2).next_batch()
