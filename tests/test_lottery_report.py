"""run_lottery: IMP + random-reinit control + per-round LMC stability, written as JSON + PNG."""
import json

import pytest

from compresslab.errors import UserError
from compresslab.study import lottery as lottery_mod
from compresslab.study.lottery import run_lottery
from compresslab.train.recipe import Recipe

RECIPE = Recipe(optimizer="adam", lr=0.01, weight_decay=0.0, epochs=2, batch_size=128)
RECORD_KEYS = {"round", "sparsity", "val_acc", "test_acc", "control_test_acc", "barrier", "stable"}


def test_run_lottery_writes_report(tmp_path):
    out = tmp_path / "lt"
    events = []
    report = run_lottery("mlp", "digits", options={"widths": [32]}, recipe=RECIPE, rounds=2, rate=0.5,
                         lmc_points=3, out=out, callback=events.append)

    saved = json.loads((out / "lottery.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert {"model", "data", "rounds", "rate", "rewind_epoch", "records", "seconds"} <= set(saved)
    assert (saved["model"], saved["data"], saved["rounds"], saved["rate"]) == ("mlp", "digits", 2, 0.5)

    recs = saved["records"]
    assert [r["round"] for r in recs] == [0, 1, 2]
    assert all(set(r) == RECORD_KEYS for r in recs)
    assert [round(r["sparsity"], 2) for r in recs] == [0.0, 0.5, 0.75]
    assert recs[0]["control_test_acc"] is None
    assert all(isinstance(r["control_test_acc"], float) for r in recs[1:])
    for r in recs:
        assert isinstance(r["barrier"], float)
        assert r["stable"] == (r["barrier"] <= saved["stable_threshold"])
        assert 0.0 <= r["test_acc"] <= 1.0
    assert [e["round"] for e in events if e["event"] == "lmc"] == [0, 1, 2]

    assert (out / "lottery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"rate": 0.0}, {"rate": 1.0},
                                    {"rewind_epoch": 2}, {"rewind_epoch": -1}, {"lmc_points": 1}])
def test_bad_arguments_fail_before_training(tmp_path, monkeypatch, kwargs):
    def no_data(*a, **k):
        raise AssertionError("loaded data despite bad arguments")

    monkeypatch.setattr(lottery_mod, "dataset", no_data)
    args = {"recipe": RECIPE, "out": tmp_path / "lt", **kwargs}
    with pytest.raises(UserError):
        run_lottery("mlp", "digits", **args)


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        run_lottery("mlp", "digits", recipe=RECIPE, out=f)
