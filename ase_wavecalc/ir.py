"""Infrared spectra from the predicted density's dipole: harmonic (ase.vibrations.Infrared) and from MD
(``wavecalc ir``).

| function | returns | unit |
|---|---|---|
| harmonic_ir(atoms, calc) | frequencies (3N-6,), intensities (3N-6,) | cm^-1 (imaginary as negative), km/mol |
| dipole_spectrum(dipoles, timestep_fs) | frequencies (K,), intensity (K,) | cm^-1, arbitrary (max 1) |

The dipole a model gives is computed from its density matrix P (nuclei - Tr[P r]), so both spectra are
properties of the predicted wavefunction; an energy-only MLIP has none.

The MD spectrum is the power spectrum of the dipole's time derivative (Wiener-Khinchin: the Fourier
transform of <mu'(0) . mu'(t)>), from a Hann-windowed trajectory: classical line shapes, no quantum
correction factor, anharmonic band positions. It needs an NVE or weakly thermostatted run: a Langevin
friction of gamma broadens each band by ~gamma / (2 pi c) (0.001/fs: ~5 cm^-1).
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["harmonic_ir", "dipole_spectrum", "add_cli_arguments", "cli_main"]

C_CM_PER_FS = 2.99792458e-5          # speed of light in cm/fs


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


def dipole_spectrum(dipoles, timestep_fs: float, max_cm: float = 4500.0) -> tuple[np.ndarray, np.ndarray]:
    """IR line shape from a dipole trajectory ``dipoles`` (T, 3), any unit, one frame every ``timestep_fs``:
    (frequencies (K,) in cm^-1 up to ``max_cm``, intensity (K,) scaled to a maximum of 1)."""
    mu = np.asarray(dipoles, dtype=float)
    if mu.ndim != 2 or mu.shape[1] != 3 or len(mu) < 16:
        raise ValueError(f"dipoles must be (T >= 16, 3), got {mu.shape}")
    if not np.all(np.isfinite(mu)):
        raise ValueError("the dipole trajectory holds NaN or inf")
    rate = np.gradient(mu, timestep_fs, axis=0)
    rate = rate - rate.mean(axis=0)
    rate = rate * np.hanning(len(rate))[:, None]
    power = (np.abs(np.fft.rfft(rate, axis=0)) ** 2).sum(axis=1)
    power[0] = 0.0                                   # a steady drift of the dipole is no vibration
    freq = np.fft.rfftfreq(len(rate), d=timestep_fs) / C_CM_PER_FS
    keep = freq <= max_cm
    freq, power = freq[keep], power[keep]
    return freq, power / power.max() if power.max() > 0 else power


# ----------------------------------------------------------------------------------------------------
# `wavecalc ir MOLECULE`: optimize, harmonic IR, MD with dipoles, spectrum CSV + PNG


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("structure", help="molecule name (ase.build.molecule) or structure file")
    parser.add_argument("--model", default=None, help="model name or directory (default: the shipped PBE model)")
    parser.add_argument("--trajectory", default=None,
                        help="read this ASE trajectory (frames with dipoles, e.g. from an earlier run) instead "
                             "of running MD")
    parser.add_argument("--steps", type=int, default=8000, help="MD steps (default 8000: 4 ps at 0.5 fs)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--ensemble", choices=["nve", "langevin"], default="nve")
    parser.add_argument("--friction", type=float, default=0.001, help="Langevin friction, 1/fs (weak)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ir", help="output prefix: OUT.csv, OUT.png, OUT.traj, OUT_harmonic.csv")
    parser.add_argument("--max-cm", type=float, default=4500.0)


def _read_dipoles(path):
    from ase.io import read

    frames = read(path, ":")
    dipoles = []
    for k, atoms in enumerate(frames):
        d = atoms.calc.results.get("dipole") if atoms.calc is not None else None
        if d is None:
            raise ValueError(f"{path}: frame {k} has no dipole (run `wavecalc ir` to make a trajectory with them)")
        dipoles.append(d)
    return frames[0], np.asarray(dipoles)


def cli_main(args) -> int:
    from ase.calculators.calculator import CalculationFailed, InputError
    from ase.optimize import BFGS

    from .calculator import WaveCalculator
    from .md import _default_model, load_structure, run_md

    out = Path(args.out)
    try:
        if args.trajectory:
            first, dipoles = _read_dipoles(args.trajectory)
            atoms, timestep = first, args.timestep
        else:
            atoms = load_structure(args.structure)
        model = args.model or _default_model(atoms)
        if not model:
            print("wavecalc ir: no shipped model for this molecule; pass --model", file=sys.stderr)
            return 2
        calc = WaveCalculator(model=model)
        opt_atoms = atoms.copy()
        opt_atoms.calc = calc
        BFGS(opt_atoms, logfile=None).run(fmax=1e-3, steps=500)
        harmonic = harmonic_ir(opt_atoms, calc)
        if not args.trajectory:
            out.parent.mkdir(parents=True, exist_ok=True)
            rec = run_md(opt_atoms, calc, ensemble=args.ensemble, temperature=args.temperature,
                         timestep=args.timestep, steps=args.steps, friction=args.friction, seed=args.seed,
                         trajectory=str(out.with_suffix(".traj")), properties=("dipole",))
            dipoles, timestep = rec["dipole"], args.timestep
    except (InputError, CalculationFailed, ValueError, FileNotFoundError) as exc:
        print(f"wavecalc ir: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, CalculationFailed) else 2   # 1: the run failed, 2: the input is wrong
    freq, intensity = dipole_spectrum(dipoles, timestep, args.max_cm)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frequency_cm-1", "intensity_normalized"])
        w.writerows(zip(np.round(freq, 3), np.round(intensity, 6)))
    hpath = out.parent / f"{out.name}_harmonic.csv"
    with open(hpath, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frequency_cm-1", "intensity_km_mol"])
        w.writerows(zip(np.round(harmonic["frequencies_cm"], 2), np.round(harmonic["intensities_km_mol"], 3)))
    plotted = _plot(freq, intensity, harmonic, out.with_suffix(".png"), model, len(dipoles) * timestep / 1000)
    print(f"wavecalc ir: {len(dipoles)} dipoles ({len(dipoles) * timestep / 1000:.2f} ps); wrote "
          f"{out.with_suffix('.csv')}, {hpath}" + (f", {out.with_suffix('.png')}" if plotted else " (no matplotlib: no PNG)"))
    strongest = np.argsort(harmonic["intensities_km_mol"])[::-1][:5]
    print("  strongest harmonic bands: " + ", ".join(
        f"{harmonic['frequencies_cm'][i]:.0f} cm-1 ({harmonic['intensities_km_mol'][i]:.1f} km/mol)" for i in strongest))
    return 0


def _plot(freq, intensity, harmonic, path, model, ps) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(freq, intensity, lw=1, label=f"MD dipole autocorrelation ({ps:.1f} ps)")
    f, i = harmonic["frequencies_cm"], harmonic["intensities_km_mol"]
    real = f > 50
    if real.any() and i[real].max() > 0:
        ax.vlines(f[real], 0, i[real] / i[real].max(), colors="C3", lw=2, label="harmonic (scaled to max 1)")
    ax.set_xlabel("wavenumber (cm$^{-1}$)")
    ax.set_ylabel("intensity (normalized)")
    ax.set_title(f"IR spectrum, {model}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
