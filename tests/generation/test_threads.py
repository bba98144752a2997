"""The thread count a generation runs with (cove.generation.threads): the cores free when it
starts, at least one, never more than torch's count, restored after."""

from __future__ import annotations

import pytest
import torch

from cove.generation import threads


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_running_tasks_from_loadavg():
    assert threads.running_tasks("0.52 0.58 0.59 3/126 4567\n") == 3
    assert threads.running_tasks("11.01 11.12 9.65 12/160 11389") == 12


def test_running_threads_from_task_stats():
    stats = ["4567 (python) R 1 4567 4567 0 -1 4194304",
             "4568 (python) S 1 4567 4567 0 -1 4194368",
             "4569 (pt main) thread) R 1 4567 4567 0 -1 4194368",  # a name with ") "
             "4570 (omp) D 1 4567 4567 0 -1 4194368"]
    assert threads.running_threads(stats) == 2
    assert threads.running_threads([]) == 0


@pytest.mark.parametrize("limit, cpus, others, expected", [
    (2, 2, 0.0, 2),   # quiet: torch's count
    (2, 2, 0.4, 2),   # a task now and then
    (2, 2, 0.6, 1),   # most readings saw one other task: one core left
    (2, 2, 1.0, 1),
    (2, 2, 9.0, 1),   # overloaded: still one thread
    (4, 16, 3.0, 4),  # never more than torch's count
    (1, 16, 0.0, 1),  # nor more than the user set
    (8, 8, 2.5, 6),   # half rounds up
])
def test_threads_for(limit, cpus, others, expected):
    assert threads.threads_for(limit, cpus, others) == expected


def test_others_running_reads_this_system():
    others = threads.others_running()
    assert others is not None and others >= 0.0


def test_lowered_inside_and_restored_after(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "_cpus", lambda: 2)
    monkeypatch.setattr(threads, "others_running", lambda: 1.0)
    with threads.generation_threads(torch.device("cpu")) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="stop"), \
            threads.generation_threads(torch.device("cpu")):
        assert torch.get_num_threads() == 1
        raise RuntimeError("stop")
    assert torch.get_num_threads() == 2


def test_the_users_count_is_never_raised(monkeypatch):
    before = torch.get_num_threads()
    calls = []
    monkeypatch.setattr(threads, "_cpus", lambda: 16)
    monkeypatch.setattr(threads, "others_running", lambda: calls.append(1) or 0.0)
    try:
        torch.set_num_threads(1)
        with threads.generation_threads(torch.device("cpu")) as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert calls == []  # one thread: nothing to measure
        torch.set_num_threads(2)
        with threads.generation_threads(torch.device("cpu")) as n:
            assert n == 2 and torch.get_num_threads() == 2  # 16 free cores: still 2
        assert calls == [1]
    finally:
        torch.set_num_threads(before)


def test_other_devices_and_unknown_load_keep_the_count(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "others_running", lambda: 9.0)
    with threads.generation_threads(torch.device("meta")) as n:
        assert n == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "others_running", lambda: None)
    with threads.generation_threads(torch.device("cpu")) as n:
        assert n == 2 and torch.get_num_threads() == 2


def test_generate_steps_with_the_chosen_count(model, two_threads, monkeypatch):
    """generate runs its prompt and steps at the chosen count and restores torch's after."""
    monkeypatch.setattr(threads, "_cpus", lambda: 2)
    monkeypatch.setattr(threads, "others_running", lambda: 3.0)
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    ids = torch.tensor([[5, 6, 7]])
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "others_running", lambda: 0.0)
    seen.clear()
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), out)
    assert set(seen) == {2}
