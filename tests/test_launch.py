"""The multi-process harness judges each rank by its own result file, never by console output."""
import pytest

from tests.launch import rank_verdicts
from tests.rank_pytest import launcher_rank


def write_result(directory, rank, tests=12, failures=0, errors=0, skipped=0):
    (directory / f"rank{rank}.xml").write_text(
        f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
        f'errors="{errors}" failures="{failures}" skipped="{skipped}" tests="{tests}" time="1.0"/>'
        f'</testsuites>')


def test_all_ranks_passed(tmp_path):
    write_result(tmp_path, 0)
    write_result(tmp_path, 1, skipped=1)
    assert rank_verdicts(tmp_path, 2) == ["rank 0: 12 passed, 0 skipped, 0 failed, 0 errors",
                                          "rank 1: 11 passed, 1 skipped, 0 failed, 0 errors"]


def test_a_rank_without_result_file_fails(tmp_path):
    write_result(tmp_path, 0)
    with pytest.raises(AssertionError, match="rank 1 wrote no result file"):
        rank_verdicts(tmp_path, 2)


@pytest.mark.parametrize("outcome", [{"failures": 1}, {"errors": 1}, {"tests": 0}, {"tests": 11}])
def test_a_failed_or_different_rank_fails(tmp_path, outcome):
    write_result(tmp_path, 0)
    write_result(tmp_path, 1, **outcome)
    with pytest.raises(AssertionError):
        rank_verdicts(tmp_path, 2)


@pytest.mark.parametrize("variable", ["HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"])
def test_rank_from_each_launcher(monkeypatch, variable):
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "3")
    assert launcher_rank() == 3


def test_elastic_options_go_to_horovodrun_only():
    from tests.launch import command, elastic_args

    options = elastic_args("discover.sh", min_np=1, max_np=2)
    cmd = command("gloo", 2, ["python", "train.py"], options)
    assert cmd[3:-3] == options and cmd[-3:] == ["--gloo", "python", "train.py"]
    assert options[options.index("--network-interface") + 1] == "lo"  # else it waits for a 2nd host
    with pytest.raises(ValueError, match="gloo"):
        command("mpi", 2, ["python", "train.py"], options)
