"""RAM-backed scratch: memmap round trip, cleanup on exit, error and kill, the root, cached-teacher CKA."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from compresslab.errors import UserError
from compresslab.measure.cka import cache_features, cka_against_cached, cka_between
from compresslab.models import create_model
from compresslab.scratch import ENV, Scratch, scratch_root


def test_memmap_round_trip(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(6, 4) / 7
    with Scratch(tmp_path) as s:
        a = s.array("acts", data.shape, np.float32)
        assert isinstance(a, np.memmap) and not a.any()
        a[:] = data
        a.flush()
        b = s.open("acts")
        assert b.dtype == np.float32 and b.shape == (6, 4) and not b.flags.writeable
        np.testing.assert_array_equal(b, data)
        assert (s.path / "acts").stat().st_size == data.nbytes
        with pytest.raises(UserError, match="already exists"):
            s.array("acts", (2,), np.int64)
        with pytest.raises(UserError, match="no scratch array"):
            s.open("other")


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "a..b", ""])
def test_bad_names_are_rejected(tmp_path, name):
    with Scratch(tmp_path) as s, pytest.raises(UserError, match="names"):
        s.array(name, (3,))


def test_directory_removed_on_exit_and_on_exception(tmp_path):
    with Scratch(tmp_path) as s:
        s.array("x", (10,))[:] = 1
        path = s.path
        assert path.is_dir() and path.parent == tmp_path and path.name.startswith(f"compresslab-{os.getpid()}-")
    assert not path.exists() and s.path is None
    with pytest.raises(RuntimeError, match="boom"), Scratch(tmp_path) as s:
        s.array("x", (10,))
        path = s.path
        raise RuntimeError("boom")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_stale_directory_of_a_killed_process_is_removed(tmp_path):
    child = ("import sys, time\nfrom compresslab.scratch import Scratch\n"
             "s = Scratch(sys.argv[1]).__enter__()\ns.array('x', (1000,))[:] = 1\n"
             "print(s.path, flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        stale = proc.stdout.readline().strip()
        assert stale and os.path.isdir(stale)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert os.path.isdir(stale)  # SIGKILL: no cleanup ran
    alive = tmp_path / f"compresslab-{os.getpid()}-live"  # ours, still running: kept
    other = tmp_path / "compresslab-notapid-x"  # not our naming: kept
    alive.mkdir()
    other.mkdir()
    with Scratch(tmp_path) as s:
        assert not os.path.exists(stale)
        assert alive.is_dir() and other.is_dir() and s.path.is_dir()


def test_root_from_environment_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path))
    assert scratch_root() == tmp_path
    with Scratch() as s:
        assert s.path.parent == tmp_path
    monkeypatch.delenv(ENV)
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        assert str(scratch_root()) == "/dev/shm"


def test_missing_or_unwritable_root_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not a directory"), Scratch():
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a directory"), Scratch(tmp_path / "file"):
        pass
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # running as root: permissions are not enforced, so pretend
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real(p, mode))
    with pytest.raises(UserError, match="not writable"), Scratch(locked):
        pass


def test_not_open_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not open"):
        Scratch(tmp_path).array("x", (3,))


def test_cached_teacher_cka_equals_cka_between(tmp_path):
    torch.manual_seed(0)
    kw = dict(num_classes=10, in_channels=1, input_shape=(1, 40), depth=2)
    teacher = create_model("cnn1d", width=8, hidden=16, **kw)
    students = [create_model("cnn1d", width=4, hidden=8, **kw), create_model("cnn1d", width=8, hidden=16, **kw)]
    x = torch.randn(230, 1, 40)
    teacher.train()
    with Scratch(tmp_path) as s:
        cached = cache_features(teacher, x, None, s, batch_size=64)
        assert teacher.training  # flags restored
        assert all(isinstance(a, np.memmap) and a.dtype == np.float32 and a.shape[0] == 230 for a in cached.values())
        for student in students:
            got = cka_against_cached(cached, student, x, batch_size=64)
            want = cka_between(teacher, student, x, batch_size=64)
            assert list(got) == list(want)
            for key, w in want.items():
                g = got[key]
                assert (g["n"], g["dims"], g["mode"]) == (w["n"], w["dims"], w["mode"])
                for est in ("biased", "unbiased", "cka"):
                    assert g[est] == pytest.approx(w[est], abs=1e-6)
        one = cka_against_cached(cached, students[0], x, ["stage2"])
        assert list(one) == ["stage2"]
        with pytest.raises(UserError, match="not cached"):
            cka_against_cached(cached, students[0], x, ["nope"])
        with pytest.raises(UserError, match="examples"):
            cka_against_cached(cached, students[0], x[:100])
