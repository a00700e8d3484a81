"""Task splits, stratified probe batches and the batch order."""

from __future__ import annotations

import pytest
import torch

from core.data import BatchOrder, indices_of, stratified_indices, task_classes


def test_every_class_exactly_once_in_disjoint_tasks():
    tasks = task_classes(200, 5, seed=40)
    assert len(tasks) == 40 and all(len(t) == 5 for t in tasks)
    assert sorted(torch.cat(tasks).tolist()) == list(range(200))


def test_same_seed_same_order_other_seed_other_order():
    a, b, c = (task_classes(20, 4, seed=s) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_fewer_tasks_take_the_first_ones_of_the_same_order():
    assert all(
        torch.equal(x, y)
        for x, y in zip(task_classes(10, 2, 1, num_tasks=3), task_classes(10, 2, 1))
    )


@pytest.mark.parametrize(
    ("num_classes", "per_task", "num_tasks", "message"),
    [
        (10, 3, None, "do not split into tasks of 3; set num_tasks"),
        (10, 2, 6, "num_tasks=6: 10 classes give 1 to 5 tasks"),
        (10, 0, None, "classes_per_task must be >= 1"),
    ],
)
def test_impossible_splits_say_why(num_classes, per_task, num_tasks, message):
    with pytest.raises(ValueError, match=message):
        task_classes(num_classes, per_task, 0, num_tasks)


def test_probe_batch_holds_every_class_of_its_task_in_equal_shares():
    labels = torch.arange(10).repeat_interleave(30)[
        torch.randperm(300, generator=torch.Generator().manual_seed(0))
    ]
    classes = task_classes(10, 5, seed=2)[1]
    idx = stratified_indices(labels, classes, 50, torch.Generator().manual_seed(1))
    assert len(idx) == len(set(idx.tolist())) == 50
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts[classes].tolist() == [10] * 5 and counts.sum() == 50
    # a request larger than the task: every sample of the task, each once
    everything = stratified_indices(labels, classes, 1000, torch.Generator().manual_seed(1))
    assert sorted(everything.tolist()) == indices_of(labels, classes).tolist()
    # a remainder goes to the first classes of the task
    uneven = torch.bincount(
        labels[stratified_indices(labels, classes, 7, torch.Generator())], minlength=10
    )
    assert uneven[classes].tolist() == [2, 2, 1, 1, 1]


def test_each_epoch_visits_every_index_once_and_a_restored_order_continues_identically():
    indices = torch.arange(100, 123)
    order = BatchOrder(indices, 5, torch.Generator().manual_seed(0))
    assert order.steps_per_epoch == 5
    for _ in range(2):
        epoch = torch.cat([order.next() for _ in range(order.steps_per_epoch)])
        assert sorted(epoch.tolist()) == indices.tolist()
    order.next()
    saved, rng = order.state_dict(), order.generator.get_state()
    expected = [order.next() for _ in range(12)]
    twin = BatchOrder(indices, 5, torch.Generator())
    twin.load_state_dict(saved)
    twin.generator.set_state(rng)
    assert all(torch.equal(a, b) for a, b in zip(expected, [twin.next() for _ in range(12)]))
