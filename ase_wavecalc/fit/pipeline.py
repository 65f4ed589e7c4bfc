"""``run_fit``: the phases of ``wavecalc fit`` in order, each resumable, against one budget of wall time.

| phase | what | cores |
|---|---|---|
| sample | relax the molecule, candidates (MD at several temperatures, normal modes), held-out test geometries | 1 |
| label | PySCF references: the test frames, then the candidates in farthest-point order | all workers |
| fock | the Hamiltonian network on F | 1 training + labelling beside it |
| readout | energy and forces from the frozen network's atom features | 1 training + labelling beside it |
| active | committee, MD on it, label where it is unsure, train the readout on | 1 + 1 |
| final | export, committee, test through WaveCalculator, MD stability, timing, report, npz parts | 1-2 |

A phase ends when the fit's clock (``state.FitState``) reaches its deadline from the recipe. Every phase records
in ``fit.json`` what it finished; a killed fit re-enters the phase it was in and continues it (a training run
resumes from its checkpoint, labelling from the frames in the dataset files).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from .recipe import PHASES, phase_deadlines

__all__ = ["FitRequest", "run_fit", "FitInterrupted"]

POOL, TEST, USER = "pool.db", "test.db", "user.db"


class FitInterrupted(RuntimeError):
    """A signal stopped a training phase; everything done so far is saved and the same command resumes."""


class FitRequest(dict):
    """What the user asked for: molecule spec, numbers, positions (Angstrom), method, basis, charge, budget_s,
    workers, seed, command (the command line, recorded in the card)."""


def _check_same_request(old: dict, new: dict) -> None:
    keys = ("method", "basis", "charge", "numbers", "seed")
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if diff:
        from .molecule import FitInputError
        raise FitInputError(f"the work directory holds a fit of another request (differs in {', '.join(diff)}); "
                            "use another --workdir or the same options")


class Fit:
    def __init__(self, state, request: dict, recipe: dict, out: Path, data_out: Path, log, executor=None,
                 user_data: str | None = None):
        self.st, self.req, self.recipe, self.log = state, request, recipe, log
        self.work = state.workdir
        self.out, self.data_out = Path(out), Path(data_out)
        self.executor = executor
        self.user_data = user_data
        self.deadlines = phase_deadlines(recipe, float(request["budget_s"]))
        self.workers = max(1, int(request.get("workers", 2)))
        self._bg = None

    # -- clock -----------------------------------------------------------------------------------------
    def left(self, phase: str) -> float:
        return self.deadlines[phase] - self.st.elapsed()

    def wall_deadline(self, phase: str) -> float:
        return time.time() + max(0.0, self.left(phase))

    # -- labelling -------------------------------------------------------------------------------------
    def labelled(self, name: str) -> int:
        from ..dataset import connect, frame_ids
        p = self.work / name
        return len(frame_ids(connect(p), converged=True)) if p.exists() else 0

    def label_seconds(self) -> float:
        """Seconds per reference on one core: the median of the training frames labelled so far (the sampling
        phase's estimate before any)."""
        from ..dataset import connect
        p = self.work / POOL
        times = [float(r.seconds) for r in connect(p).select(converged=True, include_data=False)
                 if "seconds" in r] if p.exists() else []
        if times:
            return float(np.median(times))
        return float(self.st.data.get("records", {}).get("sample", {}).get("label_seconds_estimate", 60.0))

    def label_until(self, phase: str, workers: int, queue=None, overrun_ok: bool = False,
                    stop_when=None) -> None:
        """Label the queue with ``workers`` processes (or the executor) until the phase's deadline (with
        ``overrun_ok``, until the queue is done, whatever the clock says), or until ``stop_when()`` is true
        (checked every second)."""
        from .labelling import label_with_executor, pending, start_labellers, stop_labellers

        if queue is not None:
            self.st.set("label_queue", queue)
        queue = self.st.get("label_queue")
        if not pending(self.work, queue) or (self.left(phase) <= 0 and not overrun_ok):
            return
        deadline = time.time() + 30 * 86400 if overrun_ok else self.wall_deadline(phase)
        if self.executor is not None:
            label_with_executor(self.work, queue, self.req, self.recipe, self.executor, deadline)
            return
        procs = start_labellers(self.work, workers, deadline)
        names = [q[0] for q in queue]
        start = {n: self.labelled(n) for n in names}
        t0 = last = time.monotonic()
        try:
            while any(p.poll() is None for p in procs):
                time.sleep(1.0)
                if stop_when is not None and stop_when():
                    break
                if time.monotonic() - last > 120:       # a status line every two minutes
                    last = time.monotonic()
                    done = {n: self.labelled(n) for n in names}
                    new = sum(done[n] - start[n] for n in names)
                    self.log(f"[{phase}] " + ", ".join(f"{n} {done[n]}" for n in names) + f" labelled; "
                             f"{new / ((last - t0) / 60):.1f} frames/min on {workers} workers; "
                             f"{max(0.0, self.left(phase)) / 60:.0f} min left in this phase")
        finally:
            stop_labellers(procs)

    def background_labelling(self, until_phase: str = "readout") -> None:
        """Keep labelling beside training until ``until_phase`` ends (one process per spare worker, or the
        executor in a thread); started once and left running across training runs, so no frame in progress is
        thrown away when one run hands over to the next."""
        from .labelling import label_with_executor, pending, start_labellers

        if self._bg is not None and self._bg[0] == "procs" and all(p.poll() is not None for p in self._bg[1]):
            self._bg = None                 # the last ones reached their deadline
        if self._bg is not None:
            return
        queue = self.st.get("label_queue")
        if self.workers < 2 and self.executor is None or not pending(self.work, queue):
            return
        if self.executor is not None:
            t = threading.Thread(target=label_with_executor, daemon=True,
                                 args=(self.work, queue, self.req, self.recipe, self.executor,
                                       self.wall_deadline(until_phase)))
            t.start()
            self._bg = ("thread", t)
        else:
            self._bg = ("procs", start_labellers(self.work, self.workers - 1, self.wall_deadline(until_phase)))

    def stop_background(self) -> None:
        from .labelling import stop_labellers

        if self._bg is None:
            return
        kind, handle = self._bg
        if kind == "procs":
            stop_labellers(handle)
        else:
            handle.join(timeout=60)
        self._bg = None

    # -- phases ----------------------------------------------------------------------------------------
    def phase_sample(self) -> None:
        from ase import Atoms

        from .candidates import make_candidates
        from .labelling import create_dataset
        from .molecule import label_seconds_estimate

        rec = self.recipe["sampling"]
        budget = float(self.req["budget_s"])
        atoms = Atoms(numbers=self.req["numbers"], positions=self.req["positions"])
        t_label = label_seconds_estimate(atoms, self.req["basis"], self.req["method"], int(self.req["charge"]))
        ends = self.recipe["budget"]["phase_end"]
        core_s = budget * ((ends["label"] - ends["sample"]) * self.workers
                           + (ends["readout"] - ends["label"]) * (self.workers - 1))
        expected = max(20, int(core_s / t_label))
        n_test = int(min(int(rec["test_frames"]), max(4, float(rec["test_fraction_max"]) * expected)))
        n_train = int(min(int(rec["max_candidates"]), max(40, float(rec["candidates_per_label"]) * expected)))
        self.log(f"[sample] ~{t_label:.1f} s per reference on one core: the budget labels ~{expected} frames; "
                 f"sampling {n_train} candidates and {n_test} test geometries")
        t0 = time.perf_counter()
        if (self.work / "candidates.npz").is_file():     # sampled before a kill: the same candidates
            with np.load(self.work / "candidates.npz") as z:
                c = {k: z[k] for k in z.files}
            c["driver"] = "(sampled before a restart)"
        else:
            c = make_candidates(atoms, rec, n_train, n_test, charge=int(self.req["charge"]),
                                seed=int(self.req["seed"]), progress=lambda s: self.log("[sample] " + s),
                                seconds=max(60.0, 0.6 * self.left("sample")))
            tmp = self.work / "candidates.tmp.npz"
            np.savez_compressed(tmp, **{k: v for k, v in c.items() if k != "driver"})
            tmp.replace(self.work / "candidates.npz")
        from ..reference import reference_settings
        settings = reference_settings(self.req["method"], self.req["basis"], float(self.recipe["labels"]["conv_tol"]),
                                      int(self.recipe["labels"]["grid_level"]))
        settings["max_cycle"] = int(self.recipe["labels"]["max_cycle"])
        charge = int(self.req["charge"])
        create_dataset(self.work / TEST, c["numbers"], c["test"], settings, "fit test trajectories", charge)
        create_dataset(self.work / POOL, c["numbers"], c["train"], settings, "fit candidates (farthest-point order)",
                       charge)
        if self.user_data:
            self._import_user_data()
        # the labelling phase labels training frames only; the test frames come first after it (beside the
        # first training run), since nothing needs them before the final phase
        self.st.set("label_queue", [[POOL, list(range(len(c["train"])))]])
        self.st.set("test_queue", [[TEST, list(range(len(c["test"])))]])
        self.st.mark_done("sample", seconds=round(time.perf_counter() - t0, 1), driver=c["driver"],
                          n_candidates=int(len(c["train"])), n_test=int(len(c["test"])),
                          label_seconds_estimate=round(t_label, 2), expected_frames=expected)

    def _import_user_data(self) -> None:
        from .user_data import check_user_data, import_user_data

        check_user_data(self.user_data, self.req["numbers"], self.req["method"], self.req["basis"],
                        int(self.req["charge"]))
        n = import_user_data(self.user_data, self.work / USER)
        self.log(f"[sample] {n} user frames from {self.user_data}")

    def train_sets(self) -> list[str]:
        names = [POOL] + ([USER] if (self.work / USER).exists() else [])
        names += sorted(p.name for p in self.work.glob("al_*.db"))
        return names

    def _train(self, name: str, phase: str, table: str, extra_run: dict | None = None,
               optimizer_extra: dict | None = None, loss_extra: dict | None = None,
               scheduler: dict | None = None) -> dict:
        from .training import dataset_specs, phase_config, train_for

        rec = self.recipe[table]
        run_dir = self.work / "runs" / name
        specs = dataset_specs(self.work, self.train_sets(), float(rec["val_fraction"]))
        if not specs:
            raise RuntimeError("no labelled frames to train on: the labelling phase produced none (see labeller_*.log)")
        tables = {k: dict(rec[k]) for k in ("model", "loss", "optimizer", "scheduler", "run")}
        if scheduler is not None:
            tables["scheduler"] = dict(scheduler)
        # every phase's network is the Fock network's architecture (plus, for the readout, its energy parts)
        tables["model"] = {**self.recipe["fock"]["model"], **tables["model"]}
        tables["loss"].update(loss_extra or {})
        # the plateau patience is set in steps: epochs of a few hundred frames are short
        n_train = sum(d["train"] for d in specs)
        steps_per_epoch = max(1, n_train // int(tables["run"].get("batch_size", 4)))
        patience_steps = tables["scheduler"].pop("patience_steps", None)
        if patience_steps is not None:
            tables["scheduler"]["patience"] = max(2, int(round(float(patience_steps) / steps_per_epoch)))
        if tables["scheduler"].get("kind") == "cosine":    # the lr reaches its floor as the run's time ends
            tables["scheduler"]["horizon_min"] = max(0.98 * self.left(phase), 1.0) / 60.0
        text = phase_config(tables, specs,
                            seed=int(self.req["seed"]), run_extra=extra_run, optimizer_extra=optimizer_extra)
        self.background_labelling("active" if phase == "_al_train" else "readout")
        result = train_for(run_dir, text, self.left(phase), log=_Throttled(self.log, f"[{phase}] "),
                           device=self.req.get("device"))
        if result["stopped"] == "signal":
            raise FitInterrupted(f"training run {run_dir} stopped by a signal")
        return result

    def phase_label(self) -> None:
        self.label_until("label", self.workers)
        n_test, n_pool = self.labelled(TEST), self.labelled(POOL)
        if n_pool < 8:   # no useful model from fewer: keep labelling (the budget check at the start makes this rare)
            self.log(f"[label] only {n_pool} frames labelled by the deadline: labelling 8 before training")
            from .labelling import pending
            for _ in range(3):
                if self.labelled(POOL) >= 8 or not pending(self.work, self.st.get("label_queue")):
                    break
                self.label_until("label", self.workers, overrun_ok=True, stop_when=lambda: self.labelled(POOL) >= 8)
            n_pool = self.labelled(POOL)
            if n_pool < 8:
                raise RuntimeError(f"only {n_pool} training frames could be labelled (SCF failures? see "
                                   f"{self.work}/labeller_*.log)")
        pool = [q for q in self.st.get("label_queue") if q[0] == POOL]
        self.st.set("label_queue", self.st.get("test_queue") + pool)      # (idempotent: a resumed phase repeats it)
        self.st.mark_done("label", test_frames=n_test, train_frames=n_pool)
        self.log(f"[label] {n_test} test and {n_pool} training frames labelled")

    def phase_fock(self) -> None:
        """``fock.rounds`` runs, each on the frames labelled when it starts (the other core keeps labelling),
        each from the previous one's weights with a fresh optimizer; the time split evenly among them."""
        rounds = int(self.recipe["fock"].get("rounds", 1))
        start = self.deadlines["label"]
        length = self.deadlines["fock"] - start
        results = []
        for k in range(rounds):
            name = "fock" if k == 0 else f"fock_{k}"
            end = start + length * (k + 1) / rounds
            if k + 1 < rounds and (self.work / "runs" / f"fock_{k + 1}").exists():
                continue                                     # a later round has started: this one is done
            extra = {} if k == 0 else {"init_weights": str(self.work / "runs" / self.st.get("last_fock"))}
            opt = {} if k == 0 else {"lr": float(self.recipe["fock"]["optimizer"]["lr"]) * 0.5,
                                     "warmup_steps": int(self.recipe["fock"].get("warmup_steps", 0))}
            self.deadlines["_fock_round"] = end
            self.st.set("guess_run", self.st.get("last_fock"))    # labellers start SCFs from the newest F
            # the last round adds its loss terms (F in the orthonormal basis: from scratch it slows F ten-fold)
            loss = dict(self.recipe["fock"].get("last_round_loss", {})) if k == rounds - 1 and k > 0 else {}
            results.append(self._train(name, "_fock_round", "fock", extra_run=extra, optimizer_extra=opt,
                                       loss_extra=loss))
            self.st.set("last_fock", name)
            self.st.set("guess_run", name)
        self.st.mark_done("fock", rounds=results)

    def phase_readout(self) -> None:
        fock = self.work / "runs" / self.st.get("last_fock", "fock")
        r = self._train("readout", "readout", "readout", extra_run={"init_weights": str(fock)})
        self.st.set("last_readout", "readout")
        self.st.mark_done("readout", **r)

    def _export(self, run: str, out: Path, committee: bool = True) -> None:
        from ..train.cli_committee import add_committee
        from ..train.cli_export import export_run

        run_dir = self.work / "runs" / run
        if not (run_dir / "checkpoint.pt").is_file():     # a packed run (weights only): one epoch recreates it
            from .training import train_for
            train_for(run_dir, (run_dir / "config.toml").read_text(), 1.0, log=_Throttled(self.log, "[export] "),
                      device=self.req.get("device"))
        export_run(run_dir, out, test=False, force=True, refit_frames=400)
        if committee:
            add_committee(str(out), str(self.work / POOL), str(out), size=int(self.recipe["committee"]["size"]),
                          force=True, log=lambda s: None)

    def phase_active(self) -> None:
        """Rounds of: MD on the committee model (labelling goes on beside it), the least certain frames into
        ``al_<r>.db``, labelled first, then the readout trained on from its last weights. A round's record in
        ``fit.json`` says how far it got, so a killed round goes on where it stopped."""
        from ase import Atoms
        from ase.io import write

        from ..dataset import connect, read_candidates
        from .active import explore
        from .labelling import create_dataset, pending

        rec = self.recipe["active"]
        rounds = self.st.get("active_rounds", [])
        length = self.deadlines["active"] - self.deadlines["readout"]
        max_rounds = int(rec.get("max_rounds", 20))
        while True:
            if not rounds or rounds[-1].get("trained"):
                # a new round needs time for its MD, its labels and its training: 40% of the phase at least
                if self.left("active") <= max(0.4 * length, 30.0) or len(rounds) >= max_rounds:
                    break
                r = len(rounds)
                self.background_labelling("active")
                model_dir = self.work / "models" / f"round_{r}"
                self._export(self.st.get("last_readout"), model_dir)
                cand = np.load(self.work / "candidates.npz")
                # each round's MD from the next of the sampled conformers (the start alone before they existed)
                minima = cand["minima"] if "minima" in cand.files else cand["start"][None]
                start = Atoms(numbers=cand["numbers"], positions=minima[r % len(minima)])
                t_md = self.st.elapsed() + 0.35 * max(0.0, self.left("active"))
                # as many frames as the workers label in a quarter of the time left (24 in the recipe takes
                # ~3 min for malondialdehyde on 2 cores, and would take most of a 2-h fit's phase for 20 atoms)
                fit_in = int(0.25 * max(0.0, self.left("active")) * self.workers / self.label_seconds())
                n_round = max(2, min(int(rec["max_frames_per_round"]), fit_in))
                found = explore(model_dir, start, rec["temperatures"], int(rec["steps"]), float(rec["friction"]),
                                int(rec["select_every"]), n_round, float(rec["spread_quantile"]),
                                seed=int(self.req["seed"]) + r, log=lambda s: self.log("[active] " + s),
                                deadline=lambda: self.st.elapsed() > t_md)
                record = {"round": r, "selected": len(found["frames"]), "runs": found["runs"], "trained": False}
                if not found["frames"]:
                    self.log("[active] no frame selected")
                    rounds.append({**record, "trained": True})
                    self.st.set("active_rounds", rounds)
                    break
                write(self.work / f"al_{r}.traj", found["frames"])
                tmp = self.work / f"al_{r}.tmp.db"          # made whole, then renamed: never half a file
                tmp.unlink(missing_ok=True)
                create_dataset(tmp, cand["numbers"], np.stack([a.positions for a in found["frames"]]),
                               _settings_of(self.work / POOL), f"active learning round {r}", int(self.req["charge"]))
                tmp.replace(self.work / f"al_{r}.db")
                rounds.append(record)
                self.st.set("active_rounds", rounds)
            r = rounds[-1]["round"]
            al = f"al_{r}.db"
            n = len(read_candidates(connect(self.work / al))[1])
            mine = [[al, list(range(n))]]
            self.stop_background()        # (it labelled beside the MD; the new frames go first now)
            rest = [q for q in self.st.get("label_queue") if q[0] != al]
            # until the round's own frames are all stored (converged or failed): frames of the pool that a
            # labeller done with its share of the round finishes meanwhile do not count for them
            self.label_until("active", self.workers, queue=mine + rest, stop_when=lambda: not pending(self.work, mine))
            if pending(self.work, mine):
                self.log("[active] out of time while labelling the round's frames")
                break
            name = f"readout_al{r}"
            prev = self.work / "runs" / self.st.get("last_readout")
            until = self.st.elapsed() + 0.6 * max(0.0, self.left("active"))
            if r + 1 >= max_rounds or self.deadlines["active"] - until <= max(0.4 * length, 30.0):
                until = self.deadlines["active"]   # no time for another round after this one: train to the end
            self.deadlines["_al_train"] = until
            self._train(name, "_al_train", "readout", extra_run={"init_weights": str(prev)},
                        optimizer_extra={"lr": float(rec["continue_lr"]), "warmup_steps": 200},
                        scheduler=rec.get("scheduler"))
            self.st.set("last_readout", name)
            rounds[-1]["trained"] = True
            self.st.set("active_rounds", rounds)
        self.stop_background()
        self.st.mark_done("active", rounds=len(rounds))

    def phase_final(self) -> None:
        from ..train.frozen_trunk import release
        from .labelling import pending
        from .report import final_report

        self.stop_background()
        release()           # the readout runs' kept trunk descriptors (train/frozen_trunk.py): no more training

        if pending(self.work, self.st.get("test_queue")):     # e.g. --workers 1: no labelling beside training
            self.log("[final] labelling the test frames that are left (past the budget if need be: a model "
                     "is not finished before it is tested)")
            self.label_until("final", self.workers, queue=self.st.get("test_queue"), overrun_ok=True)

        if not self.st.get("exported"):
            self.log(f"[final] exporting {self.st.get('last_readout')} to {self.out}")
            self._export(self.st.get("last_readout"), self.out)
            self.st.set("exported", True)
        final_report(self)
        self.st.mark_done("final")


class _Throttled:
    """The trainer's log: per-epoch lines at most once a minute (all of them are in the run's train.log)."""

    def __init__(self, log, prefix: str, every_s: float = 60.0):
        self.log, self.prefix, self.every_s, self.last = log, prefix, every_s, -1e9

    def __call__(self, line: str) -> None:
        if line.lstrip().startswith("epoch"):
            if time.monotonic() - self.last < self.every_s:
                return
            self.last = time.monotonic()
        self.log(self.prefix + line)


def _settings_of(path) -> dict:
    from ..dataset import metadata
    meta = metadata(path)
    return {k: meta[k] for k in ("method", "xc", "basis", "grid_level", "conv_tol", "conv_tol_grad", "pyscf_version",
                                 "units", "max_cycle") if k in meta}


def run_fit(request: dict, recipe: dict, recipe_text: str, workdir, out, data_out=None, log=print,
            dask_scheduler: str | None = None, user_data: str | None = None) -> dict:
    """Run (or resume) a fit; returns the final state dict. Raises FitInterrupted on a signal."""
    from .state import FitState

    executor, close = None, (lambda: None)
    if dask_scheduler:
        from ..generate import _make_executor
        from .molecule import FitInputError
        try:
            executor, _, close = _make_executor(None, dask_scheduler, 1)
        except ImportError as exc:
            raise FitInputError(str(exc)) from None
        except OSError as exc:
            raise FitInputError(f"cannot reach the Dask scheduler {dask_scheduler}: {exc}") from None
    workdir = Path(workdir)
    try:
        with FitState(workdir) as st:
            if "request" in st.data:
                _check_same_request(st.data["request"], request)
                if float(request["budget_s"]) != float(st.data["request"]["budget_s"]):
                    log(f"budget changed to {request['budget_s'] / 3600:.2f} h")
                st.data["request"].update(budget_s=request["budget_s"], workers=request["workers"])
                # the device: the one given now, else the one the fit was started with (a resumed fit keeps it)
                if request.get("device") is not None and request["device"] != st.data["request"].get("device"):
                    log(f"training device {request['device']}")
                    st.data["request"]["device"] = request["device"]
                recipe = st.data["recipe"]
            else:
                st.data.update(request={**request, "device": request.get("device") or "cpu"}, recipe=recipe,
                               recipe_text=recipe_text)
                st.save()
            fit = Fit(st, st.data["request"], recipe, Path(out), Path(data_out or workdir / "data"), log,
                      executor=executor, user_data=user_data)
            try:
                _run_phases(st, fit, log)
            finally:
                fit.stop_background()
            return dict(st.data)
    finally:
        close()


def _run_phases(st, fit, log) -> None:
    for phase in PHASES:
        if st.done(phase):
            continue
        t0 = st.elapsed()
        log(f"== phase {phase} (fit clock {t0 / 60:.1f} of {fit.deadlines['final'] / 60:.0f} min; this "
            f"phase until {fit.deadlines[phase] / 60:.1f} min)")
        getattr(fit, f"phase_{phase}")()
        end = round(st.elapsed(), 1)
        st.data.setdefault("phase_seconds", {})[phase] = round(end - _phase_start(st, phase), 1)
        st.data.setdefault("phase_done_at_s", {})[phase] = end
        st.save()


def _phase_start(st, phase: str) -> float:
    """Fit-clock seconds at which `phase` began, over every invocation that worked on it: the clock at which
    the phase before it ended (fits started before `phase_done_at_s` existed: the sum of the earlier phases)."""
    i = PHASES.index(phase)
    if i == 0:
        return 0.0
    done_at = st.data.get("phase_done_at_s", {})
    if PHASES[i - 1] in done_at:
        return float(done_at[PHASES[i - 1]])
    return float(sum(st.data.get("phase_seconds", {}).get(p, 0.0) for p in PHASES[:i]))
