"""`wavecalc ir MOLECULE`: optimize, harmonic IR, MD with dipoles, spectrum CSV + PNG (the numerics are in
``ir.py``; this module is the command line around them).

The calculator is ``WaveCalculator(model=..., compile="auto")``: a readout model's energy and forces are
torch.compiled in a background thread after 200 calls of the molecule, and used once they have reproduced the
uncompiled ones (``model/compiled.py``; the library default is ``compile=False``)."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from .ir import (CORRECTIONS, WINDOWS, _check_md, absorption_spectrum, band_integrals, harmonic_band_spectrum,
                 harmonic_ir, thermalized_dipoles)

__all__ = ["add_cli_arguments", "cli_main"]




def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("structure", help="molecule name (ase.build.molecule) or structure file")
    parser.add_argument("--model", default=None,
                        help="model name or directory (default: the shipped PBE model); its energy and forces are "
                             "torch.compiled in the background after 200 calls and used once checked against the "
                             "uncompiled ones")
    parser.add_argument("--trajectory", default=None,
                        help="read this ASE trajectory (frames with dipoles, e.g. OUT.traj of an earlier run) "
                             "instead of running MD; its segments, time step and temperature come from the frames "
                             "where they are recorded")
    parser.add_argument("--steps", type=int, default=8000,
                        help="production MD steps, all segments together (default 8000: 4 ps at 0.5 fs)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K: the Langevin equilibration's, and the quantum correction's")
    parser.add_argument("--equilibration-steps", type=int, default=4000,
                        help="Langevin steps at --temperature before the production (default 4000: 2 ps at 0.5 fs)")
    parser.add_argument("--equilibration-friction", type=float, default=0.01,
                        help="friction of the equilibration and decorrelation Langevin, 1/fs")
    parser.add_argument("--segments", type=int, default=4,
                        help="production segments, each re-thermalized by Langevin before it; their spectra are "
                             "averaged (a band's intensity scatters ~1/sqrt(segments): a small molecule keeps in "
                             "each vibration the energy a segment starts with)")
    parser.add_argument("--decorrelation-steps", type=int, default=600,
                        help="Langevin steps before each segment after the first (default 600: 0.3 ps, 3 / friction)")
    parser.add_argument("--ensemble", choices=["nve", "langevin"], default="nve",
                        help="production: nve (rotation removed, bands without rotational envelope) or weak langevin")
    parser.add_argument("--friction", type=float, default=0.001,
                        help="friction of a langevin production, 1/fs (weak: it broadens bands by ~5 cm-1)")
    parser.add_argument("--correction", choices=list(CORRECTIONS), default="harmonic",
                        help="quantum correction factor of the classical line shape (harmonic: x / (1 - exp(-x)), "
                             "x = hbar omega / kT)")
    parser.add_argument("--window", choices=list(WINDOWS), default="hann", help="window of each segment")
    parser.add_argument("--seed", type=int, default=0, help="of the velocities and the Langevin noise")
    parser.add_argument("--out", default="ir", help="output prefix: OUT.csv, OUT.png, OUT.traj, OUT_harmonic.csv")
    parser.add_argument("--max-cm", type=float, default=4500.0, help="cm^-1")


def _read_dipoles(path, timestep, temperature):
    """Segments of dipoles (e*Angstrom), the time step (fs) and the temperature (K) of a trajectory: from its
    frames' info where recorded (``thermalized_dipoles``), else one segment at the given ones."""
    from ase.io import read

    frames = read(path, ":")
    segments, label = [], None
    for k, atoms in enumerate(frames):
        d = atoms.calc.results.get("dipole") if atoms.calc is not None else None
        if d is None:
            raise ValueError(f"{path}: frame {k} has no dipole (run `wavecalc ir` to make a trajectory with them)")
        if not segments or atoms.info.get("segment", 0) != label:
            segments.append([])
        label = atoms.info.get("segment", 0)
        segments[-1].append(d)
    info = frames[0].info
    return (frames[0], [np.asarray(s) for s in segments], float(info.get("timestep_fs", timestep)),
            float(info.get("temperature_K", temperature)))


def cli_main(args) -> int:
    from ase.calculators.calculator import CalculationFailed, InputError
    from ase.optimize import BFGS

    from .calculator import WaveCalculator
    from .md import _default_model, load_structure

    out = Path(args.out)
    temperature = args.temperature
    md = None
    try:
        if args.trajectory:
            first, dipoles, timestep, temperature = _read_dipoles(args.trajectory, args.timestep, args.temperature)
            atoms = first
        else:
            _check_md(args.ensemble, args.temperature, args.steps, args.segments, args.equilibration_steps,
                      args.decorrelation_steps, args.equilibration_friction)
            atoms = load_structure(args.structure)
        model = args.model or _default_model(atoms)
        if not model:
            print("wavecalc ir: no shipped model for this molecule; pass --model", file=sys.stderr)
            return 2
        calc = WaveCalculator(model=model, compile="auto")   # module docstring
        opt_atoms = atoms.copy()
        opt_atoms.calc = calc
        BFGS(opt_atoms, logfile=None).run(fmax=1e-3, steps=500)
        harmonic = harmonic_ir(opt_atoms, calc)
        if not args.trajectory:
            out.parent.mkdir(parents=True, exist_ok=True)
            md = thermalized_dipoles(opt_atoms, calc, temperature=temperature, timestep=args.timestep,
                                     steps=args.steps, equilibration_steps=args.equilibration_steps,
                                     segments=args.segments, decorrelation_steps=args.decorrelation_steps,
                                     equilibration_friction=args.equilibration_friction, ensemble=args.ensemble,
                                     friction=args.friction, seed=args.seed, trajectory=str(out.with_suffix(".traj")))
            dipoles, timestep = md["dipoles"], args.timestep
    except (InputError, CalculationFailed, ValueError, FileNotFoundError) as exc:
        print(f"wavecalc ir: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, CalculationFailed) else 2   # 1: the run failed, 2: the input is wrong
    kw = dict(window=args.window, max_cm=args.max_cm)
    freq, absorption = absorption_spectrum(dipoles, timestep, temperature, correction=args.correction, **kw)
    hf, hi = harmonic["frequencies_cm"], harmonic["intensities_km_mol"]
    lengths = [len(mu) for mu in dipoles]
    band = harmonic_band_spectrum(hf, hi, lengths, timestep, **kw)
    md_band = np.full(len(hf), np.nan)                 # the MD spectrum integrated over each band's region
    if (hf > 0).any():
        md_band[hf > 0] = band_integrals(freq, absorption, hf[hf > 0])
    hpath = out.parent / f"{out.name}_harmonic.csv"
    _write_csv(out.with_suffix(".csv"), ["frequency_cm-1", "intensity_normalized", "md_km_mol_per_cm-1",
                                         "harmonic_normalized", "harmonic_km_mol_per_cm-1"],
               [np.round(freq, 3), np.round(_normalized(absorption), 6), np.round(absorption, 6),
                np.round(_normalized(band), 6), np.round(band, 6)])
    _write_csv(hpath, ["frequency_cm-1", "intensity_km_mol", "md_band_km_mol"],
               [np.round(hf, 2), np.round(hi, 3), np.round(md_band, 3)])
    title = (f"IR, {model}, {temperature:g} K ({args.correction} QCF), {len(lengths)} x "
             f"{lengths[0] * timestep / 1000:.2f} ps" + (f", mean {md['mean_temperature_K']:.0f} K" if md else ""))
    plotted = _plot(freq, absorption, band, harmonic, out.with_suffix(".png"), title)
    print(f"wavecalc ir: {sum(lengths)} dipoles in {len(lengths)} segment(s) ({sum(lengths) * timestep / 1000:.2f} "
          f"ps) at {temperature:g} K, {args.correction} quantum correction; wrote {out.with_suffix('.csv')}, {hpath}"
          + (f", {out.with_suffix('.png')}" if plotted else " (no matplotlib: no PNG)"))
    print("  strongest harmonic bands, and the MD spectrum integrated over each band's region: " + ", ".join(
        f"{hf[i]:.0f} cm-1 {hi[i]:.1f} km/mol (MD {md_band[i]:.1f})" for i in np.argsort(hi)[::-1][:5]))
    return 0


def _write_csv(path, header, columns):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *zip(*columns)])


def _normalized(y):
    peak = np.max(y) if len(y) else 0.0
    return y / peak if peak > 0 else y


def _plot(freq, absorption, band, harmonic, path, title) -> bool:
    """MD absorption and the harmonic bands with the MD's line shape, each scaled to its strongest band, and
    the harmonic sticks (height: km/mol over the strongest's)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(freq, _normalized(absorption), lw=1.2, color="C0", label="MD, dipole autocorrelation")
    ax.plot(freq, _normalized(band), lw=1, ls="--", color="C3", label="harmonic, MD line shape")
    f, i = harmonic["frequencies_cm"], harmonic["intensities_km_mol"]
    real = f > 50
    if real.any() and i[real].max() > 0:
        ax.vlines(f[real], 0, i[real] / i[real].max(), colors="C3", lw=1.5, alpha=0.6,
                  label="harmonic (ase Infrared), km/mol")
    ax.set_xlabel("wavenumber (cm$^{-1}$)")
    ax.set_ylabel("absorption (each scaled to its strongest band)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, freq[-1])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
