import gzip

import pytest
import torch
from conftest import synthetic_digits

from support.idx import IMAGE_MAGIC, LABEL_MAGIC, DataError, IdxFile, idx_bytes, read_idx

IMAGES = IdxFile("images", IMAGE_MAGIC, None, None)


LABELS = IdxFile("labels", LABEL_MAGIC, None, None)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    images, labels = synthetic_digits(12, 0)
    for name, tensor, magic, spec in (("i", images, IMAGE_MAGIC, IMAGES), ("l", labels, LABEL_MAGIC, LABELS)):
        payload = idx_bytes(tensor, magic)
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)
        out = read_idx(path, spec)
        assert torch.equal(out, tensor.to(out.dtype))
    assert read_idx(path, LABELS).dtype == torch.int64


def write(tmp_path, payload: bytes, name="f"):
    path = tmp_path / name
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    "payload, spec, message",
    [
        (idx_bytes(torch.zeros(3, 28, 28), LABEL_MAGIC), IMAGES, "bad magic number 2049, expected 2051"),
        (idx_bytes(torch.zeros(3, 28, 28), IMAGE_MAGIC)[:-5], IMAGES, "truncated"),
        (idx_bytes(torch.zeros(3, 28, 28), IMAGE_MAGIC) + b"xx", IMAGES, "trailing bytes"),
        (b"\x00\x00", IMAGES, "truncated (2 bytes)"),
        (idx_bytes(torch.zeros(0, 28, 28), IMAGE_MAGIC), IMAGES, "holds no images"),
        (idx_bytes(torch.zeros(0), LABEL_MAGIC), LABELS, "holds no labels"),
        (idx_bytes(torch.zeros(3, 20, 20), IMAGE_MAGIC), IMAGES, "images are 20x20, expected 28x28"),
        (
            idx_bytes(torch.zeros(3, 28, 28), IMAGE_MAGIC),
            IdxFile("x", IMAGE_MAGIC, 5, None),
            "holds 3 images, expected 5",
        ),
        (idx_bytes(torch.tensor([1, 12, 3]), LABEL_MAGIC), LABELS, "label 12 is out of range 0..9"),
        (idx_bytes(torch.tensor([1, 2, 3]), LABEL_MAGIC), IdxFile("x", LABEL_MAGIC, 3, "0" * 32), "does not match"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, payload, spec, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_idx(write(tmp_path, payload), spec)


def test_read_idx_rejects_broken_gzip(tmp_path):
    good = gzip.compress(idx_bytes(torch.zeros(3, 28, 28), IMAGE_MAGIC))
    with pytest.raises(DataError, match="cannot be read or decompressed"):
        read_idx(write(tmp_path, good[: len(good) // 2], "f.gz"), IMAGES)


def test_a_decompression_bomb_is_refused_without_inflating_it(tmp_path):
    """A few kB of .gz that inflate to 64 MB past a 3-image header: refused after reading what the header promises."""
    import tracemalloc

    bomb = gzip.compress(idx_bytes(torch.zeros(3, 28, 28), IMAGE_MAGIC) + bytes(64 * 2**20), compresslevel=9)
    path = write(tmp_path, bomb, "bomb.gz")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="has trailing bytes after the 2,368 its header"):
            read_idx(path, IMAGES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(bomb) < 100_000 and peak < 4 * 2**20


def test_a_header_that_claims_gigabytes_is_refused(tmp_path):
    header = IMAGE_MAGIC.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (10**7, 28, 28))
    with pytest.raises(DataError, match=r"its header claims 10,000,000 images, more than this reader takes"):
        read_idx(write(tmp_path, gzip.compress(header + bytes(100)), "huge.gz"), IMAGES)


def test_a_count_that_is_not_the_official_one_is_refused_before_the_values_are_read(tmp_path):
    """A labels .gz claiming 32 million labels (and inflating to them): refused by its header, nothing inflated."""
    import tracemalloc

    count = 32 * 2**20
    header = LABEL_MAGIC.to_bytes(4, "big") + count.to_bytes(4, "big")
    path = write(tmp_path, gzip.compress(header + bytes(count), compresslevel=9), "labels.gz")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="holds 33,554,432 labels, expected 60,000"):
            read_idx(path, IdxFile("train-labels-idx1-ubyte", LABEL_MAGIC, 60_000, None))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
