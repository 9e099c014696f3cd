"""hirn.core.launch: what torchrun's environment means, for hirn-train and hirn-run alike."""

import pytest

from hirn.core.errors import LaunchError
from hirn.core.launch import ProcessLayout
from hirn.runtime.batch import Shard
from hirn.train.distributed import from_env


def test_no_variables_is_one_process():
    assert ProcessLayout.from_env({}) == ProcessLayout(0, 1, 0)
    assert ProcessLayout.from_env({}).main


def test_local_rank_defaults_to_the_rank():
    assert ProcessLayout.from_env({"RANK": "2", "WORLD_SIZE": "4"}) == ProcessLayout(2, 4, 2)
    given = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}
    assert ProcessLayout.from_env(given).local_rank == 0


@pytest.mark.parametrize("environ, message", [
    ({"RANK": "one"}, "must be integers"),
    ({"RANK": "3", "WORLD_SIZE": "3"}, "RANK=3 does not fit WORLD_SIZE=3"),
    ({"WORLD_SIZE": "0"}, "does not fit WORLD_SIZE=0"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 is negative"),
])
def test_an_impossible_layout_is_refused(environ, message):
    with pytest.raises(LaunchError, match=message):
        ProcessLayout.from_env(environ)


def test_training_and_batches_read_the_same_layout(monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    d, shard = from_env(), Shard.from_env()
    assert (d.rank, d.world_size, d.local_rank) == (1, 2, 1)
    assert (shard.rank, shard.world_size, shard.local_rank) == (1, 2, 1)
