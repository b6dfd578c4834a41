"""Run directories never lose data: warned fallbacks, refused resumes that delete nothing, config checks,
one process per directory, clear store errors, checkpoints that cannot run code."""

import logging
import sqlite3

import pytest
import torch

from fedintel.cli import main
from fedintel.config import ConfigError
from fedintel.experiment import resume_experiment, run_experiment
from fedintel.tracking.checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints
from fedintel.tracking.rundir import RunDirError, run_lock
from fedintel.tracking.store import MetricsStore, StoreError


@pytest.fixture
def interrupted(tiny_cfg, tmp_path):
    """A 3-round run stopped after round 2: checkpoints 0, 1, 2 and three logged rounds."""
    run_dir = tmp_path / "run"
    run_experiment(tiny_cfg(federation={"rounds": 3}, eval={"per_client": False}), run_dir, stop_after_round=2)
    return run_dir


def _rounds(run_dir):
    con = sqlite3.connect(run_dir / "metrics.db")
    try:
        return con.execute("SELECT round, name, value FROM round_metrics ORDER BY round, name").fetchall()
    finally:
        con.close()


def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(interrupted, caplog):
    checkpoint_path(interrupted, 2).write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="fedintel.tracking.checkpoint"):
        assert latest_checkpoint(interrupted)["round"] == 1
    assert "round_00002.pt is unreadable" in caplog.text


def test_resume_without_a_readable_checkpoint_refuses_and_deletes_nothing(interrupted, capsys):
    for _, path in list_checkpoints(interrupted):
        path.write_bytes(b"damaged")
    before = _rounds(interrupted)
    assert {r for r, _, _ in before} == {0, 1, 2}
    with pytest.raises(RunDirError, match="no readable checkpoint; nothing was changed or deleted"):
        resume_experiment(interrupted)
    assert _rounds(interrupted) == before
    assert all(p.read_bytes() == b"damaged" for _, p in list_checkpoints(interrupted))
    assert main(["resume", str(interrupted)]) == 2
    err = capsys.readouterr().err
    assert "no readable checkpoint" in err and "Traceback" not in err


def test_resume_refuses_a_checkpoint_written_with_other_settings(interrupted):
    cfg_file = interrupted / "config.yaml"
    original = cfg_file.read_text()
    cfg_file.write_text(original.replace("lr: 0.01", "lr: 0.02"))
    with pytest.raises(RunDirError, match="config hash differs"):
        resume_experiment(interrupted)
    cfg_file.write_text(original.replace("scheme: fedavg", "scheme: hierarchical"))
    with pytest.raises(RunDirError, match="scheme 'fedavg' but the run's config asks for 'hierarchical'"):
        resume_experiment(interrupted)
    cfg_file.write_text(original.replace("rounds: 3", "rounds: 4"))  # more rounds: the same state, resumable
    assert len(resume_experiment(interrupted).rounds) == 5


def test_a_second_process_on_a_run_directory_gets_a_clear_error(interrupted, tiny_cfg, tmp_path, capsys):
    from fedintel.unlearning.forget import forget

    before = _rounds(interrupted)
    with run_lock(interrupted, "resume"):
        with pytest.raises(RunDirError, match=r"is in use by pid \d+ \(resume\)"):
            resume_experiment(interrupted)
        with pytest.raises(RunDirError, match="in use"):
            forget(interrupted, 0)
        with pytest.raises((RunDirError, ConfigError), match="in use|already holds a run"):
            run_experiment(tiny_cfg(), interrupted)  # refused before anything is built or written
        assert main(["resume", str(interrupted)]) == 2
        assert "in use" in capsys.readouterr().err
    assert _rounds(interrupted) == before
    assert len(resume_experiment(interrupted).rounds) == 4  # the lock is released with its holder


def test_store_errors_are_clear_user_errors(tmp_path, capsys):
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "metrics.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"metrics store .*metrics.db: file is not a database"):
        MetricsStore(bad / "metrics.db")
    (bad / "config.yaml").write_text("name: x\n")
    assert main(["resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "file is not a database" in err and "Traceback" not in err


class _RunsCode:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_RunsCode.marker),))


def test_a_checkpoint_carrying_a_pickled_object_never_runs_it(interrupted, tmp_path):
    _RunsCode.marker = str(tmp_path / "pwned")
    torch.save({"round": 9, "state": _RunsCode()}, checkpoint_path(interrupted, 9))
    assert latest_checkpoint(interrupted)["round"] == 2  # refused like a damaged file
    assert not (tmp_path / "pwned").exists()
