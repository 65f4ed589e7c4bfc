"""Phase "sample" of a fit: candidate geometries for labelling, and the held-out test geometries.

1. The start: the input structure relaxed with the sampling driver (GFN2-xTB when tblite is installed).
2. Training candidates: Langevin MD at each recipe temperature (own seeds), plus random displacements
   along the driver's normal modes with Boltzmann amplitudes at those temperatures (the stretched and bent
   tails that MD visits rarely), redrawn when they break or stretch a bond of the minimum (``keeps_bonds``).
   They are put in farthest-point order of a descriptor of the geometry (inverse interatomic distances)
   within each source, the sources interleaved in proportion to their size (``interleaved_order``), so that
   whatever number the budget labels is spread over each source and holds each its share.
   Each MD run also keeps, at every step, where the bond pattern left the start's and came back within 50 fs
   (``TransientPatterns``: a proton in flight between two equivalent sites, an overstretched bond that
   recovers): source "transient", labelled first. Frames taken every ``interval`` steps rarely catch them, and
   a model whose training frames lack a pattern refuses it (``domain``), which stops MD through, e.g.,
   malondialdehyde's proton transfer.
3. Test geometries: MD trajectories of their own (other seeds) at the test temperatures; never trained on.

Positions are stored in Angstrom in ``candidates.npz`` (arrays ``numbers``, ``train``, ``test``,
``train_source``); the datasets of the labelling phase take them from there.
"""
from __future__ import annotations

import numpy as np

__all__ = ["relax", "normal_mode_samples", "keeps_bonds", "TransientPatterns", "farthest_point_order",
           "interleaved_order", "make_candidates"]

KB_EV = 8.617333262e-5   # eV/K
MAX_STRETCH = 1.25       # normal-mode samples: no bond of the minimum longer than this x its length there
MAX_DRAWS = 30           # normal-mode samples: draws before the last one is kept whatever its bonds


def relax(atoms, driver: str = "auto", charge: int = 0, fmax: float = 0.01, steps: int = 500):
    """The structure relaxed with the sampling driver (BFGS; eV/A); returns (atoms, driver name)."""
    from ase.optimize import BFGS

    from ..sampling import make_driver

    atoms = atoms.copy()
    name, calc = make_driver(driver, charge=charge)
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    atoms.calc = None
    return atoms, name


def normal_mode_samples(atoms, n: int, temperatures, rng, driver: str = "auto", charge: int = 0):
    """(n, N, 3) Angstrom: the minimum displaced along all normal modes at once, each mode's amplitude
    Gaussian with the classical variance kT / (m omega^2) at a temperature drawn from ``temperatures``."""
    from ..sampling import make_driver

    if n <= 0:
        return np.zeros((0, len(atoms), 3))
    a = atoms.copy()
    _, a.calc = make_driver(driver, charge=charge)
    # finite-difference Hessian (eV/A^2), central differences
    x0, h = a.positions.copy(), 0.005
    n3 = 3 * len(a)
    hess = np.zeros((n3, n3))
    for k in range(n3):
        for sign in (1, -1):
            p = x0.copy().reshape(-1)
            p[k] += sign * h
            a.positions = p.reshape(-1, 3)
            hess[k] -= sign * a.get_forces().reshape(-1) / (2 * h)
    a.positions = x0
    hess = 0.5 * (hess + hess.T)
    masses = np.repeat(a.get_masses(), 3)
    mw = hess / np.sqrt(np.outer(masses, masses))
    w2, modes = np.linalg.eigh(mw)
    keep = w2 > 1e-3 * w2.max()                     # drop the 6 (5) translations and rotations
    w2, modes = w2[keep], modes[:, keep]
    out = np.empty((n, len(a), 3))
    temps = np.asarray(list(temperatures), dtype=float)
    for i in range(n):
        t = temps[i % len(temps)]
        for attempt in range(MAX_DRAWS):
            # mass-weighted amplitudes (eV/A^2/amu units); after 10 rejected draws, smaller ones
            scale = 0.8 ** max(0, attempt - 9)
            q = rng.normal(size=len(w2)) * np.sqrt(KB_EV * t / w2) * scale
            out[i] = x0 + (modes @ q / np.sqrt(masses)).reshape(-1, 3)
            if keeps_bonds(a.numbers, x0, out[i]):
                break
    return out


def keeps_bonds(numbers, start, positions, stretch: float = MAX_STRETCH) -> bool:
    """True when ``positions`` (N, 3; Angstrom) has the bonds of ``start`` (``domain.bond_signature``) and
    none of them is longer than ``stretch`` x its length there. A displacement along normal modes is a straight
    line in a curved landscape: along a soft mode it pulls hydrogens off their atoms (malondialdehyde's fit
    labelled 22 frames with a C-H bond at up to 1.56 A), frames that no 300-500 K trajectory reaches and that
    widen the model's training domain."""
    from ..domain import bond_signature, bonded_pairs

    if bond_signature(numbers, positions) != bond_signature(numbers, start):
        return False
    pairs = bonded_pairs(numbers, start)
    if not len(pairs):
        return True
    d0 = np.linalg.norm(start[pairs[:, 0]] - start[pairs[:, 1]], axis=1)
    d = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    return bool(np.all(d <= stretch * d0))


class TransientPatterns:
    """An ``on_step`` observer of an MD run (``sampling.sample_geometries``) that keeps the middle frame of each
    excursion of the bond pattern away from the start's that returns to it within ``hold`` steps, at most
    ``max_keep`` frames (``frames``: a list of (N, 3) arrays, Angstrom). An excursion that lasts longer (a bond
    broken for good, another isomer) is not kept, and ends the collection. The pattern is
    ``domain.bond_signature`` by the bond cutoff alone (a hydrogen bonded to two atoms or none is an excursion):
    these frames stretch bonds furthest, which sets how far the model's domain reaches."""

    def __init__(self, numbers, start_positions, hold: int = 100, max_keep: int = 4):
        from ..domain import bond_signature, bonded_pairs

        self._signature, self._pairs_of = bond_signature, bonded_pairs
        self.numbers = np.asarray(numbers, dtype=int)
        self.reference = bond_signature(self.numbers, start_positions, hydrogens_on_nearest=False)
        self.pairs = self._pair_set(start_positions)     # the pairs of the last frame with the start's pattern
        self.hold, self.max_keep = int(hold), int(max_keep)
        self.excursion: list = []
        self.frames: list = []
        self.done = False

    def _pair_set(self, positions) -> frozenset:
        return frozenset(map(tuple, self._pairs_of(self.numbers, positions).tolist()))

    def __call__(self, atoms) -> None:
        if self.done:
            return
        pos = atoms.positions
        pairs = self._pair_set(pos)
        if not self.excursion and pairs == self.pairs:       # the usual step: no bond changed
            return
        if self._signature(self.numbers, pos, hydrogens_on_nearest=False) == self.reference:
            self.pairs = pairs                                # back (perhaps with like atoms exchanged)
            if self.excursion:
                self.frames.append(self.excursion[len(self.excursion) // 2])
                self.excursion = []
                self.done = len(self.frames) >= self.max_keep
            return
        self.excursion.append(pos.copy())
        if len(self.excursion) > self.hold:                   # a lasting change: not a transient
            self.excursion, self.done = [], True


def _descriptor(positions):
    """(F, N(N-1)/2): inverse interatomic distances (1/A) of each frame."""
    positions = np.asarray(positions)
    i, j = np.triu_indices(positions.shape[1], k=1)
    d = np.linalg.norm(positions[:, i] - positions[:, j], axis=-1)
    return 1.0 / d


def farthest_point_order(positions, start: int = 0) -> np.ndarray:
    """Indices of the frames in farthest-point order of the inverse-distance descriptor: each next frame is
    the one farthest from all frames before it."""
    x = _descriptor(positions)
    n = len(x)
    order = np.empty(n, dtype=np.int64)
    dist = np.full(n, np.inf)
    cur = int(start)
    for k in range(n):
        order[k] = cur
        dist = np.minimum(dist, np.linalg.norm(x - x[cur], axis=1))
        dist[order[:k + 1]] = -1.0
        cur = int(np.argmax(dist))
    return order


def interleaved_order(positions, sources, shares: dict | None = None) -> np.ndarray:
    """Indices of the frames: farthest-point order within each source ("md300", "md500", "md700",
    "normal_modes", ...), the sources taken in turn in proportion to their number of frames, so that every first
    k frames hold each source's share (to one frame), each spread over its source.

    Why not one farthest-point order over all frames: its first frames are the outliers. Malondialdehyde's first
    163 of 2,886 candidates were 92 from 700 K MD, 50 normal-mode displacements, 20 from 500 K and 1 from 300 K,
    and of 1,077 labelled ones 42 came from 300 K: a short fit then trains on the hot tail and the test frames'
    300-500 K region has few frames. ``shares``: {source: weight} instead of the sources' sizes."""
    sources = np.asarray(sources)
    names = sorted(set(sources.tolist()))
    per = {}
    for name in names:
        ids = np.flatnonzero(sources == name)
        per[name] = ids[farthest_point_order(np.asarray(positions)[ids])]
    share = {name: float((shares or {}).get(name, len(per[name]) / len(sources))) for name in names}
    taken = {name: 0 for name in names}
    order = []
    for _ in range(len(sources)):
        name = min((n for n in names if taken[n] < len(per[n])), key=lambda n: ((taken[n] + 1) / share[n], n))
        order.append(per[name][taken[name]])
        taken[name] += 1
    return np.asarray(order, dtype=np.int64)


def md_start(minima: list, j: int, n_traj: int):
    """The start of trajectory ``j`` of ``n_traj`` at one temperature: the first half from the lowest of
    ``minima`` (lowest first), the others from the rest in turn."""
    half = (n_traj + 1) // 2
    if len(minima) == 1 or j < half:
        return minima[0]
    return minima[1 + (j - half) % (len(minima) - 1)]


def _has_rdkit() -> bool:
    import importlib.util
    return importlib.util.find_spec("rdkit") is not None


def make_candidates(atoms, sampling: dict, n_train: int, n_test: int, charge: int = 0, seed: int = 0,
                    progress=None, seconds: float | None = None) -> dict:
    """Relax, sample, order. Returns arrays (Angstrom): numbers, start, train (n_train, N, 3) in farthest-point
    order, train_source (str per frame: "md300", "nm", ...), test (n_test, N, 3), and info. ``seconds``: the
    MD is cut to what fits in this time at the driver's measured speed."""
    import time

    from ..sampling import sample_geometries
    from .conformers import low_conformers

    log = progress or (lambda line: None)
    driver = sampling["driver"]
    t_start = time.perf_counter()
    start, driver_name = relax(atoms, driver=driver, charge=charge)
    log(f"start structure relaxed with {driver_name}")
    if "xTB" not in driver_name:
        log("WARNING: GFN2-xTB (tblite) is not installed: sampling runs HF/STO-3G MD with PySCF, hundreds of times "
            "slower, and takes fewer candidates (pip install tblite)")
    minima = [start]
    if int(sampling.get("conformer_embeddings", 0)) > 0:
        minima = low_conformers(start, driver=driver, charge=charge, n_embed=int(sampling["conformer_embeddings"]),
                                window_eV=float(sampling["conformer_window_eV"]),
                                max_keep=int(sampling["max_conformers"]), seed=seed,
                                seconds=None if seconds is None else 0.3 * seconds)
        if len(minima) > 1:
            log(f"  {len(minima)} conformers (RDKit embeddings relaxed with {driver_name}), eV above the lowest: "
                + ", ".join(f"{m.info['energy_eV']:.3f}" + (" (the start)" if m.info["is_start"] else "")
                            for m in minima))
        elif not _has_rdkit():
            log("  no conformer search (it needs RDKit: pip install rdkit): MD starts from the start structure only")
        if not minima[0].info.get("is_start", True):
            above = next(m.info["energy_eV"] for m in minima if m.info["is_start"])
            log(f"  the start is {above:.3f} eV above the lowest conformer: the test MD, the normal modes, half "
                "the MD runs and the model's MD checks start from that one")
        start = minima[0]
        if seconds is not None:
            seconds = max(0.3 * seconds, seconds - (time.perf_counter() - t_start))
    rng = np.random.default_rng(seed)
    temps = [float(t) for t in sampling["temperatures"]]
    n_nm = int(round(float(sampling["normal_mode_fraction"]) * n_train))
    n_md = max(len(temps), n_train - n_nm)
    interval = int(sampling["interval"])
    if seconds is not None:       # the driver's speed, from a short run
        t0 = time.perf_counter()
        sample_geometries(start, 1, temperature=temps[0], interval=20, equilibration=0, seed=seed,
                          driver=driver, charge=charge)
        per_step = (time.perf_counter() - t0) / 20
        n_runs = len(temps) * max(1, int(sampling.get("trajectories_per_temperature", 1))) + 2
        steps = n_runs * 200 + (n_md + 4 * n_test) * interval
        if steps * per_step > seconds:
            n_md = max(len(temps), int((seconds / per_step - n_runs * 200) / interval) - 4 * n_test)
            log(f"  MD at {per_step * 1e3:.1f} ms per step: {n_md} MD candidates fit the sampling phase")
    frames, source = [], []
    n_traj = max(1, int(sampling.get("trajectories_per_temperature", 1)))
    n_transient = int(sampling.get("transients_per_run", 0))
    for k, t in enumerate(temps):
        m = n_md // len(temps) + (1 if k < n_md % len(temps) else 0)
        # independent trajectories (own seeds): more chances to cross into other conformers than one long run
        for j in range(n_traj):
            mj = m // n_traj + (1 if j < m % n_traj else 0)
            if mj == 0:
                continue
            begin = md_start(minima, j, n_traj)
            seen = TransientPatterns(begin.numbers, begin.positions, max_keep=n_transient)
            pos, _ = sample_geometries(begin, mj, temperature=t, interval=int(sampling["interval"]),
                                       friction=float(sampling["friction"]), seed=seed * 1000 + 11 + k + 50 * j,
                                       driver=driver, charge=charge, on_step=seen if n_transient else None)
            frames.append(pos)
            source += [f"md{t:g}"] * mj
            if seen.frames:
                frames.append(np.stack(seen.frames))
                source += ["transient"] * len(seen.frames)
        log(f"  {m} candidates from {n_traj} Langevin MD runs at {t:g} K"
            + (f" ({min(n_traj, (n_traj + 1) // 2)} from the lowest conformer)" if len(minima) > 1 else ""))
    if "transient" in source:
        log(f"  {source.count('transient')} frames where the bond pattern changed for under 50 fs (a proton in "
            "flight, an overstretched bond)")
    if n_nm:
        frames.append(normal_mode_samples(start, n_nm, temps, rng, driver=driver, charge=charge))
        source += ["normal_modes"] * n_nm
        log(f"  {n_nm} candidates displaced along the normal modes")
    train = np.concatenate(frames)
    if sampling.get("order", "interleaved") == "interleaved":
        order = interleaved_order(train, source)
    else:                                                  # "farthest": one order over all sources
        order = farthest_point_order(train, start=0)
    # the few transient frames first: as one source among thousands of frames, half of them would sit past what
    # the budget labels, and they are what the model would otherwise refuse
    order = np.concatenate([[i for i in order if source[i] == "transient"],
                            [i for i in order if source[i] != "transient"]]).astype(np.int64)
    train, source = train[order], [source[i] for i in order]
    tests, test_source = [], []
    ttemps = [float(t) for t in sampling["test_temperatures"]]
    for k, t in enumerate(ttemps):
        m = n_test // len(ttemps) + (1 if k < n_test % len(ttemps) else 0)
        if m == 0:
            continue
        # one frame every 4 intervals: test frames further apart than the training candidates
        pos, _ = sample_geometries(start, m, temperature=t, interval=4 * int(sampling["interval"]),
                                   friction=float(sampling["friction"]), seed=seed * 1000 + 501 + k,
                                   driver=driver, charge=charge)
        tests.append(pos)
        test_source += [f"md{t:g}"] * m
    test = np.concatenate(tests) if tests else np.zeros((0, len(atoms), 3))
    log(f"  {len(test)} held-out test geometries from their own trajectories at {', '.join(f'{t:g}' for t in ttemps)} K")
    return {"numbers": np.asarray(start.numbers), "start": start.positions.copy(), "train": train,
            "minima": np.stack([m.positions for m in minima]),
            "minima_energy_eV": np.array([m.info.get("energy_eV", 0.0) for m in minima]),
            "train_source": np.asarray(source), "test": test, "test_source": np.asarray(test_source),
            "driver": driver_name}
