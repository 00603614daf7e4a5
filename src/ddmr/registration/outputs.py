"""The files a registration may write (``ddmr register --outputs``), by name; light, so
that the command line can list them without loading numpy."""

from __future__ import annotations

from collections.abc import Iterable

#: The outputs a user may choose (``--outputs``, ``save(outputs=...)``) and their files;
#: ``summary.json`` is always written, last.
OUTPUTS = {"warped": "warped.nii.gz", "warped_seg": "warped_seg.nii.gz",
           "displacement": "displacement.nii.gz", "affine": "affine.mat",
           "residual_displacement": "residual_displacement.nii.gz",
           "inverse_displacement": "inverse_displacement.nii.gz",
           "transform": "transform.h5", "inverse_transform": "inverse_transform.h5",
           "jacobian": "jacobian.nii.gz", "overlay": "overlay.png", "qc_page": "qc.html"}

OUTPUT_FILES = (*OUTPUTS.values(), "summary.json")


def check_outputs(outputs: Iterable[str] | str | None) -> tuple[str, ...]:
    """The names of :data:`OUTPUTS` that ``outputs`` chooses: None or ``all`` for every
    one; names as in :data:`OUTPUTS` or their file names, in a sequence or one
    comma-separated string. An unknown name is a :class:`ConfigError` naming the
    known ones."""
    from ddmr.errors import ConfigError

    if outputs is None:
        return tuple(OUTPUTS)
    if isinstance(outputs, str):
        outputs = [part for part in outputs.split(",") if part.strip()]
    by_file = {file: name for name, file in OUTPUTS.items()}
    chosen = []
    for given in outputs:
        name = by_file.get(given.strip(), given.strip())
        if name == "all":
            return tuple(OUTPUTS)
        if name not in OUTPUTS:
            raise ConfigError(f"--outputs: unknown output {given.strip()!r}; choose from all, "
                              f"{', '.join(OUTPUTS)} (summary.json is always written)")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ConfigError("--outputs: name at least one output (or all)")
    return tuple(chosen)
