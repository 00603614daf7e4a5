"""Seeded subject-level splits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddmr.data.split import parse_fractions, split_subjects
from ddmr.errors import ConfigError


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 40), per_subject=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_split_partitions_by_subject(count, per_subject, seed):
    subject_of = {f"s{n}_{k}": f"s{n}" for n in range(count) for k in range(per_subject)}
    split = split_subjects(subject_of, (0.7, 0.15, 0.15), seed)
    everything = split["train"] + split["val"] + split["test"]
    assert sorted(everything) == sorted(subject_of)  # each id exactly once
    owner = {subject_of[i]: name for name, ids in split.items() for i in ids}
    for name, ids in split.items():
        assert all(owner[subject_of[i]] == name for i in ids)  # no subject in two sets
    if count >= 3:
        assert all(split.values())
    assert split == split_subjects(subject_of, (0.7, 0.15, 0.15), seed)  # same seed, same


def test_seed_changes_split_and_fractions_are_respected():
    subject_of = {f"id{n:02d}": f"id{n:02d}" for n in range(20)}
    a = split_subjects(subject_of, (0.7, 0.15, 0.15), seed=0)
    b = split_subjects(subject_of, (0.7, 0.15, 0.15), seed=1)
    assert a != b
    assert [len(a[k]) for k in ("train", "val", "test")] == [14, 3, 3]
    only_train = split_subjects(subject_of, (1.0, 0.0, 0.0), seed=0)
    assert len(only_train["train"]) == 20 and not only_train["val"] and not only_train["test"]


def test_parse_fractions():
    assert parse_fractions(".7,.15,.15") == (0.7, 0.15, 0.15)
    for bad in ("1,1", ".5,.5,.5", "a,b,c", "-.2,.6,.6"):
        with pytest.raises(ConfigError):
            parse_fractions(bad)


def test_split_file_fixes_the_sets_and_refuses_bad_ids(tmp_path):
    import json

    import pytest

    from ddmr.data.split import read_split_file
    from ddmr.errors import InputError

    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": ["d"]}))
    assert read_split_file(path, ["a", "b", "c", "d"]) == {
        "train": ["a", "b"], "val": ["c"], "test": ["d"]}
    with pytest.raises(InputError, match="in no set: e"):
        read_split_file(path, ["a", "b", "c", "d", "e"])
    with pytest.raises(InputError, match="not in the dataset: d"):
        read_split_file(path, ["a", "b", "c"])
    path.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": []}))
    with pytest.raises(InputError, match="in two sets: a"):
        read_split_file(path, ["a"])


def test_bundled_cohort_split_file_matches_cohort_split():
    import json

    from ddmr.data.cohort import cohort_split, sample_cohort_dir

    shipped = json.loads((sample_cohort_dir() / "split.json").read_text())
    assert shipped == cohort_split()
