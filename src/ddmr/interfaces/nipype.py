"""Nipype interfaces for ``ddmr register`` and ``ddmr apply`` (``pip install "ddmr[nipype]"``).

``Register`` runs ``ddmr register`` in its own process (so a workflow's memory does not
grow with the number of registrations) and returns every output file, named as ANTs'
Nipype ``Registration`` names its own where they mean the same, so that they plug into
``nipype.interfaces.ants.ApplyTransforms``::

    from nipype import Node, Workflow
    from nipype.interfaces.ants import ApplyTransforms
    from ddmr.interfaces.nipype import Register

    register = Node(Register(fixed="F.nii.gz", moving="M.nii.gz"), name="register")
    labels = Node(ApplyTransforms(input_image="ML.nii.gz", reference_image="F.nii.gz",
                                  interpolation="GenericLabel"), name="labels")
    flow = Workflow(name="flow")
    flow.connect(register, "reverse_forward_transforms", labels, "transforms")

Transform lists, in ANTs' meaning: ``forward_transforms`` is ``[affine.mat,
residual_displacement.nii.gz]`` in natural order (the first applied first);
``reverse_forward_transforms`` the same reversed, which is what ``ApplyTransforms``
takes (``transforms=``) to warp a moving-space image onto the fixed grid;
``reverse_transforms`` (with ``reverse_invert_flags``) warps a fixed-space image onto
the moving grid: ``[inverse_displacement.nii.gz]``, the whole inverse in one field. Where
``outputs`` left those files out, the lists hold ``transform.h5`` /
``inverse_transform.h5`` instead. ``composite_transform`` and
``inverse_composite_transform`` are those two files (one ITK composite each).

``num_threads`` (default 1, as ANTs' interfaces) is what Nipype's MultiProc plugin
reserves for the node (``Node.n_procs``) and what ``ddmr register --threads`` and the
OpenMP/BLAS variables of the process get: one thread setting per task.

A failed QC verdict makes ``ddmr register`` exit with status 3, and so the node fail
(its stderr names the failed checks); ``no_qc=True`` keeps it going, and the output
``qc_passed`` says whether it passed.

``Apply`` takes a registration as Register's ``output_dir`` or as one transform file
(``composite_transform``, ``inverse_composite_transform``; then ``reference`` is needed).
Nipype deletes the files of outputs that no node takes, also inside ``output_dir``,
unless ``output_dir`` itself is taken (as by ``Apply``); and it hashes a folder by its
name, so ``Apply`` adds the contents of the folder's ``summary.json`` to its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from nipype.interfaces.base import (
    CommandLine,
    CommandLineInputSpec,
    Directory,
    File,
    Str,
    TraitedSpec,
    isdefined,
    traits,
)

from ddmr.registration.outputs import OUTPUTS
from ddmr.registration.settings import MODES, SIMILARITY_NAMES
from ddmr.threads import THREAD_VARIABLES

#: Register's file outputs and the files of a ``ddmr register`` output folder.
REGISTER_FILES = {
    "warped_image": "warped.nii.gz",
    "warped_seg": "warped_seg.nii.gz",
    "displacement": "displacement.nii.gz",
    "inverse_displacement": "inverse_displacement.nii.gz",
    "affine": "affine.mat",
    "residual_displacement": "residual_displacement.nii.gz",
    "composite_transform": "transform.h5",
    "inverse_composite_transform": "inverse_transform.h5",
    "jacobian": "jacobian.nii.gz",
    "overlay": "overlay.png",
    "qc_page": "qc.html",
    "summary": "summary.json",
}


def ddmr_command(subcommand: str) -> str:
    """``ddmr SUBCOMMAND``, or ``python -m ddmr SUBCOMMAND`` with this interpreter when
    the ``ddmr`` program is not on ``PATH`` (a virtual environment that is not activated)."""
    if shutil.which("ddmr"):
        return f"ddmr {subcommand}"
    return f"{shlex.quote(sys.executable)} -m ddmr {subcommand}"


class _DDMRCommand(CommandLine):
    """What both interfaces share: paths quoted for the shell, and the thread count in the
    environment of the process (unless ``environ`` sets those variables itself)."""

    #: The ``ddmr`` subcommand.
    _subcommand = ""
    #: Inputs whose value is a path or free text (quoted for the shell).
    _quoted: tuple[str, ...] = ()

    def __init__(self, command: str | None = None, **inputs: Any) -> None:
        super().__init__(command=command or ddmr_command(self._subcommand), **inputs)

    def _format_arg(self, name: str, spec: Any, value: Any) -> str:
        if name in self._quoted:
            return spec.argstr % shlex.quote(str(value))
        return super()._format_arg(name, spec, value)

    def _get_environ(self) -> dict[str, str]:
        environ = dict(super()._get_environ())
        if isdefined(self.inputs.num_threads):
            for variable in THREAD_VARIABLES:
                environ.setdefault(variable, str(self.inputs.num_threads))
        return environ


class RegisterInputSpec(CommandLineInputSpec):
    fixed = File(exists=True, mandatory=True, argstr="--fixed %s",
                 desc="fixed image (NIfTI, NRRD, MHA)")
    moving = File(exists=True, mandatory=True, argstr="--moving %s",
                  desc="moving image (any orientation, spacing and world position)")
    fixed_labels = File(exists=True, argstr="--fixed-labels %s",
                        desc="fixed label map (with moving_labels: DSC, HD95, TRE)")
    moving_labels = File(exists=True, argstr="--moving-labels %s",
                         desc="moving label map, warped to warped_seg")
    model = Str(argstr="--model %s", desc="shipped model name, model file or training run "
                "folder, or 'none' for no network (default: none, the engine from the "
                "affine part)")
    device = traits.Enum("cpu", "cuda", argstr="--device %s", desc="cpu or cuda")
    num_threads = traits.Int(1, usedefault=True, nohash=True, argstr="--threads %d",
                             desc="threads of torch, scipy and BLAS in the process (and "
                             "what MultiProc reserves for the node)")
    affine = traits.Enum("world", "ants", "none", argstr="--affine %s",
                         desc="the affine part: world, ants or none (headers as they are)")
    fast = traits.Bool(argstr="--fast", desc="the network alone, without the engine",
                       xor=["engine_iterations", "engine_spacing", "similarity", "update"])
    engine_iterations = traits.List(traits.Int(), minlen=3, maxlen=3, sep=",",
                                    argstr="--engine-iterations %s",
                                    desc="the most engine steps per level, coarse to fine")
    engine_spacing = traits.Float(argstr="--engine-spacing %g",
                                  desc="the engine's finest voxel size in mm")
    similarity = traits.Enum(*SIMILARITY_NAMES, argstr="--similarity %s",
                             desc="the engine's similarity")
    update = traits.Enum(*MODES, argstr="--update %s", desc="the engine's updates")
    outputs = traits.List(traits.Enum(*OUTPUTS), sep=",", argstr="--outputs %s",
                          desc="the files to write, by name (default: all; summary.json "
                          "always)")
    no_qc = traits.Bool(argstr="--no-qc", desc="a failed QC verdict does not fail the node "
                        "(default: it does, exit status 3)")
    output_dir = Directory("ddmr_register", usedefault=True, argstr="-o %s",
                           desc="output folder (relative: in the node's folder)")
    overwrite = traits.Bool(argstr="--overwrite", desc="replace an existing output_dir")


class RegisterOutputSpec(TraitedSpec):
    output_dir = Directory(exists=True, desc="the output folder (Apply's transform)")
    warped_image = File(exists=True, desc="the moving image on the fixed grid")
    warped_seg = File(exists=True, desc="the moving label map on the fixed grid")
    displacement = File(exists=True, desc="the whole transform, an ITK/ANTs displacement "
                        "field on the fixed grid (LPS mm)")
    inverse_displacement = File(exists=True, desc="the inverse, on the moving grid")
    affine = File(exists=True, desc="the affine part, an ITK transform file")
    residual_displacement = File(exists=True, desc="the non-rigid part, on the fixed grid")
    composite_transform = File(exists=True, desc="transform.h5: the affine part and the "
                               "residual as one ITK composite")
    inverse_composite_transform = File(exists=True, desc="inverse_transform.h5")
    jacobian = File(exists=True, desc="the Jacobian determinant on the fixed grid")
    overlay = File(exists=True, desc="overlay.png")
    qc_page = File(exists=True, desc="qc.html")
    summary = File(exists=True, desc="summary.json: inputs, settings, metrics, QC")
    forward_transforms = traits.List(File(exists=True), desc="[affine, residual]: natural "
                                     "order, the first applied first (as ANTs' Registration)")
    forward_invert_flags = traits.List(traits.Bool())
    reverse_forward_transforms = traits.List(
        File(exists=True), desc="[residual, affine]: ApplyTransforms' transforms to warp a "
        "moving-space image onto the fixed grid")
    reverse_forward_invert_flags = traits.List(traits.Bool())
    reverse_transforms = traits.List(
        File(exists=True), desc="[inverse_displacement]: ApplyTransforms' transforms to warp "
        "a fixed-space image onto the moving grid")
    reverse_invert_flags = traits.List(traits.Bool())
    qc_passed = traits.Bool(desc="whether the QC verdict passed")
    qc_failed = traits.List(Str(), desc="the failed QC checks")


class Register(_DDMRCommand):
    """``ddmr register``: register ``moving`` to ``fixed`` in world space (module
    docstring for the outputs). An output whose file was not written is undefined."""

    input_spec = RegisterInputSpec
    output_spec = RegisterOutputSpec
    _subcommand = "register"
    _quoted = ("fixed", "moving", "fixed_labels", "moving_labels", "model", "output_dir")

    def _list_outputs(self) -> dict[str, Any]:
        outputs = self.output_spec().get()
        folder = Path(os.path.abspath(self.inputs.output_dir))
        outputs["output_dir"] = str(folder)
        found = {name: str(folder / file) for name, file in REGISTER_FILES.items()
                 if (folder / file).is_file()}
        outputs.update(found)
        if "affine" in found and "residual_displacement" in found:
            forward = [found["affine"], found["residual_displacement"]]
        else:
            forward = [found["composite_transform"]] if "composite_transform" in found else []
        if forward:
            outputs["forward_transforms"] = forward
            outputs["reverse_forward_transforms"] = forward[::-1]
            outputs["forward_invert_flags"] = outputs["reverse_forward_invert_flags"] = \
                [False] * len(forward)
        inverse = found.get("inverse_displacement", found.get("inverse_composite_transform"))
        if inverse:
            outputs["reverse_transforms"] = [inverse]
            outputs["reverse_invert_flags"] = [False]
        if "summary" in found:
            qc = json.loads(Path(found["summary"]).read_text()).get("qc", {})
            outputs["qc_passed"] = bool(qc.get("passed"))
            outputs["qc_failed"] = [str(check) for check in qc.get("failed", [])]
        return outputs


#: Apply's inputs of which exactly one is given: what it maps.
_APPLY_SOURCES = ("moving", "moving_labels", "points")


class ApplyInputSpec(CommandLineInputSpec):
    transform = traits.Either(
        Directory(exists=True), File(exists=True), mandatory=True, argstr="--transform %s",
        desc="the output folder of ddmr register (Register's output_dir), or one transform "
        "file (transform.h5, inverse_transform.h5, ANTs' Composite.h5, .mat; needs "
        "reference)")
    moving = File(exists=True, argstr="--moving %s", mandatory=True,
                  xor=[s for s in _APPLY_SOURCES if s != "moving"],
                  desc="image to warp (linear interpolation)")
    moving_labels = File(exists=True, argstr="--moving-labels %s", mandatory=True,
                         xor=[s for s in _APPLY_SOURCES if s != "moving_labels"],
                         desc="label map to warp, label-exactly")
    points = File(exists=True, argstr="--points %s", mandatory=True,
                  xor=[s for s in _APPLY_SOURCES if s != "points"],
                  desc="landmark CSV to map instead of an image")
    points_space = traits.Enum("lps", "ras", argstr="--points-space %s",
                               desc="the convention of the points' x,y,z columns (ANTs: lps)")
    inverse = traits.Bool(argstr="--inverse", desc="the other direction: fixed side onto "
                          "the moving grid, fixed-space points to the moving space")
    reference = File(exists=True, argstr="--reference %s",
                     desc="image whose grid the result is written on")
    num_threads = traits.Int(1, usedefault=True, nohash=True,
                             desc="threads of the process (OpenMP/BLAS variables)")
    output_file = File(argstr="-o %s", genfile=True, hash_files=False,
                       desc="output image or CSV (default: the input's name + _ddmr)")
    overwrite = traits.Bool(argstr="--overwrite", desc="replace an existing output file")

    def get_hashval(self, hash_method: str | None = None) -> tuple[list, str]:
        """Nipype's hash of the inputs, with the contents of the transform folder's
        ``summary.json``: Nipype hashes a folder by its name only, so a registration run
        again into the same folder would otherwise leave a stale result cached."""
        with_hash, value = super().get_hashval(hash_method)
        record = Path(self.transform) / "summary.json" if isdefined(self.transform) else None
        if record is not None and record.is_file():
            digest = hashlib.sha256(record.read_bytes()).hexdigest()
            with_hash.append(("transform_summary", digest))
            value = hashlib.md5(f"{value}{digest}".encode()).hexdigest()
        return with_hash, value


class ApplyOutputSpec(TraitedSpec):
    output_file = File(exists=True, desc="the warped image or label map, or the mapped points")


class Apply(_DDMRCommand):
    """``ddmr apply``: warp an image or label map, or map a landmark CSV, with a saved
    registration."""

    input_spec = ApplyInputSpec
    output_spec = ApplyOutputSpec
    _subcommand = "apply"
    _quoted = ("transform", "moving", "moving_labels", "points", "reference", "output_file")

    def _gen_filename(self, name: str) -> str | None:
        if name != "output_file":
            return None
        if isdefined(self.inputs.output_file):
            return os.path.abspath(self.inputs.output_file)
        source = next(Path(getattr(self.inputs, s)) for s in _APPLY_SOURCES
                      if isdefined(getattr(self.inputs, s)))
        stem = source.name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".csv"):
            if stem.lower().endswith(suffix):
                stem = stem[:-len(suffix)]
                break
        tail = "_ddmr_inverse" if self.inputs.inverse else "_ddmr"
        extension = ".csv" if isdefined(self.inputs.points) else ".nii.gz"
        return os.path.abspath(stem + tail + extension)

    def _list_outputs(self) -> dict[str, Any]:
        outputs = self.output_spec().get()
        outputs["output_file"] = self._gen_filename("output_file")
        return outputs
