"""``--outputs``: a registration writes only the files chosen (and summary.json), and every
selection reloads in ANTs; fields are compressed and rounded to the stated step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddmr.errors import ConfigError
from ddmr.io.images import FIELD_STEP_MM
from ddmr.registration.outputs import OUTPUTS, check_outputs
from register_helpers import write_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def result(pair):
    import ddmr

    return ddmr.register(pair / "fixed.nii.gz", pair / "moving.nii.gz",
                         pair / "fixed_seg.nii.gz", pair / "moving_seg.nii.gz", model=False,
                         engine=True)


def _reload_in_ants(path, pair) -> None:
    """Read ``path`` as ANTs would use it: images as images, transforms by applying them."""
    import ants

    fixed = ants.image_read(str(pair / "fixed.nii.gz"))
    moving = ants.image_read(str(pair / "moving.nii.gz"))
    if path.name in ("displacement.nii.gz", "residual_displacement.nii.gz", "affine.mat",
                     "transform.h5"):
        warped = ants.apply_transforms(fixed, moving, [str(path)])
        assert warped.numpy().std() > 0
    elif path.name in ("inverse_displacement.nii.gz", "inverse_transform.h5"):
        back = ants.apply_transforms(moving, fixed, [str(path)])
        assert back.numpy().std() > 0
    elif path.name.endswith(".nii.gz"):
        image = ants.image_read(str(path))
        assert image.shape == fixed.shape
        assert np.allclose(image.origin, fixed.origin, atol=1e-3)
    elif path.name.endswith(".png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    elif path.name == "qc.html":  # (no ANTs reader: the page that embeds the pictures)
        assert "data:image/" in path.read_text()
    else:
        raise AssertionError(f"no ANTs reader for {path.name}")


@pytest.mark.parametrize("chosen", [[name] for name in OUTPUTS]
                         + [["warped", "affine", "residual_displacement"]])
def test_each_selection_writes_only_its_files_and_they_reload_in_ants(result, pair, tmp_path,
                                                                      chosen):
    out = result.save(tmp_path / "out", outputs=chosen)
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted([OUTPUTS[name] for name in chosen] + ["summary.json"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"] == sorted(OUTPUTS[name] for name in chosen)
    for name in chosen:
        _reload_in_ants(out / OUTPUTS[name], pair)


def test_the_two_ants_pieces_alone_reproduce_warped(result, pair, tmp_path):
    import ants

    out = result.save(tmp_path / "out", outputs="residual_displacement.nii.gz,affine.mat")
    fixed = ants.image_read(str(pair / "fixed.nii.gz"))
    moving = ants.image_read(str(pair / "moving.nii.gz"))
    warped = ants.apply_transforms(fixed, moving, [str(out / "residual_displacement.nii.gz"),
                                                   str(out / "affine.mat")]).numpy()
    inside = result.warped != 0
    assert np.corrcoef(warped[inside], result.warped[inside])[0, 1] > 0.999


def test_fields_are_compressed_and_on_the_step(result, tmp_path):
    import nibabel as nib

    out = result.save(tmp_path / "out", outputs=["displacement"])
    path = out / "displacement.nii.gz"
    raw_bytes = 3 * 4 * int(np.prod(result.geometry.shape))
    assert path.stat().st_size < 0.8 * raw_bytes
    stored = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)[:, :, :, 0, :]
    assert np.array_equal(stored / FIELD_STEP_MM, np.rint(stored / FIELD_STEP_MM))
    lps = result.displacement_mm.transpose(1, 2, 3, 0) * np.array([-1.0, -1.0, 1.0])
    assert np.abs(stored - lps).max() <= FIELD_STEP_MM / 2 + 1e-5


def test_unknown_or_empty_selection_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"unknown output 'warp'.*warped, warped_seg"):
        check_outputs("warped,warp")
    with pytest.raises(ConfigError, match="at least one"):
        check_outputs(" , ")
    assert check_outputs("all") == tuple(OUTPUTS)
    assert check_outputs(["warped.nii.gz", "warped", "affine"]) == ("warped", "affine")


def test_cli_outputs_option(pair, tmp_path, capsys):
    from ddmr.cli import main

    common = ["register", "--fixed", str(pair / "fixed.nii.gz"),
              "--moving", str(pair / "moving.nii.gz"),
              "--fixed-labels", str(pair / "fixed_seg.nii.gz"),
              "--moving-labels", str(pair / "moving_seg.nii.gz"), "--model", "none"]
    assert main([*common, "--outputs", "warped,nothing", "-o", str(tmp_path / "bad")]) == 2
    assert "unknown output 'nothing'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    code = main([*common, "--outputs", "warped", "--no-qc", "-o", str(tmp_path / "out")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json",
                                                                    "warped.nii.gz"]
    printed = capsys.readouterr().out
    assert "DSC" in printed and "HD95" in printed and "TRE" in printed and "QC" in printed
