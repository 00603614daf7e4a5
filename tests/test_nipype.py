"""Issue 34: the Nipype interfaces (:mod:`ddmr.interfaces.nipype`) in a workflow.

``Register`` -> ``Apply`` (``ddmr apply`` with ``transform.h5``), a Function node calling
antspyx's ``apply_transforms`` with Register's transform list, and Nipype's own ANTs
``ApplyTransforms`` node (its real command line, run by a stand-in ``antsApplyTransforms``
program that calls the one antspyx ships): each must reproduce ``warped.nii.gz``; and
``reverse_transforms`` in ``ApplyTransforms`` must reproduce ``Apply`` with the output
folder and ``inverse``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nipype")

from nipype import Node, Workflow
from nipype.interfaces.ants import ApplyTransforms
from nipype.interfaces.base import isdefined
from nipype.interfaces.utility import Function

from ddmr.interfaces.nipype import REGISTER_FILES, Apply, Register
from ddmr.io.images import load_image, save_image, save_labels
from register_helpers import oblique_fixed, other_moving, sample_scene

SHIFT = (2.0, -3.0, 1.5)


def antspy_warp(fixed: str, moving: str, transforms: list) -> str:
    """A Function node's body: ``moving`` onto ``fixed``'s grid by antspyx (self-contained,
    as Nipype runs it from its source)."""
    import os

    import ants

    warped = ants.apply_transforms(ants.image_read(fixed), ants.image_read(moving),
                                   list(transforms), interpolator="linear")
    path = os.path.abspath("antspy_warped.nii.gz")
    ants.image_write(warped, path)
    return path


def _stand_in_ants(folder: Path) -> Path:
    """A folder with an ``antsApplyTransforms`` program that runs antspyx's compiled one
    with its arguments (Nipype's ANTs interfaces need the program on PATH)."""
    folder.mkdir()
    program = folder / "antsApplyTransforms"
    program.write_text(f"#!{sys.executable}\nimport sys\n"
                       "from ants.internal import get_lib_fn\n"
                       "sys.exit(get_lib_fn('antsApplyTransforms')(sys.argv[1:]))\n")
    program.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """The workflow, run once: {node name: its outputs}, and the input files."""
    folder = tmp_path_factory.mktemp("nipype")
    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    files = {name: folder / f"{name}.nii.gz" for name in
             ("fixed", "moving", "fixed_seg", "moving_seg")}
    save_image(files["fixed"], sample_scene(fixed_geometry, sharp=True), fixed_geometry)
    save_image(files["moving"], sample_scene(moving_geometry, SHIFT, sharp=True),
               moving_geometry)
    save_labels(files["fixed_seg"], sample_scene(fixed_geometry, labels=True), fixed_geometry)
    save_labels(files["moving_seg"], sample_scene(moving_geometry, SHIFT, labels=True),
                moving_geometry)
    fixed, moving = str(files["fixed"]), str(files["moving"])

    register = Node(Register(fixed=fixed, moving=moving, fixed_labels=str(files["fixed_seg"]),
                             moving_labels=str(files["moving_seg"]), model="none",
                             engine_iterations=[20, 10, 0]), name="register")
    apply_image = Node(Apply(moving=moving, reference=fixed), name="apply_image")
    apply_inverse = Node(Apply(moving=fixed, inverse=True), name="apply_inverse")
    antspy = Node(Function(input_names=["fixed", "moving", "transforms"],
                           output_names=["warped"], function=antspy_warp), name="antspy")
    antspy.inputs.fixed, antspy.inputs.moving = fixed, moving
    ants_forward = Node(ApplyTransforms(input_image=moving, reference_image=fixed,
                                        interpolation="Linear"), name="ants_forward")
    ants_inverse = Node(ApplyTransforms(input_image=fixed, reference_image=moving,
                                        interpolation="Linear"), name="ants_inverse")
    workflow = Workflow(name="ddmr_flow", base_dir=str(folder / "work"))
    workflow.config["execution"]["crashdump_dir"] = str(folder)  # not the tests' folder
    workflow.connect([
        (register, apply_image, [("composite_transform", "transform")]),
        (register, apply_inverse, [("output_dir", "transform")]),
        (register, antspy, [("reverse_forward_transforms", "transforms")]),
        (register, ants_forward, [("reverse_forward_transforms", "transforms"),
                                  ("reverse_forward_invert_flags", "invert_transform_flags")]),
        (register, ants_inverse, [("reverse_transforms", "transforms"),
                                  ("reverse_invert_flags", "invert_transform_flags")]),
    ])
    path = f"{_stand_in_ants(folder / 'bin')}{os.pathsep}{os.environ['PATH']}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", path)
        patch.setenv("NIPYPE_NO_ET", "1")  # no look-up of Nipype's latest version online
        graph = workflow.run(plugin="Linear")
    outputs = {node.name: node.result.outputs for node in graph.nodes()}
    return outputs, files


def _close(image: np.ndarray, reference: np.ndarray, name: str, tolerance: float = 0.01
           ) -> None:
    """``image`` equals ``reference`` where both are inside their grids (zero outside)."""
    mask = reference != 0
    inside = mask & (image != 0)
    assert inside.sum() > 0.98 * mask.sum(), name
    scale = np.abs(reference).max()
    assert np.abs(image - reference)[inside].max() < tolerance * scale, name
    assert np.corrcoef(image[inside], reference[inside])[0, 1] > 0.9999, name


def test_register_outputs_are_the_files_of_its_folder(flow):
    """Every file is kept (Nipype deletes the files of outputs no node takes, but output_dir
    is taken), and Register lists each."""
    outputs, files = flow
    out = Path(outputs["register"].output_dir)
    result = Register(fixed=str(files["fixed"]), moving=str(files["moving"]),
                      output_dir=str(out))._list_outputs()
    for name, file in REGISTER_FILES.items():
        assert result[name] == str(out / file), name
        assert (out / file).is_file(), name
    assert result["forward_transforms"] == [str(out / "affine.mat"),
                                            str(out / "residual_displacement.nii.gz")]
    assert result["reverse_forward_transforms"] == result["forward_transforms"][::-1]
    assert result["reverse_transforms"] == [str(out / "inverse_displacement.nii.gz")]
    assert result["reverse_invert_flags"] == [False]
    assert result["qc_passed"] is True and result["qc_failed"] == []


def test_register_outputs_left_out_are_undefined(tmp_path):
    """With outputs=[...] some files are not written: their outputs are undefined, and the
    transform lists fall back on the composites."""
    for file in ("transform.h5", "inverse_transform.h5", "warped.nii.gz"):
        (tmp_path / file).write_bytes(b"")
    (tmp_path / "summary.json").write_text('{"qc": {"passed": false, "failed": ["NCC"]}}')
    result = Register(fixed=str(tmp_path / "warped.nii.gz"),
                      moving=str(tmp_path / "warped.nii.gz"),
                      output_dir=str(tmp_path))._list_outputs()
    for name in ("displacement", "affine", "residual_displacement", "qc_page", "warped_seg"):
        assert not isdefined(result[name]), name
    assert result["reverse_forward_transforms"] == [str(tmp_path / "transform.h5")]
    assert result["reverse_transforms"] == [str(tmp_path / "inverse_transform.h5")]
    assert result["qc_passed"] is False and result["qc_failed"] == ["NCC"]


def test_apply_and_ants_reproduce_warped(flow):
    outputs, _ = flow
    warped = load_image(Path(outputs["register"].output_dir) / "warped.nii.gz")[0]
    by_apply = load_image(outputs["apply_image"].output_file)[0]
    np.testing.assert_allclose(by_apply, warped, atol=1e-4 * np.abs(warped).max())
    _close(load_image(outputs["antspy"].warped)[0], warped, "ants.apply_transforms")
    _close(load_image(outputs["ants_forward"].output_image)[0], warped,
           "nipype ApplyTransforms")


def test_ants_reverse_transforms_reproduce_apply_inverse(flow):
    outputs, files = flow
    by_apply = load_image(outputs["apply_inverse"].output_file)[0]
    by_ants = load_image(outputs["ants_inverse"].output_image)[0]
    assert by_apply.shape == load_image(files["moving"])[0].shape
    _close(by_ants, by_apply, "nipype ApplyTransforms, reverse_transforms")


def test_composite_transform_reproduces_warped(flow):
    outputs, files = flow
    out = Path(outputs["register"].output_dir)
    warped = load_image(out / "warped.nii.gz")[0]
    cwd = os.getcwd()
    try:
        os.chdir(out.parent)
        path = antspy_warp(str(files["fixed"]), str(files["moving"]), [str(out / "transform.h5")])
    finally:
        os.chdir(cwd)
    _close(load_image(path)[0], warped, "transform.h5")


def test_command_lines(tmp_path):
    """Options as ``ddmr`` takes them, paths quoted for the shell, threads for MultiProc."""
    for name in ("f 1.nii.gz", "m.nii.gz", "s.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    fixed, moving = str(tmp_path / "f 1.nii.gz"), str(tmp_path / "m.nii.gz")
    register = Register(fixed=fixed, moving=moving, model="none", num_threads=3,
                        engine_spacing=1.5, engine_iterations=[5, 4, 3], update="svf",
                        outputs=["warped", "transform"], no_qc=True,
                        output_dir=str(tmp_path / "out dir"))
    line = register.cmdline
    assert line.split()[1] == "register"
    for part in (f"--fixed '{fixed}'", "--engine-iterations 5,4,3", "--engine-spacing 1.5",
                 "--update svf", "--outputs warped,transform", "--no-qc", "--threads 3",
                 f"-o '{tmp_path / 'out dir'}'"):
        assert part in line, part
    assert Node(register, name="r").n_procs == 3
    assert register._get_environ()["OMP_NUM_THREADS"] == "3"
    assert "--fast" in Register(fixed=fixed, moving=moving, fast=True).cmdline
    labels = Apply(transform=str(tmp_path), moving_labels=str(tmp_path / "s.nii.gz"))
    assert f"--moving-labels {tmp_path / 's.nii.gz'}" in labels.cmdline
    assert labels._list_outputs()["output_file"] == os.path.abspath("s_ddmr.nii.gz")
    inverse = Apply(transform=str(tmp_path), moving=moving, inverse=True)
    assert inverse._list_outputs()["output_file"] == os.path.abspath("m_ddmr_inverse.nii.gz")


def test_apply_hashes_the_registration_its_folder_holds(tmp_path):
    """Nipype hashes a folder by its name: Apply adds its summary.json's contents, so a
    registration run again into the same folder is not taken for the one before."""
    (tmp_path / "m.nii.gz").write_bytes(b"")
    (tmp_path / "summary.json").write_text('{"run": 1}')
    apply = Apply(transform=str(tmp_path), moving=str(tmp_path / "m.nii.gz"))
    before = apply.inputs.get_hashval()[1]
    assert apply.inputs.get_hashval()[1] == before
    (tmp_path / "summary.json").write_text('{"run": 2}')
    assert apply.inputs.get_hashval()[1] != before


def test_importing_ddmr_imports_no_nipype():
    code = ("import sys, ddmr, ddmr.interfaces; import ddmr.registration.pipeline; "
            "assert 'nipype' not in sys.modules, 'nipype imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
