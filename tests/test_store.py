"""LevelDB store: what is acknowledged survives reopen and kill -9."""

import signal
import subprocess
import sys
import textwrap

import pytest

from inferad.store import Store, StoreError


def test_job_id_is_accepted_once(tmp_path):
    with Store(tmp_path / "db") as store:
        assert store.accept_job("a" * 64, b"job")
        assert not store.accept_job("a" * 64, b"job")
        assert store.has_job("a" * 64)


def test_records_survive_reopen(tmp_path):
    with Store(tmp_path / "db") as store:
        store.accept_job("a" * 64, b"job-a")
        store.finish_job("a" * 64, b"result-a")
        store.accept_job("b" * 64, b"job-b")
        store.fail_job("b" * 64, "busy")
    with Store(tmp_path / "db") as store:
        a, b = store.job("a" * 64), store.job("b" * 64)
        assert (a.status, a.job, a.result) == ("done", b"job-a", b"result-a")
        assert (b.status, b.error, b.result) == ("failed", "busy", None)
        assert [r.job_id for r in store.jobs()] == ["a" * 64, "b" * 64]


def test_unfinished_jobs_are_marked_interrupted_after_restart(tmp_path):
    with Store(tmp_path / "db") as store:
        store.accept_job("a" * 64, b"job-a")
    with Store(tmp_path / "db") as store:
        assert store.mark_interrupted() == 1
        assert store.job("a" * 64).status == "interrupted"
        assert store.mark_interrupted() == 0


def test_second_process_gets_a_clear_error_while_the_db_is_open(tmp_path):
    with Store(tmp_path / "db"), pytest.raises(StoreError, match="in use by another process"):
        Store(tmp_path / "db")


WRITER = textwrap.dedent("""
    import sys
    from inferad.store import Store
    store = Store(sys.argv[1])
    i = 0
    while True:
        job_id = f"{i:064x}"
        store.accept_job(job_id, b"job")
        store.finish_job(job_id, b"result-%d" % i)
        print(job_id, flush=True)   # acknowledged: the write above was synced
        i += 1
""")


def test_acknowledged_results_survive_sigkill(tmp_path):
    db = tmp_path / "db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    acknowledged = [writer.stdout.readline().strip() for _ in range(200)]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    acknowledged += [line.strip() for line in writer.stdout if line.strip()]
    with Store(db) as store:
        for i, job_id in enumerate(acknowledged):
            record = store.job(job_id)
            assert record is not None and record.status == "done", job_id
            assert record.result == b"result-%d" % i


def test_a_settlement_the_chain_never_booked_is_forgotten_with_its_paid_marks(tmp_path):
    with Store(tmp_path / "db") as store:
        store.save_settlement(5, {"epoch": 5, "job_ids": ["aa"]}, ["aa"])
        store.save_settlement(7, {"epoch": 7, "job_ids": ["bb"]}, ["bb"])  # recorded, then the oracle crashed
        assert store.drop_settlements_after(5) == 1  # the chain's lastEpoch is 5
        assert store.is_settled("aa") and not store.is_settled("bb")
        assert store.latest_settlement()["epoch"] == 5
