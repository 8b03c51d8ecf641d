"""The package registry holds every generated task once, under its own name."""

from nestlearn.eval import tasks


def test_registry_merges_every_family_of_tasks_without_collisions():
    groups = [tasks.FORMAL_TASKS, tasks.MAD_TASKS, tasks.MQAR_TASKS]
    assert len(tasks.TASKS) == sum(len(g) for g in groups)
    for group in groups:
        assert all(tasks.TASKS[name] is spec for name, spec in group.items())
    assert all(spec.kind in ("classification", "generation") for spec in tasks.TASKS.values())
    assert all(spec.tests for spec in tasks.TASKS.values())
