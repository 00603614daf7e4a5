import json
import subprocess
import sys

from ddmr.cli import main


def test_designs_table(capsys):
    assert main(["designs"]) == 0
    out = capsys.readouterr().out
    for name in ("BL-N", "BL-NS", "SG-ND", "SG-NSD", "UW-NSD", "UW-NSDH"):
        assert name in out


def test_designs_json(capsys):
    assert main(["designs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["design"] for r in rows][-1] == "UW-NSDH"
    assert rows[-1]["losses"] == "NCC, SSIM, DSC, HD"


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "ddmr", "designs"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "UW-NSD" in result.stdout


def test_console_script_ends_with_the_commands_status_and_its_whole_output(tmp_path):
    """The console script leaves at once after the command (``ddmr.cli.console``): the
    status is the command's, and what it printed (buffered: stdout is a pipe) arrives."""
    missing = tmp_path / "missing.nii.gz"
    result = subprocess.run([sys.executable, "-m", "ddmr", "register", "--fixed", str(missing),
                             "--moving", str(missing), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("ddmr register: error:") and "missing.nii.gz" in result.stderr
    assert not (tmp_path / "out").exists()
    listing = subprocess.run([sys.executable, "-m", "ddmr", "designs", "--json"],
                             capture_output=True, text=True, check=False)
    assert listing.returncode == 0 and json.loads(listing.stdout)[-1]["design"] == "UW-NSDH"


def test_unknown_command_exits_2():
    result = subprocess.run([sys.executable, "-m", "ddmr", "nope"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2


def test_negative_window_values_are_accepted():
    from ddmr.cli import _join_signed_values

    assert _join_signed_values(["prepare", "x", "--ct-window", "-100,400", "-o", "y"]) == [
        "prepare", "x", "--ct-window=-100,400", "-o", "y"]
    assert _join_signed_values(["--ct-window", "0,400"]) == ["--ct-window", "0,400"]
