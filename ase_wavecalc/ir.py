"""Infrared spectra from the predicted density's dipole: harmonic (ase.vibrations.Infrared) and from MD
(the ``wavecalc ir`` command is ``ir_cli.py``).

| function | returns | unit |
|---|---|---|
| harmonic_ir(atoms, calc) | frequencies (3N-6,), intensities (3N-6,) | cm^-1 (imaginary as negative), km/mol |
| quantum_correction(wavenumber_cm, temperature_K) | the quantum correction factor Q | dimensionless |
| absorption_spectrum(dipoles, timestep_fs, temperature_K) | frequencies (K,), absorption (K,) | cm^-1, km/mol/cm^-1 |
| dipole_spectrum(dipoles, timestep_fs) | frequencies (K,), absorption (K,) | cm^-1, arbitrary (max 1) |
| harmonic_band_spectrum(freqs, km_mol, ...) | harmonic bands with the MD's line shape (K,) | km/mol per cm^-1 |
| band_integrals(freq, absorption, centers_cm) | the spectrum integrated around each band | km/mol |
| thermalized_dipoles(atoms, calc, ...) | dipoles of NVE segments after Langevin equilibration | e*Angstrom |

The dipole a model gives is computed from its density matrix P (nuclei - Tr[P r]), so both spectra are
properties of the predicted wavefunction; an energy-only MLIP has none.

MD spectrum. The classical line shape is the Fourier transform of the dipole autocorrelation,
I_cl(omega) = int dt e^{-i omega t} <dmu(0) . dmu(t)> ((e*Angstrom)^2 fs; dmu = mu - <mu>), estimated by
Wiener-Khinchin from the window-weighted trajectory (Hann by default; periodograms of several segments are
averaged). The quantum line shape is approximated by I_qm = Q(omega) I_cl with the harmonic quantum correction
factor Q = x / (1 - e^{-x}), x = hbar omega / (k_B T) (T: the target temperature), and the absorption is

    sigma(omega) ~ omega (1 - e^{-x}) / hbar * Q(omega) * I_cl(omega) = omega^2 I_cl(omega) / (k_B T),

the usual omega^2-weighted form (the power spectrum of the dipole's time derivative divided by k_B T). It is
scaled to km/mol per cm^-1 so that a harmonic mode holding k_B T (equipartition) integrates to the intensity
``ase.vibrations.Infrared`` gives it, (N_A / 12 eps_0 c^2) |d mu / dQ|^2 (42.255 km/mol per (D/A)^2/amu);
with this correction the integral of a harmonic band does not depend on T, so MD and harmonic intensities
compare directly. ``correction`` chooses another Q: "standard" (2 / (1 + e^{-x})), "schofield" (e^{x/2}), or
"none" (Q = 1: the classical line shape in the quantum absorption, which makes bands at hbar omega >> k_B T
too weak by ~ k_B T / hbar omega: ~6% for a 3700 cm^-1 stretch at 300 K).

A small molecule exchanges energy between its vibrations slowly: an NVE run keeps the energy each mode was
handed (Boltzmann: exponential, mean k_B T), so one run's band intensities scatter by ~100%.
``thermalized_dipoles`` equilibrates with Langevin at T, then runs NVE segments (net momentum and rotation
removed: no rotational envelope; temperatures over 3N - 6 degrees of freedom) re-thermalized by Langevin
between them; their averaged spectrum scatters by ~1/sqrt(segments) per band. Velocity Verlet runs a band
fast by ~(omega dt)^2 / 24 (3700 cm^-1 at 0.5 fs: +20 cm^-1). A Langevin production run keeps rotation and
broadens each band by ~gamma / (2 pi c) (0.001/fs: ~5 cm^-1).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import units

__all__ = ["harmonic_ir", "quantum_correction", "absorption_spectrum", "dipole_spectrum", "harmonic_band_spectrum",
           "band_integrals", "thermalized_dipoles"]

C_CM_PER_FS = 2.99792458e-5                        # speed of light in cm/fs
HBAR_EV_FS = units._hbar / units._e * 1e15          # hbar in eV*fs
KM_MOL_PER_D2_A2_AMU = 42.255                       # ase.vibrations.Infrared.intensity_prefactor("km/mol")
# 2 c * omega g(x) / hbar * I_cl, in (e*A)^2 / (eV fs^2) per cm^-1, -> km/mol per cm^-1:
# (e*A)^2 / (eV fs^2) = (e*A)^2 / (amu A^2) / units.fs^2, and e*A = 1 / units.Debye D
_KM_MOL_SCALE = KM_MOL_PER_D2_A2_AMU / (units.Debye ** 2 * units.fs ** 2)
WINDOWS = ("hann", "hamming", "blackman", "none")


def harmonic_ir(atoms, calc, delta: float = 0.01, nfree: int = 2) -> dict:
    """Harmonic frequencies and IR intensities by ``ase.vibrations.Infrared`` (finite differences of
    forces and dipole, ``delta`` Angstrom) at the given geometry (optimize it first).

    Returns the 3N - 6 (linear: 3N - 5) vibrations: {"frequencies_cm": imaginary ones negative,
    "intensities_km_mol"}; the displacement files go to a temporary directory.
    """
    from ase.vibrations import Infrared

    atoms = atoms.copy()
    atoms.calc = calc
    with tempfile.TemporaryDirectory() as tmp:
        ir = Infrared(atoms, name=str(Path(tmp) / "ir"), delta=delta, nfree=nfree)
        ir.run()
        energies = ir.get_energies()
        prefactor, _ = ir.intensity_prefactor("km/mol")
        intensities = np.asarray(ir.intensities) * prefactor
    s = 0.01 * 1.602176634e-19 / 2.99792458e8 / 6.62607015e-34   # eV -> cm^-1, as ASE's summary
    freqs = np.where(np.abs(energies.imag) > 0, -np.abs(energies.imag), energies.real) * s
    # the 6 (linear: 5) modes of smallest |frequency| are translations and rotations: finite-difference
    # noise gives them small frequencies and, for a polar molecule, large spurious "intensities"
    n_rigid = 5 if _is_linear(atoms) else 6
    keep = np.sort(np.argsort(np.abs(freqs))[n_rigid:])
    return {"frequencies_cm": freqs[keep].astype(float), "intensities_km_mol": intensities[keep].astype(float)}


def _is_linear(atoms, tol: float = 1e-3) -> bool:
    if len(atoms) < 3:
        return True
    pos = atoms.positions - atoms.positions.mean(axis=0)
    return np.linalg.svd(pos, compute_uv=False)[1] < tol


# ----------------------------------------------------------------------------------------------------
# spectra


def _x(wavenumber_cm, temperature_K: float) -> np.ndarray:
    """hbar omega / (k_B T), dimensionless, for wavenumbers in cm^-1 and T in K."""
    if not temperature_K > 0:
        raise ValueError(f"the temperature of the quantum correction must be > 0 K, got {temperature_K}")
    omega = 2 * np.pi * C_CM_PER_FS * np.asarray(wavenumber_cm, dtype=float)       # rad/fs
    return HBAR_EV_FS * omega / (units.kB * temperature_K)


# kind -> (Q(x), (1 - e^{-x}) Q(x) written without cancellation), x = hbar omega / (k_B T)
_CORRECTIONS = {
    "harmonic": (lambda x: np.where(x < 1e-8, 1 + 0.5 * x, x / -np.expm1(-np.where(x < 1e-8, 1, x))), lambda x: x),
    "standard": (lambda x: 2.0 / (1.0 + np.exp(-x)), lambda x: 2.0 * np.tanh(0.5 * x)),
    "schofield": (lambda x: np.exp(0.5 * x), lambda x: 2.0 * np.sinh(0.5 * x)),
    "none": (lambda x: np.ones_like(x), lambda x: -np.expm1(-x)),
}
CORRECTIONS = tuple(_CORRECTIONS)


def _correction(kind: str):
    if kind not in _CORRECTIONS:
        raise ValueError(f"unknown quantum correction {kind!r}: one of {', '.join(CORRECTIONS)}")
    return _CORRECTIONS[kind]


def quantum_correction(wavenumber_cm, temperature_K: float, kind: str = "harmonic") -> np.ndarray:
    """The quantum correction factor Q(omega) (dimensionless) that turns the classical line shape I_cl into
    an approximation of the quantum one, I_qm = Q I_cl, at ``wavenumber_cm`` (cm^-1) and ``temperature_K``.

    With x = hbar omega / (k_B T): "harmonic" x / (1 - e^{-x}) (exact for a harmonic oscillator: -> 1 as
    omega -> 0, -> x at hbar omega >> k_B T), "standard" 2 / (1 + e^{-x}), "schofield" e^{x/2}, "none" 1."""
    return _correction(kind)[0](_x(wavenumber_cm, temperature_K))


def _window(kind: str, n: int) -> np.ndarray:
    funcs = {"hann": np.hanning, "hamming": np.hamming, "blackman": np.blackman, "none": np.ones}
    if kind not in funcs:
        raise ValueError(f"unknown window {kind!r}: one of {', '.join(WINDOWS)}")
    return funcs[kind](n)


def _segments(dipoles) -> list:
    """A (T, 3) trajectory, or a list of them (segments), as a list of float arrays, checked."""
    out = [np.asarray(mu, dtype=float) for mu in (dipoles if isinstance(dipoles, (list, tuple)) else [dipoles])]
    for mu in out:
        if mu.ndim != 2 or mu.shape[1] != 3 or len(mu) < 16:
            raise ValueError(f"dipoles must be (T >= 16, 3) per segment, got {mu.shape}")
        if not np.all(np.isfinite(mu)):
            raise ValueError("the dipole trajectory holds NaN or inf")
    if not out:
        raise ValueError("no dipole trajectory")
    return out


def _nfft(lengths, pad: int) -> int:
    """The FFT length: a power of 2, at least ``pad`` times the longest segment."""
    return 1 << int(np.ceil(np.log2(pad * max(lengths))))


def absorption_spectrum(dipoles, timestep_fs: float, temperature_K: float = 300.0, correction: str = "harmonic",
                        window: str = "hann", max_cm: float | None = 4500.0, pad: int = 4):
    """The IR absorption from dipole trajectories: (frequencies (K,) in cm^-1 up to ``max_cm``, absorption (K,)
    in km/mol per cm^-1).

    ``dipoles``: a (T, 3) trajectory in e*Angstrom, one frame every ``timestep_fs`` fs, or a list of such
    segments (their spectra are averaged, weighted by length). Each segment's mean is removed, it is multiplied
    by the ``window`` and zero-padded to ``pad`` times the longest segment (a finer grid, not a finer
    resolution: with Hann a band is ~1.4 / duration wide, 1 ps: ~50 cm^-1 FWHM). The absorption is
    2c omega (1 - e^{-x}) Q(omega) I_cl(omega) / hbar (module docstring; Q from ``correction`` at
    ``temperature_K``), scaled so that a harmonic mode holding k_B T integrates to its harmonic km/mol."""
    segments = _segments(dipoles)
    nfft = _nfft([len(mu) for mu in segments], pad)
    freq = np.fft.rfftfreq(nfft, d=timestep_fs) / C_CM_PER_FS
    line = np.zeros(len(freq))
    for mu in segments:
        w = _window(window, len(mu))
        spec = np.fft.rfft((mu - mu.mean(axis=0)) * w[:, None], n=nfft, axis=0) * timestep_fs
        # periodogram: I_cl(omega) in (e*A)^2 fs, normalized so that int I_cl d omega / 2 pi = <dmu^2>
        line += len(mu) * (np.abs(spec) ** 2).sum(axis=1) / (timestep_fs * (w ** 2).sum())
    line /= sum(len(mu) for mu in segments)
    omega = 2 * np.pi * C_CM_PER_FS * freq
    factor = omega * _correction(correction)[1](_x(freq, temperature_K)) / HBAR_EV_FS
    absorption = _KM_MOL_SCALE * 2 * C_CM_PER_FS * factor * line
    keep = freq <= (np.inf if max_cm is None else max_cm)
    return freq[keep], absorption[keep]


def dipole_spectrum(dipoles, timestep_fs: float, max_cm: float = 4500.0, **kwargs):
    """:func:`absorption_spectrum` scaled to a maximum of 1: (frequencies (K,) in cm^-1, intensity (K,))."""
    freq, absorption = absorption_spectrum(dipoles, timestep_fs, max_cm=max_cm, **kwargs)
    peak = absorption.max()
    return freq, absorption / peak if peak > 0 else absorption


def harmonic_band_spectrum(frequencies_cm, intensities_km_mol, lengths, timestep_fs: float, window: str = "hann",
                           max_cm: float | None = 4500.0, pad: int = 4) -> np.ndarray:
    """Harmonic bands (frequencies in cm^-1, intensities in km/mol) with the line shape an MD spectrum of
    segments of ``lengths`` frames (``timestep_fs`` apart, ``window``) gives a harmonic oscillator: on the
    frequency grid of :func:`absorption_spectrum` for those segments, in km/mol per cm^-1, each band
    integrating to its intensity (over the full grid; bands at or below 0 cm^-1 are left out). What an MD
    run of a purely harmonic molecule in equipartition would show, band for band."""
    lengths = [int(n) for n in np.atleast_1d(lengths)]
    total = None
    for f, a in zip(np.atleast_1d(frequencies_cm), np.atleast_1d(intensities_km_mol)):
        if not f > 0:
            continue
        omega = 2 * np.pi * C_CM_PER_FS * f
        unit = [np.stack([np.cos(omega * np.arange(n) * timestep_fs), np.sin(omega * np.arange(n) * timestep_fs),
                          np.zeros(n)], axis=1) for n in lengths]
        freq, shape = absorption_spectrum(unit, timestep_fs, window=window, max_cm=None, pad=pad)
        df = freq[1] - freq[0]
        band = a * shape / (shape.sum() * df)
        total = band if total is None else total + band
    freq = np.fft.rfftfreq(_nfft(lengths, pad), d=timestep_fs) / C_CM_PER_FS
    total = np.zeros(len(freq)) if total is None else total
    return total[freq <= (np.inf if max_cm is None else max_cm)]


def band_integrals(freq, absorption, centers_cm) -> np.ndarray:
    """The integral (km/mol, for absorption in km/mol per cm^-1 on the uniform grid ``freq``) over the region
    of each band: the frequencies nearer to its center (cm^-1) than to any other, from half the lowest center
    up to the end of the grid. In the order of ``centers_cm``."""
    centers = np.asarray(centers_cm, dtype=float)
    order = np.argsort(centers)
    c = centers[order]
    region = np.searchsorted(np.concatenate([[0.5 * c[0]], 0.5 * (c[1:] + c[:-1])]), freq, side="right") - 1
    out = np.empty(len(c))
    out[order] = [absorption[region == k].sum() * (freq[1] - freq[0]) for k in range(len(c))]
    return out


# ----------------------------------------------------------------------------------------------------
# MD: Langevin equilibration, then NVE production segments


def _check_md(ensemble, temperature, steps, segments, equilibration_steps, decorrelation_steps, friction):
    if ensemble not in ("nve", "langevin"):
        raise ValueError(f"unknown ensemble {ensemble!r}: use 'nve' or 'langevin'")
    if not temperature > 0:
        raise ValueError(f"the temperature must be > 0 K, got {temperature}")
    if segments < 1 or steps < 16 * segments:
        raise ValueError(f"{steps} production steps in {segments} segments: at least 16 steps per segment")
    if min(equilibration_steps, decorrelation_steps) < 0 or not friction > 0:
        raise ValueError("equilibration and decorrelation steps must be >= 0 and the equilibration friction > 0")


def thermalized_dipoles(atoms, calc, temperature: float = 300.0, timestep: float = 0.5, steps: int = 8000,
                        equilibration_steps: int = 4000, segments: int = 4, decorrelation_steps: int = 600,
                        equilibration_friction: float = 0.01, ensemble: str = "nve", friction: float = 0.001,
                        seed: int = 0, trajectory=None, log="stdout", progress: bool = True) -> dict:
    """Dipoles for an IR spectrum at ``temperature`` (K): Maxwell-Boltzmann velocities, ``equilibration_steps``
    of Langevin (``sampling.langevin``: centre of mass fixed; ``equilibration_friction`` 1/fs), then ``steps``
    production steps of ``timestep`` fs in ``segments`` equal parts, each part after the first preceded by
    ``decorrelation_steps`` more of that Langevin. NVE parts (velocity Verlet) start from the thermalized state
    without net momentum and rotation (unless the atoms carry constraints): their kinetic temperature, over
    3N - 6 (linear 3N - 5) degrees of freedom, averages ~``temperature``. ``ensemble="langevin"``: parts of
    Langevin with ``friction`` 1/fs (3N - 3 degrees of freedom).

    Returns {"dipoles": [(n + 1, 3) e*Angstrom per part], "temperature_K": [(n + 1,) K per part],
    "mean_temperature_K", "segment_temperature_K" (means), "equilibration_temperature_K" (the first Langevin's
    mean, 3N - 3), "degrees_of_freedom", "max_deviation_meV_per_atom" (NVE: max |E_tot - E_tot(start)| of a part),
    "timestep_fs", "wall_s" (s)}. ``trajectory``: the production frames, ``atoms.info`` holding "segment",
    "timestep_fs", "temperature_K" (the target) and "ensemble"."""
    from ase.io import Trajectory
    from ase.md import velocitydistribution as vd
    from ase.md.verlet import VelocityVerlet

    from .md import degrees_of_freedom, start_md_velocities
    from .sampling import langevin

    _check_md(ensemble, temperature, steps, segments, equilibration_steps, decorrelation_steps, equilibration_friction)
    if log == "stdout":
        log = sys.stdout
    work = atoms.copy()
    work.calc = calc
    own = list(work.constraints)                  # the user's; Langevin adds FixCom to atoms without
    rng = np.random.default_rng(seed)
    start_md_velocities(work, temperature, rng, "langevin")
    lengths = [len(part) for part in np.array_split(np.arange(steps), segments)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=equilibration_steps + (segments - 1) * decorrelation_steps + steps,
                   desc=f"MD (Langevin, then {ensemble.upper()})", unit="step", file=sys.stderr)
    traj = Trajectory(trajectory, "w") if trajectory else None
    mus, temps, etots, eq_temps, eq_dof = [], [], [], [], 0
    start = time.perf_counter()

    def run(dyn, n, observe):
        dyn.attach(observe, interval=1)
        if bar is not None:
            dyn.attach(lambda: bar.update(1) if dyn.nsteps > 0 else None, interval=1)
        dyn.run(n)

    try:
        for s, n in enumerate(lengths):
            n_eq = equilibration_steps if s == 0 else decorrelation_steps
            if n_eq > 0:
                work.set_constraint(own)
                dyn = langevin(work, timestep, temperature, equilibration_friction, rng)
                eq_dof = degrees_of_freedom(work, "langevin")
                record = eq_temps if s == 0 else []
                run(dyn, n_eq, lambda: record.append(2 * work.get_kinetic_energy() / (max(eq_dof, 1) * units.kB)))
            work.set_constraint(own)
            if ensemble == "nve":
                if not own:
                    vd.Stationary(work, preserve_temperature=False)
                    vd.ZeroRotation(work, preserve_temperature=False)
                dyn = VelocityVerlet(work, timestep * units.fs)
            else:
                dyn = langevin(work, timestep, temperature, friction, rng)
            dof = degrees_of_freedom(work, ensemble)
            for series in (mus, temps, etots):
                series.append([])

            def observe():
                ekin = work.get_kinetic_energy()
                mus[-1].append(work.get_dipole_moment())
                temps[-1].append(2 * ekin / (dof * units.kB) if dof else 0.0)
                etots[-1].append(work.get_potential_energy() + ekin)
                if traj is not None:
                    work.info.update(segment=s, timestep_fs=timestep, temperature_K=temperature, ensemble=ensemble)
                    traj.write(work)

            run(dyn, n, observe)
    finally:
        for closing in (traj, bar):
            if closing is not None:
                closing.close()
    seg_t = [float(np.mean(t)) for t in temps]
    out = {"dipoles": [np.asarray(m) for m in mus], "temperature_K": [np.asarray(t) for t in temps],
           "mean_temperature_K": float(np.mean(np.concatenate(temps))), "segment_temperature_K": seg_t,
           "equilibration_temperature_K": float(np.mean(eq_temps)) if eq_temps else float("nan"),
           "degrees_of_freedom": dof, "timestep_fs": float(timestep), "wall_s": time.perf_counter() - start}
    if ensemble == "nve":
        out["max_deviation_meV_per_atom"] = max(1e3 * np.abs(np.asarray(e) - e[0]).max() for e in etots) / len(work)
    if log is not None:
        ps = timestep / 1000
        if equilibration_steps:
            print(f"equilibration: Langevin {equilibration_steps} steps ({equilibration_steps * ps:.2f} ps, friction "
                  f"{equilibration_friction:g}/fs) at {temperature:g} K: mean {out['equilibration_temperature_K']:.1f}"
                  f" K over {eq_dof} degrees of freedom", file=log)
        print(f"production: {segments} {ensemble.upper()} segment(s) of {lengths[0]} steps ({lengths[0] * ps:.2f} ps"
              + (f", {decorrelation_steps} Langevin steps between" if segments > 1 else "")
              + f"): mean temperature {out['mean_temperature_K']:.1f} K over {dof} degrees of freedom"
              + (f" (segments {min(seg_t):.0f} to {max(seg_t):.0f} K)" if segments > 1 else "")
              + (f"; max |E - E(start)| {out['max_deviation_meV_per_atom']:.3f} meV/atom" if ensemble == "nve" else "")
              + f"; {out['wall_s']:.0f} s", file=log)
    return out
