"""A data directory is held by one process at a time, and let go when that process dies in any way."""

import os
import subprocess
import sys

import pytest

from ppaia.network.datadir import LOCK_FILE, DataDirError, DataDirInUse, hold

HOLDER = """
import sys, time
from ppaia.network.datadir import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def start_holder(data_dir) -> subprocess.Popen:
    """Another process that holds `data_dir` (it says so on stdout first)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_held_directory_is_refused_by_name_and_pid_until_its_holder_is_killed(tmp_path):
    data_dir = tmp_path / "d0"
    holder = start_holder(data_dir)
    try:
        with pytest.raises(DataDirInUse) as refused, hold(data_dir):
            pass
        assert str(data_dir) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
    finally:  # kill -9, as in a crash: the kernel drops the lock, and the lock file left behind is no bar
        holder.kill()
        holder.wait(timeout=10)
    assert (data_dir / LOCK_FILE).read_text().strip() == str(holder.pid)  # left behind by the crash
    with hold(data_dir) as lock:
        assert lock.read_text().strip() == str(os.getpid())


def test_the_lock_is_let_go_at_the_end_of_the_block_and_a_new_directory_is_created(tmp_path):
    data_dir = tmp_path / "new" / "d0"
    for _ in range(2):  # the second time finds the lock file left behind, and takes it
        with hold(data_dir):
            assert (data_dir / LOCK_FILE).is_file()
    with hold(data_dir), pytest.raises(DataDirInUse), hold(data_dir):  # a second holder in this process
        pass


def test_a_path_that_cannot_be_a_data_directory_is_an_error_naming_it(tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("")
    for path in (taken, taken / "below"):
        with pytest.raises(DataDirError, match="a-file"), hold(path):
            pass
