"""``--workers auto``: processes and threads per step from the cores and the size of the steps."""
import json

import pytest
import torch
from conftest import deterministic

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.measure import count_macs
from compresslab.models.registry import create_model
from compresslab.runs.store import Step
from compresslab.steps import plan as plans
from compresslab.steps.executor import Execution, parse_workers
from compresslab.steps.specs import data_spec, distill_spec, prune_spec, train_spec

DATA = data_spec("mnist1d")
RECIPE = {"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 2, "batch_size": 256}
TINY = {"name": "cnn1d", "options": {"width": 4, "depth": 2, "hidden": 8}}
BIG = {"name": "cnn1d", "options": {"width": 64, "hidden": 128}}


def steps(model: dict, students: int = 4) -> dict:
    """A teacher, ``students`` distilled from it and one pruned child: width ``students + 1``."""
    teacher = Step("train", train_spec(DATA, model, RECIPE, 0))
    out = [teacher] + [Step("distill", distill_spec(DATA, model, RECIPE, s, loss={"kd": 1.0}), {"teacher": teacher})
                       for s in range(1, students + 1)]
    out.append(Step("prune", prune_spec(DATA, 0.5, RECIPE, 0), {"parent": teacher}))
    return {s.hash: s for s in out}


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int):
        monkeypatch.setattr(plans, "cores", lambda: n)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return set_cores


def test_tiny_steps_get_one_thread_and_run_in_this_process_when_the_work_is_small(cores):
    cores(8)
    p = plans.plan(steps(TINY))
    assert set(p.threads.values()) == {1}
    assert p.workers == 1 and p.serial_s < plans.SPAWN_PAYOFF_S and "in this process" in p.reason


def test_enough_work_spreads_tiny_steps_over_processes_up_to_the_dag_width(cores, monkeypatch):
    monkeypatch.setattr(plans, "SPAWN_PAYOFF_S", 0.0)
    cores(16)
    assert plans.plan(steps(TINY, students=4)).workers == 5  # the 4 students and the pruned child, at once
    cores(2)
    assert plans.plan(steps(TINY, students=4)).workers == 2
    one_chain = {s.hash: s for s in list(steps(TINY, students=0).values())[:1]}
    assert plans.plan(one_chain).workers == 1


def test_a_large_step_gets_threads_by_its_macs_up_to_its_workers_share(cores, monkeypatch):
    monkeypatch.setattr(plans, "SPAWN_PAYOFF_S", 0.0)
    model = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), **BIG["options"])
    per_batch = count_macs(model, (1, 40)) * RECIPE["batch_size"]
    monkeypatch.setattr(plans, "MACS_PER_THREAD", per_batch / 3.5)  # BIG wants 3 threads, TINY far less than 1
    cores(16)
    p = plans.plan(steps(BIG))
    assert p.workers == 5 and set(p.threads.values()) == {3}  # the pruned child is sized by its parent's model
    assert set(plans.plan(steps(TINY)).threads.values()) == {1}
    cores(8)  # 5 workers on 8 cores: one thread each, however large the step
    assert set(plans.plan(steps(BIG)).threads.values()) == {1}
    one = plans.plan(steps(BIG), workers=1)  # --workers 1: this process, threads by size
    assert one.workers == 1 and set(one.threads.values()) == {3}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a cap the user set holds
    assert set(plans.plan(steps(BIG), workers=1).threads.values()) == {1}


def test_estimated_seconds_are_the_recipes_training_at_the_measured_rate():
    from compresslab.steps import data_of

    step = Step("train", train_spec(DATA, TINY, {**RECIPE, "epochs": 20}, 0))
    data = data_of(step.spec)
    macs = count_macs(create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), **TINY["options"]),
                      (1, 40))
    n = data.x_train.shape[0]
    iterations = -(-n // RECIPE["batch_size"]) * 20
    assert plans.step_seconds(step, data, macs) == pytest.approx(
        plans.STEP_S + iterations * plans.ITERATION_S + 3 * macs * n * 20 / plans.TRAIN_MACS_PER_S)
    measure = Step("similarity", {"data": DATA, "split": "test"}, {"model": step})
    assert plans.step_seconds(measure, data, macs) == pytest.approx(
        plans.STEP_S + data.split("test")[0].shape[0] * macs / plans.TRAIN_MACS_PER_S)


def test_a_gpu_runs_steps_in_this_process():
    p = plans.plan(steps(TINY), "cuda")
    assert p.workers == 1 and p.threads == {}


def test_workers_option_parses_auto_and_integers_only():
    assert parse_workers("auto") == "auto" and parse_workers("AUTO") == "auto" and parse_workers("3") == 3
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(UserError, match="use auto or an integer >= 1"):
            parse_workers(bad)
    assert Execution().workers == "auto"


SPEC = """\
name: auto
data: mnist1d
parent: {name: cnn1d, options: {width: 8, depth: 2, hidden: 16}}
recipe: {optimizer: adam, lr: 0.01, weight_decay: 0, epochs: 1, batch_size: 256}
children:
  - {name: kd, method: distill, student: {name: cnn1d, options: {width: 4, depth: 2, hidden: 8}}}
  - {name: pruned, method: prune, amount: 0.5}
controls: {seeds: [1]}
latency: false
"""


def test_auto_records_its_choice_and_matches_one_worker_exactly(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    monkeypatch.setattr(plans, "SPAWN_PAYOFF_S", 0.0)  # this tiny study: worker processes all the same
    monkeypatch.setattr(plans, "cores", lambda: 2)
    assert main(["study", str(path), "--runs", str(tmp_path / "a"), "--quiet", "--json"]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["execution"]["workers"] == 2 and auto["execution"]["threads_per_step"] == [1]
    assert "2 worker processes" in auto["execution"]["reason"]
    before = torch.get_num_threads()
    assert main(["study", str(path), "--runs", str(tmp_path / "b"), "--workers", "1", "--quiet", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["execution"]["workers"] == 1 and one["execution"]["threads_per_step"] == [1]  # sized the same
    assert torch.get_num_threads() == before
    assert deterministic(auto) == deterministic(one)
