"""Several `lmtune compare` workers on one journal storage: each trial is taken once, a killed worker's trial is
failed by the heartbeat and run again (resumed from its checkpoint) by a live worker, and the board is the one
a single worker gives."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import REPO, lmtune_command, run_cli, unavailable

pytestmark = pytest.mark.integration
STRATEGIES = "head,bitfit,lora"


def _compare_args(sst2_slice, out, *extra) -> list[str]:
    return ["compare", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
            f"data.validation={sst2_slice['dev']}", "train.batch_size=16", "train.eval_train_samples=0",
            "train.lr=1e-3", "--strategies", STRATEGIES, "--budget", "8", "--no-prune", "--out", str(out), *extra]


def _compare(sst2_slice, out, *extra) -> list[str]:
    """A worker process (these tests kill and race them)."""
    return lmtune_command(*_compare_args(sst2_slice, out, *extra))


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server in a temp dir on a free loopback port (initdb as the postgres user when root)."""
    import glob
    import os
    import shutil
    import tempfile

    from lmtune.serving.process import free_port

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        unavailable("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql)",
                    "LMTUNE_REQUIRE_SERVICES")
    folder = tempfile.mkdtemp(prefix="lmtune-pg-")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, port = os.path.join(folder, "data"), free_port()
    subprocess.run([*as_postgres, f"{bins[-1]}/initdb", "-D", data, "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_postgres, f"{bins[-1]}/pg_ctl", "-D", data, "-l", os.path.join(folder, "log"), "-w",
                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True,
                   capture_output=True)
    try:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE lmtune"],
                       check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/lmtune"
    finally:
        subprocess.run([*as_postgres, f"{bins[-1]}/pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _storage(storage_url):
    import optuna

    if storage_url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(storage_url.removeprefix("journal:")))
    return optuna.storages.RDBStorage(storage_url)


def _trials(storage):
    import optuna

    try:
        return optuna.load_study(study_name="lmtune-compare", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the workers have not created the study yet
        return []


def _tail(worker) -> str:
    """The end of what an exited worker printed (why it stopped); nothing while it runs."""
    if worker.poll() is None:
        return ""
    return worker.communicate()[1][-3000:]


def _kill_mid_trial(first, out, storage, deadline):
    """SIGKILL `first` while a trial of its own is running with a checkpoint; return that trial's key.

    The filesystem is polled quickly for a new checkpoint; when one appears the first worker is stopped
    (SIGSTOP) while the storage says whose trial it is, so its trial cannot finish during the look-up."""
    from optuna.trial import TrialState

    victim, seen = f"{socket.gethostname()}:{first.pid}", set()
    while True:
        assert time.time() < deadline and first.poll() is None, \
            f"the first worker never reached a checkpoint: {first.poll()=}, {_tail(first)}"
        fresh = {p.parent.parent.parent.name for p in (out / "trials").glob("*/checkpoints/step-*/trainer_state.json")}
        if not fresh - seen:
            time.sleep(0.02)
            continue
        first.send_signal(signal.SIGSTOP)
        for trial in _trials(storage):
            if (trial.state == TrialState.RUNNING and trial.user_attrs.get("worker") == victim
                    and trial.user_attrs.get("key") in fresh):
                first.send_signal(signal.SIGKILL)
                first.wait()
                return trial.user_attrs["key"]
        seen |= fresh
        first.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def alone_winner(sst2_slice, tmp_path_factory) -> str:
    """The winner of the same comparison run by one worker, in this process (both storages compare with it)."""
    result = run_cli(*_compare_args(sst2_slice, tmp_path_factory.mktemp("alone") / "alone"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("winner: ")[1].split()[0]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_workers_one_killed_mid_trial_complete_every_trial_once(sst2_slice, tmp_path, kind, request,
                                                                    alone_winner):
    from optuna.trial import TrialState

    journal = tmp_path / "study.journal"
    url = f"journal:{journal}" if kind == "journal" else request.getfixturevalue("postgres")
    out = tmp_path / "shared"
    command = _compare(sst2_slice, out, "--storage", url, "--heartbeat", "1")
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while kind == "journal" and not journal.exists():  # the workers create it with the study
        assert time.time() < deadline and first.poll() is None, "the workers never created the study"
        time.sleep(0.05)
    storage = _storage(url)
    killed_key = _kill_mid_trial(first, out, storage, deadline)
    again = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=900) for p in (second, again)]
    for proc, (_, err) in zip((second, again), outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]

    trials = _trials(storage)
    for key in {t.user_attrs["key"] for t in trials if "key" in t.user_attrs}:
        done = [t for t in trials if t.user_attrs.get("key") == key and t.state in (TrialState.COMPLETE,
                                                                                     TrialState.PRUNED)]
        assert len(done) == 1, (key, [(t.number, t.state) for t in trials if t.user_attrs.get("key") == key])
    assert len({t.user_attrs["key"] for t in trials if t.state == TrialState.COMPLETE}) == 3
    failed = [t for t in trials if t.user_attrs.get("key") == killed_key and t.state == TrialState.FAIL]
    assert failed, "the killed worker's trial was not failed"
    assert any("resumed from step-" in err for _, err in outputs)  # the shared trial directory was resumed
    boards = [stdout.split("winner: ")[1] for stdout, _ in outputs]
    assert boards[0] == boards[1]

    assert alone_winner == boards[0].split()[0]  # the same winner as one worker
    printed = run_cli(*_compare_args(sst2_slice, out, "--storage", url, "--leaderboard"))
    assert printed.returncode == 0 and printed.stdout.split("winner: ")[1] == boards[0]
    assert json.loads((out / "leaderboard.json").read_text())["winner"] == boards[0].split()[0]


def test_sqlite_refuses_a_second_live_worker(sst2_slice, tmp_path):
    import optuna

    out = tmp_path / "cmp"
    out.mkdir()
    study = optuna.create_study(study_name="lmtune-compare", storage=f"sqlite:///{out / 'study.db'}",
                                direction="maximize")
    study.set_user_attr("worker:elsewhere:1", time.time())  # another machine's worker, beating now
    result = subprocess.run(_compare(sst2_slice, out), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert "--storage: this comparison's SQLite study is in use by elsewhere:1; SQLite takes one worker" in \
        result.stderr
