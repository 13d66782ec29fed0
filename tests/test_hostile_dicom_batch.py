"""DicomBatchSynthesis used carelessly or with hostile input (issue 16): races, colliding names, OUT inside IN,
odd series and output folders, resource bombs, interrupts, patient data, forged log lines."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import shutil
import signal
import tempfile
import time
import tracemalloc
import unittest
import warnings
from pathlib import Path
from unittest import mock

import pydicom
from parameterized import parameterized

from custom.engines import SynthesisError
from custom.io import DicomBatchError, find_dicom_series
from custom.io.reader import NO_PREAMBLE_LIMIT
from custom.transforms import OutputWriteError
from tests.test_dicom_batch import runner
from tests.test_dicom_fixtures import mni_volume, write_series

LOCK = ".dicom-synthesis.lock"
DEAD_PID = 99999999  # above any pid_max: a process that is not running


def volume():
    return mni_volume()[:, :, :6]


def restamp(files, **attrs) -> None:
    """Set header attributes in files already written (e.g. patient data the fixtures do not vary)."""
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in attrs.items():
            setattr(ds, k, v)
        ds.save_as(f)


class _Hung(BaseException):
    """Not an Exception, so that no ``except Exception`` in the code under test swallows it."""


@contextlib.contextmanager
def deadline(seconds: float):
    def hung(*_):
        raise _Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _CountingFile(io.FileIO):
    """A file that adds what is read from it to ``bytes_read`` (the buffered reader above it calls these)."""

    bytes_read = 0

    def readinto(self, buffer):
        n = super().readinto(buffer)
        _CountingFile.bytes_read += n or 0
        return n

    def readall(self):
        data = super().readall()
        _CountingFile.bytes_read += len(data)
        return data


def _counting_open(fd, mode="rb"):
    assert mode == "rb", mode
    return io.BufferedReader(_CountingFile(fd, "r"))


class _Killed(BaseException):
    pass


def _killed(*_):
    raise _Killed("SIGTERM reached the test's handler")


class HostileCase(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.inp, self.out = self.tmp / "in", self.tmp / "out"

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_batch(self, inp=None, out=None, **kwargs) -> dict:
        """Run, accepting the SynthesisError that failed rows cause; the report as a dict."""
        out = out or self.out
        with contextlib.suppress(SynthesisError):
            runner(inp or self.inp, out, **kwargs).run()
        return json.loads((out / "report.json").read_text(encoding="utf-8"))

    def hidden(self, folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class TestRace(HostileCase):
    """Item 3: overwrite=False holds when another process writes the same output at the same time."""

    def test_final_rename_is_the_check(self):
        write_series(self.inp, volume(), description="T1w")
        name = runner(self.inp, self.tmp / "probe").run()[0].output_folder
        r = runner(self.inp, self.out)
        synthesise = r._synthesise

        def other_process_writes_first(files):
            (self.out / name).mkdir()
            (self.out / name / "theirs.dcm").write_bytes(b"theirs")
            return synthesise(files)

        r._synthesise = other_process_writes_first
        record = r.run()[0]
        self.assertEqual(record.status, "skipped")
        self.assertIn("meanwhile", record.reason)
        self.assertEqual(os.listdir(self.out / name), ["theirs.dcm"])
        self.assertEqual(self.hidden(self.out), [])

    @parameterized.expand(
        [("failed_rename", OSError(errno.EIO, "simulated I/O error")), ("interrupt", KeyboardInterrupt())]
    )
    def test_overwrite_stopped_between_the_renames_keeps_the_old_series(self, _name, error):
        write_series(self.inp, volume())
        name = runner(self.inp, self.out).run()[0].output_folder
        old_uid = pydicom.dcmread(next((self.out / name).iterdir())).SeriesInstanceUID
        replace, failed = os.replace, []

        def second_rename_fails(src, dst):  # the first moves the old series away, the second brings the new in
            if Path(dst) == self.out / name and not failed:
                failed.append(src)
                raise error
            return replace(src, dst)

        with mock.patch("os.replace", second_rename_fails), self.assertRaises(SynthesisError):
            runner(self.inp, self.out, overwrite=True).run()
        self.assertEqual(len(failed), 1)
        files = sorted((self.out / name).iterdir())
        self.assertEqual(len(files), volume().shape[2])
        self.assertEqual(pydicom.dcmread(files[0]).SeriesInstanceUID, old_uid)
        self.assertEqual(self.hidden(self.out), [])

    def test_second_run_stops_while_the_lock_is_held(self):
        write_series(self.inp, volume())
        self.out.mkdir()
        fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self.assertRaises(DicomBatchError) as ctx:
                runner(self.inp, self.out).run()
        finally:
            os.close(fd)
        self.assertIn("in use by another", str(ctx.exception))
        self.assertNotIn("\n", str(ctx.exception))
        self.assertEqual(os.listdir(self.out), [LOCK])

    def test_report_goes_through_a_temporary_file_of_its_own(self):
        write_series(self.inp, volume())
        victim = self.tmp / "victim.txt"
        victim.write_text("keep")
        self.out.mkdir()
        for name in ("report.json", "report.csv"):  # the names write_file_atomic uses, planted as links
            os.symlink(victim, self.out / f".{name}.partial-{os.getpid()}")
        self.run_batch()
        self.assertEqual(victim.read_text(), "keep")
        self.assertFalse((self.out / "report.json").is_symlink())
        self.assertEqual(self.hidden(self.out), [])


class TestFolderNames(HostileCase):
    """Item 4 (and issue 15's readable names): one folder per SeriesInstanceUID, free of patient data."""

    def test_uids_alike_after_sanitising_get_folders_of_their_own(self):
        uids = ("1.2.3/4", "1.2.3_4", "1.2.3 4")
        for k, uid in enumerate(uids):
            write_series(self.inp / f"s{k}", volume(), series_uid=uid, description=f"T1w {k}", seed=k)
        report = self.run_batch(overwrite=True)
        self.assertEqual(report["counts"], {"written": 3, "skipped": 0, "failed": 0})
        folders = {r["output_folder"] for r in report["series"]}
        self.assertEqual(len(folders), 3)
        for name in folders:
            self.assertRegex(name, r"^t2w_s0003_[0-9a-f]{8}$")
            self.assertEqual(len(os.listdir(self.out / name)), volume().shape[2])

    def test_a_name_taken_twice_in_one_run_fails_the_second_series(self):
        for k in range(2):
            write_series(self.inp / f"s{k}", volume(), description=f"T1w {k}", seed=k)
        r = runner(self.inp, self.out)
        r.folder_name = lambda s: "t2w_same"
        with self.assertRaises(SynthesisError):
            r.run()
        self.assertEqual(sorted(x.status for x in r.records), ["failed", "written"])
        failed = [x for x in r.records if x.status == "failed"][0]
        self.assertIn("another series of this run", failed.reason)


class TestOutputInsideInput(HostileCase):
    """Item 5: a run never takes its own (or an earlier run's) synthetic series as a source."""

    def test_output_inside_input_is_not_searched(self):
        write_series(self.inp / "a", volume())
        out = self.inp / "synthetic"
        self.assertEqual(runner(self.inp, out).run()[0].status, "written")
        again = runner(self.inp, out).run()
        self.assertEqual([(r.status, "exists" in r.reason) for r in again], [("skipped", True)])

    def test_output_equal_to_input_is_refused(self):
        write_series(self.inp / "a", volume())
        before = sorted(p.relative_to(self.inp) for p in self.inp.rglob("*"))
        with self.assertRaises(DicomBatchError) as ctx:
            runner(self.inp, self.inp / "a" / "..").run()
        self.assertIn("output_dir is input_dir", str(ctx.exception))
        self.assertEqual(sorted(p.relative_to(self.inp) for p in self.inp.rglob("*")), before)

    def test_a_series_this_software_wrote_is_never_a_source(self):
        write_series(self.inp, volume())
        written = runner(self.inp, self.out).run()[0].output_folder
        shutil.copytree(self.out / written, self.tmp / "in2" / "copied")
        r = runner(self.tmp / "in2", self.tmp / "out2")
        with self.assertRaisesRegex(SynthesisError, "found no eligible MR series"):
            r.run()
        records = r.records
        self.assertEqual(records[0].status, "skipped")
        self.assertIn("synthetic series written by", records[0].reason)
        self.assertEqual(sorted(os.listdir(self.tmp / "out2")), ["report.csv", "report.json"])


class TestOddSeriesAndOutput(HostileCase):
    """Item 6: one odd series is one row of the report; an unusable output folder is one line."""

    def test_300_character_uid_is_a_row_not_a_traceback(self):
        write_series(self.inp / "long", volume(), series_uid="1.2." + "9" * 296, description="long UID")
        write_series(self.inp / "ok", volume(), description="ok", seed=1)
        report = self.run_batch()
        self.assertEqual(
            {r["series_description"]: r["status"] for r in report["series"]}, {"long UID": "written", "ok": "written"}
        )

    def test_malformed_patient_name_is_a_row_not_a_traceback(self):
        info = write_series(self.inp, volume(), shuffle=False)
        raw = Path(info["files"][-1]).read_bytes()  # an edge slice: the rest is still a regular series
        at = raw.index(b"\x10\x00\x10\x00PN")  # PatientName, explicit VR, 2-byte length
        n = int.from_bytes(raw[at + 6 : at + 8], "little")  # re-encoded as a sequence whose item is the name's bytes
        sq = b"\x10\x00\x10\x00SQ\x00\x00" + (n + 4).to_bytes(4, "little") + b"\xfe\xff\x00\xe0"
        Path(info["files"][-1]).write_bytes(raw[:at] + sq + raw[at + 8 :])
        report = self.run_batch()
        self.assertEqual(sorted(r["status"] for r in report["series"]), ["failed", "written"])
        self.assertIn("unreadable DICOM file", [r for r in report["series"] if r["status"] == "failed"][0]["reason"])

    def test_one_failed_series_is_a_failure_not_nothing_eligible(self):
        write_series(self.inp, volume(), drop_slice=2)  # a slice missing from its geometry
        with self.assertRaises(SynthesisError) as ctx:
            runner(self.inp, self.out).run()
        message = str(ctx.exception)
        self.assertTrue(message.startswith("DICOM synthesis: 1 series, 0 written, 0 skipped, 1 failed"), message)
        self.assertNotIn("no eligible", message)

    def test_output_that_is_a_file_is_one_line(self):
        write_series(self.inp, volume())
        self.out.write_text("x")
        with self.assertRaises(DicomBatchError) as ctx:
            runner(self.inp, self.out).run()
        self.assertIn("is not a folder", str(ctx.exception))
        self.assertNotIn("\n", str(ctx.exception))
        self.assertEqual(self.out.read_text(), "x")

    def test_read_only_output_is_one_line(self):
        write_series(self.inp, volume())
        if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses new files even to root
            out = Path("/sys")
            if not out.is_dir():
                self.skipTest("running as root without /sys: no read-only folder to try")
        else:
            out = self.tmp / "ro"
            out.mkdir(mode=0o555)
        with self.assertRaises(OutputWriteError) as ctx:
            runner(self.inp, out).run()
        self.assertIn("is not writable", str(ctx.exception))
        self.assertNotIn("\n", str(ctx.exception))


class TestResourceBombs(HostileCase):
    """Item 7, DICOM part: discovery reads regular files only, little of non-DICOM files, and keeps little."""

    def test_fifo_and_link_to_dev_zero_do_not_hang(self):
        write_series(self.inp / "a", volume())
        os.mkfifo(self.inp / "a" / "fifo")
        os.symlink("/dev/zero", self.inp / "a" / "zero")
        with deadline(30):
            report = self.run_batch()
        self.assertEqual(report["counts"]["written"], 1)
        self.assertEqual(report["not_read"], ["a/fifo: not a regular file", "a/zero: not a regular file"])

    def test_large_files_that_only_start_like_dicom_cost_little(self):
        self.inp.mkdir()
        (self.inp / "zeros.bin").write_bytes(bytes(20_000_000))
        (self.inp / "group8.bin").write_bytes(b"\x08\x00\x00\x00" + bytes(20_000_000))
        with mock.patch("custom.io.reader.open", _counting_open, create=True):
            _CountingFile.bytes_read = 0
            found = find_dicom_series(self.inp)
        self.assertEqual((found[0], found[2]), ([], 2))
        # bytes read, not seconds: the preamble of each, and NO_PREAMBLE_LIMIT (1 MiB) of group8.bin (40 MB before)
        self.assertLess(_CountingFile.bytes_read, 2 * NO_PREAMBLE_LIMIT)

    def test_large_private_elements_are_not_kept(self):
        src = write_series(self.tmp / "src", volume()[:, :, :4])
        self.inp.mkdir()
        for k, f in enumerate(src["files"]):  # deflated: 25 MB of private data in a ~30 kB file
            ds = pydicom.dcmread(f)
            ds.private_block(0x0029, "HOSTILE", create=True).add_new(0x10, "OB", bytes(25_000_000))
            ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
            ds.save_as(self.inp / f"im{k}", enforce_file_format=True)
        self.assertLess(sum(p.stat().st_size for p in self.inp.iterdir()), 1_000_000)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            found = find_dicom_series(self.inp)
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(found[0][0].files), 4)
        self.assertLess(kept, 5_000_000)  # 100 MB of private elements were kept before


class TestInterrupt(HostileCase):
    """Item 8, DICOM part: SIGTERM is SIGINT; either writes the report and ends with one line; partials are swept."""

    @parameterized.expand([("sigterm", signal.SIGTERM), ("sigint", signal.SIGINT)])
    def test_interrupt_writes_the_report_and_exits_with_one_line(self, _name, signum):
        for k in range(2):
            write_series(self.inp / f"s{k}", volume(), description=f"T1w {k}", seed=k)
        r = runner(self.inp, self.out)

        def interrupted(files):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the signal arrives before this ends
            raise AssertionError("no interrupt")

        r._synthesise = interrupted
        previous = signal.signal(signal.SIGTERM, _killed)  # today's default would end the test process
        try:
            with self.assertRaises(SynthesisError) as ctx:
                r.run()
            self.assertIs(signal.getsignal(signal.SIGTERM), _killed)  # the run put the handler back
        except (KeyboardInterrupt, _Killed) as e:
            self.fail(f"{type(e).__name__} escaped run()")
        finally:
            signal.signal(signal.SIGTERM, previous)
        message = str(ctx.exception)
        self.assertTrue(message.startswith("DICOM synthesis interrupted: 2 series"), message)
        self.assertNotIn("\n", message)
        report = json.loads((self.out / "report.json").read_text())
        self.assertEqual([s["status"] for s in report["series"]], ["skipped", "skipped"])
        self.assertTrue(all("interrupted" in s["reason"] for s in report["series"]))
        self.assertEqual(self.hidden(self.out), [])

    def test_stale_partials_are_swept(self):
        src = write_series(self.inp, volume())
        self.out.mkdir()
        for _ in range(2):  # what a killed run leaves: patient data, in folders named as the run names them
            stale = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.out)) / "dicom"
            stale.mkdir()
            shutil.copy(src["files"][0], stale / "IM00001.dcm")
        (self.out / f".report.json.partial-{DEAD_PID}").write_text("{}")  # a report of a process gone
        self.run_batch()
        self.assertEqual(self.hidden(self.out), [])

    def test_sweep_leaves_what_the_run_did_not_name_alone(self):
        """OUT may hold IN: the sweep takes only the names a run creates, in OUT itself, never the user's files."""
        self.inp = self.out / "scans"
        write_series(self.inp, volume())
        users = [
            self.inp / f".notes.partial-{DEAD_PID}-draft.txt",
            self.inp / f".scan.partial-{DEAD_PID}",  # a writer's name, but below OUT, where no report goes
            self.out / f".notes.partial-{DEAD_PID}-draft.txt",
            self.out / ".partial-notes" / "keep.txt",  # not a name tempfile.mkdtemp gives
            self.out / ".partial-abcdefgh",  # a file, not a folder
        ]
        for path in users:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("mine")
        self.assertEqual(self.run_batch()["counts"]["written"], 1)
        self.assertEqual([p for p in users if not p.exists()], [])


class TestPatientData(HostileCase):
    """Item 10: no patient data on the console or in the report; nothing else redacted."""

    def test_short_patient_id_leaves_uids_sop_classes_and_folders_alone(self):
        uid = "1.2.826.0.1.3680043.12.4"
        info = write_series(self.inp / "12", volume(), series_uid=uid)
        restamp(info["files"], PatientID="12")
        row = self.run_batch()["series"][0]
        self.assertEqual(row["series_instance_uid"], uid)
        self.assertEqual(row["sop_class"], "MR Image Storage")
        self.assertTrue((self.out / row["output_folder"]).is_dir())
        self.assertEqual(row["source_folder"], "[redacted]")

    def test_uid_shaped_patient_id_is_redacted(self):
        uid = "1.2.826.0.1.3680043.12.5"
        info = write_series(self.inp / "1.7.55", volume(), series_uid=uid)
        restamp(info["files"], PatientID="1.7.55")
        report = self.run_batch()
        row = report["series"][0]
        self.assertEqual((row["series_instance_uid"], row["source_folder"]), (uid, "[redacted]"))
        self.assertNotIn("1.7.55", (self.out / "report.json").read_text())

    def test_non_ascii_name_never_reaches_report_json(self):
        inp = self.tmp / "MÜLLER_ANNA"
        info = write_series(inp, volume())
        restamp(info["files"], SpecificCharacterSet="ISO_IR 192", PatientName="MÜLLER^ANNA")
        self.run_batch(inp)
        text = (self.out / "report.json").read_text(encoding="utf-8")
        decoded = json.dumps(json.loads(text), ensure_ascii=False)
        self.assertNotIn("müller", decoded.casefold())
        self.assertIn("[redacted]", decoded)

    def test_pydicom_warnings_never_show_the_birth_date(self):
        info = write_series(self.inp, volume())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            restamp(info["files"], PatientBirthDate="1961-04-23")  # not a valid DA: pydicom warns, quoting it
        with warnings.catch_warnings(record=True) as caught, self.assertLogs(level="DEBUG") as logs:
            warnings.simplefilter("always")
            self.run_batch()
        texts = [str(w.message) for w in caught] + logs.output
        self.assertEqual([t for t in texts if "1961" in t], [])

    def test_summary_does_not_print_a_patient_named_output_path(self):
        write_series(self.inp, volume())
        with self.assertLogs("custom.io.batch", level="INFO") as logs:
            self.run_batch(out=self.tmp / "ZEPHYRINE_results")
        summary = logs.output[-1]
        self.assertIn("DICOM synthesis: 1 series", summary)
        self.assertNotIn("ZEPHYRINE", summary.upper())


class TestMinor(HostileCase):
    """Item 13: a series one slice short is not written silently; UIDs cannot forge log lines; links are named."""

    def test_series_next_to_an_unreadable_edge_slice_is_not_written_silently(self):
        info = write_series(self.inp, volume(), shuffle=False)
        Path(info["files"][-1]).write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7fgarbage")
        with self.assertRaises(SynthesisError) as ctx:
            runner(self.inp, self.out).run()
        report = json.loads((self.out / "report.json").read_text())
        row = [r for r in report["series"] if r["series_instance_uid"]][0]
        self.assertEqual((row["status"], row["slices"]), ("written", volume().shape[2] - 1))
        self.assertIn("slices may be missing", row["reason"])
        self.assertIn("1 may lack slices", str(ctx.exception))

    def test_control_characters_in_uids_do_not_forge_log_lines(self):
        write_series(self.inp, volume(), series_uid="1.2.3\nDICOM synthesis: 0 series\x004")
        with self.assertLogs("custom.io.batch", level="INFO") as logs:
            report = self.run_batch()
        for record in logs.records:
            self.assertIsNone(re.search(r"[\x00-\x1f]", record.getMessage()), record.getMessage())
        self.assertEqual(report["counts"]["written"], 1)

    def test_unreadable_folder_is_named_in_log_and_report(self):
        write_series(self.inp / "a", volume())
        locked = self.inp / "locked"
        write_series(locked, volume(), seed=1)
        scandir = os.scandir

        def refused(path="."):  # root reads through permission bits: refuse as the kernel does for others
            if isinstance(path, (str, os.PathLike)) and Path(path) == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return scandir(path)

        locked.chmod(0)
        try:
            with mock.patch("os.scandir", refused), self.assertLogs("custom.io.batch", level="WARNING") as logs:
                report = self.run_batch()
        finally:
            locked.chmod(0o755)
        self.assertEqual(report["not_read"], ["locked: folder not readable (Permission denied)"])
        self.assertIn("locked: folder not readable", "\n".join(logs.output))
        self.assertEqual(report["counts"]["written"], 1)

    def test_symlinked_folder_is_named_in_log_and_report(self):
        write_series(self.tmp / "elsewhere", volume())
        write_series(self.inp / "a", volume(), seed=1)
        os.symlink(self.tmp / "elsewhere", self.inp / "linked")
        with self.assertLogs("custom.io.batch", level="WARNING") as logs:
            report = self.run_batch()
        self.assertEqual(report["not_read"], ["linked: symlinked folder, not followed"])
        self.assertIn("linked: symlinked folder", "\n".join(logs.output))
        self.assertEqual(report["counts"]["written"], 1)


if __name__ == "__main__":
    unittest.main()
