"""The hostile suite: the attacks of issue 12, and where each one lives.

Every attack a careless or malicious user (or client) can make is a test.
Most live next to the code they attack; this module indexes them and holds
the attacks not covered elsewhere.

Special files (a FIFO, a link to ``/dev/zero``, a sparse 16 MiB+ rule file):
  tests/test_rules_hardening.py: test_fifo_is_refused_not_waited_on,
  test_device_link_is_refused, test_huge_file_is_refused,
  test_the_command_line_tools_refuse_a_fifo_rule_file (blkdebug-io, blkdebug-nbd);
  tests/test_plugin_hardening.py: test_rule_file_that_is_a_fifo_is_not_a_regular_file.
  A template that is the image itself (same path, symlink, hard link):
  tests/test_core_safety.py: test_create_refuses_a_template_that_is_the_image_itself.
  A template that is a FIFO (waited forever for a writer):
  tests/test_core_safety.py: test_create_refuses_a_template_that_is_a_fifo_instead_of_waiting.
  An image that is a FIFO (read-only: waited forever) or a directory:
  tests/test_core_safety.py: test_open_refuses_an_image_that_is_a_fifo_or_a_directory.
  Creating an image where a FIFO is (from a template: waited forever):
  tests/test_core_safety.py: test_create_over_a_fifo_refuses_it_instead_of_waiting.

Huge and NaN values:
  reads past Linux's 2 GiB per-call limit, short host reads:
  tests/test_core_safety.py (item 1);
  float, bool, string and >= 2**63 offsets and lengths:
  tests/test_core_safety.py::test_bad_numbers_fail_before_any_event;
  nan/inf/0/negative/1e300 timeouts: tests/test_core_safety.py::test_bad_timeouts_*,
  tests/test_plugin_hardening.py::test_non_finite_timeout_* (options, markers),
  tests/test_cli.py (``--wait-timeout nan``), tests/test_hostile_nbd.py
  (``handshake_timeout=nan``, ``max_connections=0``);
  nan/inf rule attributes in Python: tests/test_rule_extensions.py::test_rule_errors_name_the_attribute;
  TOML integers of 5,000 digits: tests/test_rules_hardening.py;
  rule attributes of 400 digits or 1e300 (named briefly, no OverflowError):
  tests/test_rules_hardening.py::test_a_number_far_out_of_range_*,
  test_a_toml_delay_far_out_of_range_names_the_file_and_line;
  here: image sizes >= 2**63, nan/inf literals in TOML rule files.

Quadratic inputs (20,000 rules, events, armed rules):
  tests/test_rules_hardening.py (items 9, 10, 11).

Slow and flooding NBD clients, wildcard addresses, SIGHUP to blkdebug-nbd: tests/test_hostile_nbd.py;
malformed NBD streams (Hypothesis): tests/test_nbd_fuzz.py;
disconnects mid-request: tests/test_nbd.py::test_disconnect_mid_request_and_while_held.

A write that lands while a flush runs (its dirty mark must survive), a
failed host sync: tests/test_core_safety.py::test_a_write_during_a_flush_keeps_the_disk_dirty,
test_a_failed_host_sync_leaves_the_disk_dirty.
A write that lands while a flush is held at ``flush_to_disk`` or waits out
an injected delay: tests/test_core_safety.py::
test_a_write_during_a_held_flush_makes_the_next_flush_raise_flush_to_disk,
test_a_write_during_a_delayed_flush_leaves_work_for_the_next_flush.

Recording started while another thread opens disks on the engine ("Set
changed size during iteration"):
tests/test_core_safety.py::test_recording_starts_while_another_thread_opens_disks.

A request waiting out an injected delay when the disk closes (it waited on):
tests/test_core_safety.py::test_close_cuts_an_injected_delay_short.

Close under load:
  threads writing through ``Disk`` while it closes, a request held at a
  breakpoint when it closes: tests/test_core_safety.py (items 2 and 4);
  an export closed with held requests: tests/test_nbd.py::test_close_disconnects_*;
  here: writers through ``disk.aio``, and an NBD export closed while its
  clients write.

Power loss and sweeps (recordings, crash copies, bodies that exit):
  tests/test_crash_hardening.py (test_a_recycled_copy_is_not_reused_across_seeds,
  test_allocated_zeroes_past_the_file_end_grow_the_crash_image_too,
  test_a_write_behind_the_engine_does_not_leak_into_the_next_state,
  test_a_state_failed_with_pytest_fail_is_counted_and_described,
  test_a_crash_image_knows_the_recorded_engines_custom_events,
  test_two_recordings_given_one_workdir_keep_their_own_snapshots,
  test_bad_geometry_and_limits_name_the_argument,
  test_a_mark_after_the_recording_or_not_a_str_is_refused,
  test_a_write_landing_while_the_recording_starts_is_not_lost,
  test_without_subtests_a_failing_crash_run_fails_the_test_not_its_teardown,
  test_a_state_of_another_split_item_is_not_called_missing,
  test_an_adapters_truncate_without_a_good_size_is_refused_when_reported,
  test_restore_replaces_a_link_instead_of_writing_through_it);
  tests/test_sweep_hardening.py (test_a_body_that_exits_at_one_point_does_not_end_the_sweep,
  test_crash_mode_images_keep_the_files_prep_left,
  test_crash_mode_keeps_a_file_in_a_subdirectory_in_its_place,
  test_a_check_that_calls_pytest_fail_names_the_point,
  test_a_delay_sweeps_and_a_rule_that_cannot_reach_a_point_is_refused,
  test_a_crash_mode_check_can_open_its_crash_state,
  test_an_async_body_or_check_is_refused,
  test_a_crash_mode_failure_report_shows_the_points_rule_and_trace,
  test_every_crash_image_of_a_point_is_checked_after_one_fails,
  test_the_image_size_is_parsed_and_checked_before_any_work,
  test_events_given_as_one_string_are_refused_by_name).

An ini file whose [inject-error] and [set-state] share an id (valid in QEMU; a
disk refuses it, saying why): tests/test_rules_hardening.py::test_an_id_shared_by_both_ini_kinds_is_refused_saying_why.

blkdebug-io requests ending past 2**63 - 1 (EIO as qemu-io says, not a
traceback): tests/test_cli.py::test_command_language_matches_qemu_io[int64 end].

An IPv6 export's qemu-legacy address (``nbd:[::1]:PORT``, was unparsable):
  tests/test_hostile_nbd.py::test_qemu_legacy_address_of_an_ipv6_export_brackets_the_host.

Overlapping aio requests in blkdebug-io (the older write's data stayed, a read
missed the write submitted before it): tests/test_qemuio_loop.py::test_a_poll_runs_host_io_oldest_first_and_completions_newest_first,
test_overlapping_aio_requests_see_the_data_in_submission_order.

A breakpoint on the flush qemu-io does when it exits (qemu-io hangs; blkdebug-io
said nothing, status 0): tests/test_cli.py::test_a_breakpoint_on_the_flush_qemu_io_does_when_it_exits_is_an_error.

A bad ``blkdebug_split`` marker (stopped the whole session at collection):
  tests/test_plugin_hardening.py::test_a_bad_split_marker_fails_its_test_at_setup_and_the_others_run.

A rule name in two of the factory's (or blkdebug-nbd's) rule files (a bare
``duplicate rule name``): tests/test_plugin_hardening.py::test_a_duplicate_rule_name_across_factory_rule_files_names_both_files.

save_rules into a missing directory or onto a symbolic link (the error named
its temporary file; the link was replaced, its file kept the old rules):
  tests/test_rules_hardening.py::test_save_rules_errors_name_the_path_and_a_link_is_written_through.

Values of 100,000 entries or characters in a rule file (an error message of
that size): tests/test_rules_hardening.py::test_a_huge_value_is_named_briefly.

An NBD socket in a missing directory (an error naming nothing):
  tests/test_hostile_nbd.py::test_a_socket_in_a_missing_directory_names_the_path.

blkdebug-io typed at, line by line (each command runs before the next line
is read; a prompt on a terminal): tests/test_cli.py::test_stdin_commands_run_one_by_one_as_they_are_typed,
test_stdin_on_a_terminal_gets_a_prompt_before_each_line, and with stdin closed:
test_a_closed_stdin_is_an_empty_script.

Read-only and closed disks: tests/test_core_safety.py (items 13, 14).
A disk closed just as its request is suspended (the hold waited out
hold_timeout and stayed listed): tests/test_core_safety.py::
test_a_disk_closed_as_its_request_is_suspended_fails_it_at_once.
A read-only disk's flush raised flush_to_os (QEMU's ends at once):
tests/test_conformance.py::test_a_flush_of_a_read_only_disk_raises_no_event_and_is_not_checked.
A closed ``disk.fileobj()`` (a write through it reached the disk), a bad
whence or a float offset to its ``seek``:
tests/test_core_safety.py::test_a_closed_diskfile_refuses_io_as_a_closed_file_does,
test_diskfile_seek_*.
A rule that only delays a read let it past a bad sector:
tests/test_rule_extensions.py::test_a_delay_only_rule_does_not_hide_a_bad_sector.
A bad-sector rule added at run time made healed sectors bad again:
tests/test_rule_extensions.py::test_adding_a_bad_sector_rule_does_not_unheal_written_sectors.
The report said a lost write was "let through ... errno=0":
tests/test_lies.py::test_the_report_says_a_write_was_lost_not_let_through.
A disk that fails to open (bad timeout or size, missing file, its open
event never resumed) on a shared engine: tests/test_core_safety.py::
test_a_disk_that_fails_to_open_adds_no_rule_to_a_shared_engine,
test_a_disk_whose_open_event_is_never_resumed_is_closed_not_left_attached.
Its descriptor is freed at once, not when the kept error is dropped:
tests/test_core_safety.py::test_a_disk_that_fails_to_open_frees_its_descriptor_at_once.
Buffers that cannot take the request (a strided memoryview to write, a
read-only buffer to ``readinto``) are refused before any event:
tests/test_core_safety.py::test_a_non_contiguous_write_buffer_fails_before_any_event,
test_diskfile_readinto_a_read_only_buffer_fails_before_the_read.
A write cancelled (or timed out) while held at ``write_aio`` raised
``pwritev_done`` and could be held again there:
tests/test_breakpoints.py::test_a_write_given_up_before_pwritev_raises_no_pwritev_done.
A write cancelled during its injected delay was held again at a
``pwritev_done`` breakpoint (``wait_for`` took the hold timeout):
tests/test_breakpoints.py::test_a_write_cancelled_in_its_delay_ends_cancelled_at_once.
``events="journal_commit"`` (a string, not a list) registered its letters:
tests/test_rule_extensions.py::test_events_given_as_one_string_are_refused_not_split_into_letters.
``is_suspended`` during another tag's resume (a false "no"):
tests/test_breakpoints.py::test_is_suspended_is_not_fooled_by_a_resume_of_another_tag.
Ctrl-C while a request is suspended: tests/test_plugin_hardening.py
(test_interrupt_with_a_suspended_request_prints_no_traceback) and
tests/test_cli.py (test_an_interrupted_script_closes_the_image_*).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from nbd_client import NBDClient

import pytest_blkdebug as bd
from pytest_blkdebug.core.errors import RuleFileError
from pytest_blkdebug.nbd import protocol as P
from pytest_blkdebug.rulefiles import loads_toml

# -- huge and NaN values -----------------------------------------------------------------


@pytest.mark.parametrize("size", [2**63, 2**70, "8388608T"])
def test_an_image_size_past_the_largest_file_is_refused_before_any_file(
    tmp_path: Path, size: object
) -> None:
    """Was a bare OverflowError from the host, after the file was created."""
    path = tmp_path / "huge.img"
    with pytest.raises(ValueError, match="larger than 2\\*\\*63 - 1 bytes"):
        bd.Disk.create(path, size)  # type: ignore[arg-type]
    assert not path.exists()
    with pytest.raises(ValueError, match="size"):
        bd.parse_size(size)  # type: ignore[arg-type]
    assert bd.parse_size(2**63 - 1) == 2**63 - 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309"])
@pytest.mark.parametrize("key", ["delay", "delay_jitter", "probability"])
def test_toml_nan_and_inf_literals_are_refused_naming_the_file(key: str, value: str) -> None:
    """TOML spells nan and inf as literals; a rule file cannot smuggle them in."""
    text = f'[[inject-error]]\nevent = "read_aio"\ndelay = 0.1\n{key} = {value}\n'
    if key == "delay":
        text = text.replace("delay = 0.1\n", "")
    with pytest.raises(RuleFileError) as info:
        loads_toml(text, path="hostile.toml")
    assert info.value.path == "hostile.toml"
    assert f"{key} must be a finite number" in str(info.value)


# -- close under load ---------------------------------------------------------------------


def _close_under_load(tmp_path: Path, writer_for: object, rounds: int) -> int:
    """Rounds of: 4 threads writing 0xaa, close, open another file (which
    likely takes the descriptor number the disk had). Returns the leaks."""
    leaks = 0
    for round_ in range(rounds):
        disk = bd.Disk.create(tmp_path / "a.img", 1 << 16)
        stop = threading.Event()
        started = threading.Barrier(5)
        threads = [
            threading.Thread(target=writer_for, args=(disk, stop, started))  # type: ignore[arg-type]
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        started.wait(10)
        disk.close()
        other = tmp_path / f"b{round_}.img"
        fd = os.open(other, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, 1 << 16)
        time.sleep(0.001)  # let the writers run after the number was reused
        stop.set()
        for t in threads:
            t.join(10)
        os.close(fd)
        assert not any(t.is_alive() for t in threads)
        if b"\xaa" in other.read_bytes():
            leaks += 1
    return leaks


def _aio_writer(disk: bd.Disk, stop: threading.Event, started: threading.Barrier) -> None:
    async def run() -> None:
        started.wait(10)
        while not stop.is_set():
            await disk.aio.write(0, b"\xaa" * 4096)

    try:
        asyncio.run(run())
    except (OSError, ValueError):
        return


def test_close_under_load_through_aio_never_writes_into_the_next_file(tmp_path: Path) -> None:
    """With Image.close freeing the number at once, 7-10 rounds of 30 leaked."""
    assert _close_under_load(tmp_path, _aio_writer, rounds=30) == 0


def test_an_nbd_export_closed_while_its_clients_write_ends_cleanly(tmp_path: Path) -> None:
    """Four clients write flat out; the export closes under them: every
    client sees its connection end, no server thread is left, and the disk
    itself still works and closes."""
    disk = bd.Disk.create(tmp_path / "img.raw", 1 << 20)
    before = set(threading.enumerate())
    export = disk.serve_nbd()
    assert export.socket is not None
    errors: list[BaseException] = []
    acked = threading.Event()

    def client() -> None:
        try:
            with NBDClient(export.socket, timeout=10.0) as c:
                while True:
                    c.write(0, b"\xaa" * 4096)
                    acked.set()
        except (OSError, P.ProtocolError, EOFError, ConnectionError):
            return  # the server went away: the expected end
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    assert acked.wait(10), "no write was acknowledged"
    export.close()
    for t in clients:
        t.join(15)
    assert not any(t.is_alive() for t in clients), "a client hangs after close"
    assert errors == []
    deadline = time.monotonic() + 10
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(threading.enumerate()) - before == set(), "server threads left running"
    disk.write(4096, b"after")
    assert disk.read(4096, 5) == b"after"
    disk.close()
