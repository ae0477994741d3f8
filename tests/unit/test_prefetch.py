"""The training input: batches decoded by threads ahead of the step, the same pixels."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from sas_ray.core.data.augment import to_nchw
from sas_ray.core.data.images import CorruptImageError, decode_images
from sas_ray.core.training import prefetch


def jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize(("ahead", "threads"), [(0, 1), (1, 1), (2, 3)])
def test_batches_equal_decode_images_in_order(ahead: int, threads: int) -> None:
    batches = [jpegs(7, seed=s) for s in range(5)]
    got = list(prefetch.decoded_batches(batches, 32, prefetch=ahead, threads=threads))
    assert len(got) == 5
    for b, encoded in zip(got, batches, strict=True):
        assert b.shape == (7, 3, 32, 32) and b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(b, to_nchw(decode_images(encoded, size=32)))


def test_next_batches_decode_in_threads_while_the_step_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    all_three = threading.Event()
    names: list[str] = []
    real = prefetch._decode_into

    def record(out: np.ndarray, images: list[bytes], start: int, stop: int, size: int) -> None:
        real(out, images, start, stop, size)
        names.append(threading.current_thread().name)
        if len(names) == 3:
            all_three.set()

    monkeypatch.setattr(prefetch, "_decode_into", record)
    it = prefetch.decoded_batches([jpegs(2, seed=s) for s in range(3)], 16, prefetch=2,
                                  threads=1)
    next(it)  # the step holds batch 0: batches 1 and 2 decode meanwhile, unasked
    assert all_three.wait(10)
    assert all(n.startswith("decode") for n in names)
    assert len(list(it)) == 2


def test_a_decoding_error_reaches_the_step() -> None:
    batches = [jpegs(2), [b"not an image"], jpegs(2)]
    it = prefetch.decoded_batches(batches, 16, prefetch=2, threads=2)
    next(it)
    with pytest.raises((CorruptImageError, OSError)):
        next(it)


@pytest.mark.parametrize("cache_mb", [0, 1])
def test_train_input_decodes_once_when_the_rows_fit(cache_mb: float) -> None:
    """Cached (1 MiB holds 40 x 32 x 32 x 3) or not, the same batches; cached, every row is
    decoded once however many epochs ask for it."""
    rows = jpegs(40)
    asked: list[int] = []

    def encoded(positions: np.ndarray) -> list[bytes]:
        asked.extend(positions.tolist())
        return [rows[i] for i in positions]

    source = prefetch.TrainInput(encoded, len(rows), 32, threads=2, cache_mb=cache_mb)
    assert source.cached == (cache_mb > 0)
    plan = [np.array([3, 1, 4]), np.array([15, 9, 2, 6]), np.array([39, 0])]
    for _ in range(2):  # two epochs
        got = list(source.batches(plan))
        for b, pos in zip(got, plan, strict=True):
            assert b.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(b, to_nchw(decode_images([rows[i] for i in pos], size=32)))
    if cache_mb:
        assert sorted(asked) == list(range(40))
    else:
        assert len(asked) == 2 * 9


def test_the_local_executor_prepares_the_next_batch_while_this_one_is_used() -> None:
    """``one_ahead`` (the local executor's map_batches): batch i + 1 is being loaded while
    the consumer holds batch i, batch i + 2 is not (memory holds two batches), in order."""
    from sas_ray.executors.local.batches import one_ahead

    started = [threading.Event() for _ in range(4)]

    def load(i: int) -> int:
        started[i].set()
        return i

    seen = []
    for i in one_ahead(load, range(4)):
        if i + 1 < 4:
            assert started[i + 1].wait(5), f"batch {i + 1} was not loading while {i} was used"
        if i + 2 < 4:
            assert not started[i + 2].is_set()
        seen.append(i)
    assert seen == [0, 1, 2, 3] and list(one_ahead(load, [])) == []
