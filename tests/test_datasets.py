"""Datasets: DeePMD and ASE readers, validation errors, filters, splits, padding and masks."""
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
import ase.io

from fusepot.core import datasets as D
from fusepot.core import mechanics
from fusepot.core import neighbors as nb
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.trainers.dft import label_dataset
from fusepot.core.units import KJ_PER_MOL_IN_EV

SPECIES = ["Ar", "Kr"]


def lj(species=SPECIES, epsilon=0.2, sigma=2.3):
    return get_plugin_manager().build("potential", "lennard_jones",
                                      {"epsilon": epsilon, "sigma": sigma, "cutoff": 5.0, "cutoff_in_sigma": False},
                                      BuildContext(species=list(species)))


def configurations(n, seed=0, species=SPECIES):
    """Perturbed, strained fcc cells of 3–16 atoms (some smaller than the cutoff), two elements."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        at = bulk("Ar", "fcc", a=3.65, cubic=True).repeat([(1, 1, 1), (2, 1, 1), (2, 2, 1)][k % 3])
        if k % 2:
            del at[0]
        sym = [species[i % len(species)] for i in range(len(at))]
        eps = rng.normal(0, 0.02, (3, 3))
        deform = np.eye(3) + 0.5 * (eps + eps.T)
        pos = at.positions @ deform + rng.normal(0, 0.1, (len(at), 3))
        out.append(Atoms(sym, positions=pos, cell=at.cell.array @ deform, pbc=True))
    return out


def labelled(n, seed=0, species=SPECIES):
    idx = {s: i for i, s in enumerate(species)}
    samples = [D.Sample(a.positions, np.array([idx[s] for s in a.get_chemical_symbols()], np.int32), a.cell.array,
                        0.0, np.zeros((len(a), 3)), np.zeros((3, 3)), source="mem", frame=k)
               for k, a in enumerate(configurations(n, seed, species))]
    return label_dataset(lj(species), D.Dataset(samples, species))


def write_deepmd(folder: Path, samples, symbols=SPECIES, energy_factor=1.0, type_map_file=True, virial=True):
    """One DeePMD system (all samples must share atom count and types)."""
    set_dir = folder / "set.000"
    set_dir.mkdir(parents=True)
    (folder / "type.raw").write_text("\n".join(str(int(t)) for t in samples[0].species) + "\n")
    if type_map_file:
        (folder / "type_map.raw").write_text("\n".join(symbols) + "\n")
    np.save(set_dir / "box.npy", np.stack([s.box.ravel() for s in samples]).astype(np.float32))
    np.save(set_dir / "coord.npy", np.stack([s.positions.ravel() for s in samples]))
    np.save(set_dir / "energy.npy", np.array([s.energy for s in samples]) * energy_factor)
    np.save(set_dir / "force.npy", np.stack([s.forces.ravel() for s in samples]) * energy_factor)
    if virial:
        np.save(set_dir / "virial.npy", np.stack([s.virial.ravel() for s in samples]) * energy_factor)


@pytest.fixture(scope="module")
def data():
    return labelled(12)


def test_read_deepmd_folder_of_systems_with_units(tmp_path, data):
    by_n = {}
    for s in data:
        by_n.setdefault(s.n_atoms, []).append(s)
    for n, ss in by_n.items():  # nested folders, energies written in meV
        write_deepmd(tmp_path / "root" / f"group{n % 2}" / f"sys_{n}", ss, energy_factor=1e3)
    ds = D.read_deepmd(tmp_path / "root", SPECIES, energy_unit="meV")
    assert len(ds) == len(data) and ds.species == tuple(SPECIES)
    ref = {(s.n_atoms, round(s.energy, 6)): s for s in data}
    for s in ds:
        r = ref[(s.n_atoms, round(s.energy, 6))]
        np.testing.assert_allclose(s.positions, r.positions)
        np.testing.assert_allclose(s.forces, r.forces, rtol=1e-12)
        np.testing.assert_allclose(s.virial, r.virial, rtol=1e-12)
        np.testing.assert_allclose(s.box, r.box, atol=1e-5)  # written as float32
        np.testing.assert_array_equal(s.species, r.species)
        assert s.has_virial and s.system.startswith("group")
    # one system alone; exclusion by name pattern; species map by type_map.raw (reversed model order)
    one = D.read_deepmd(tmp_path / "root" / "group0" / "sys_16", SPECIES, energy_unit="meV")
    assert len(one) == len(by_n[16])
    assert len(D.read_deepmd(tmp_path / "root", SPECIES, energy_unit="meV", exclude=["group0"])) == \
        sum(len(v) for n, v in by_n.items() if n % 2)
    rev = D.read_deepmd(tmp_path / "root" / "group0" / "sys_16", SPECIES[::-1], energy_unit="meV")
    np.testing.assert_array_equal(rev[0].species, 1 - one[0].species)
    # kJ/mol conversion goes through core.units
    write_deepmd(tmp_path / "kj", by_n[16], energy_factor=1 / KJ_PER_MOL_IN_EV)
    kj = D.read_deepmd(tmp_path / "kj", SPECIES, energy_unit="kJ/mol")
    np.testing.assert_allclose(kj[0].energy, one[0].energy, rtol=1e-12)
    np.testing.assert_allclose(kj[0].forces, one[0].forces, rtol=1e-12)


def test_read_ase_extxyz_stress_and_virial(tmp_path, data):
    frames = []
    for k, s in enumerate(data[:4]):
        at = Atoms([SPECIES[t] for t in s.species], positions=s.positions, cell=s.box, pbc=True)
        vol = abs(np.linalg.det(s.box))
        kw = dict(energy=s.energy, forces=s.forces)
        if k == 0:
            kw["stress"] = -s.virial / vol  # ASE: σ = (1/V) ∂E/∂ε = −W/V
        at.calc = SinglePointCalculator(at, **kw)
        if k == 1:
            at.info["virial"] = s.virial
        frames.append(at)
    ase.io.write(tmp_path / "d.xyz", frames, format="extxyz")
    ds = D.read_dataset(tmp_path / "d.xyz", SPECIES)
    assert len(ds) == 4
    for k, (r, s) in enumerate(zip(ds, data[:4])):
        assert r.has_virial == (k < 2)
        np.testing.assert_allclose(r.energy, s.energy, rtol=1e-9)
        np.testing.assert_allclose(r.forces, s.forces, rtol=1e-6, atol=1e-8)
        if k < 2:
            np.testing.assert_allclose(r.virial, s.virial, rtol=1e-6, atol=1e-8)
        assert r.source.endswith("d.xyz") and r.frame == k


def _bad_deepmd(tmp_path, data, what):
    ss = [s for s in data if s.n_atoms == 16]
    assert len(ss) == 2
    root = tmp_path / what
    write_deepmd(root, ss)
    sd = root / "set.000"
    if what == "nan":
        f = np.load(sd / "force.npy")
        f[1, 4] = np.nan
        np.save(sd / "force.npy", f)
        return root, ["force.npy", "frame 1", "NaN"]
    if what == "shape":
        np.save(sd / "coord.npy", np.load(sd / "coord.npy")[:, :-3])
        return root, ["coord.npy", "frame", "16 atoms"]
    if what == "volume":
        b = np.load(sd / "box.npy")
        b[1, 6:] = 0.0
        np.save(sd / "box.npy", b)
        return root, ["box.npy", "frame 1", "volume"]
    if what == "frames":
        np.save(sd / "energy.npy", np.load(sd / "energy.npy")[:1])
        return root, ["energy.npy", "frame 1", "box.npy"]
    if what == "forces_missing":
        (sd / "force.npy").unlink()
        return root, ["force.npy", "missing", "forces"]
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["nan", "shape", "volume", "frames", "forces_missing"])
def test_deepmd_validation_errors_name_file_and_frame(tmp_path, data, what):
    root, words = _bad_deepmd(tmp_path, data, what)
    with pytest.raises(D.DatasetError) as err:
        D.read_deepmd(root, SPECIES)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_ase_and_unit_validation_errors(tmp_path, data):
    s = data[0]
    at = Atoms([SPECIES[t] for t in s.species], positions=s.positions, cell=s.box, pbc=True)
    good = at.copy()
    good.calc = SinglePointCalculator(good, energy=s.energy, forces=s.forces)
    noforce = at.copy()
    noforce.calc = SinglePointCalculator(noforce, energy=s.energy)
    nanf = at.copy()
    f = s.forces.copy()
    f[0, 0] = np.inf
    nanf.calc = SinglePointCalculator(nanf, energy=s.energy, forces=f)
    for name, frames, words in [("noforce.xyz", [good, noforce], ["noforce.xyz", "frame 1", "forces"]),
                                ("inf.xyz", [good, good, nanf], ["inf.xyz", "frame 2", "forces", "NaN or inf"])]:
        ase.io.write(tmp_path / name, frames, format="extxyz")
        with pytest.raises(D.DatasetError) as err:
            D.read_ase(tmp_path / name, SPECIES)
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(D.DatasetError, match="furlong"):
        D.read_ase(tmp_path / "inf.xyz", SPECIES, length_unit="furlong")
    with pytest.raises(D.DatasetError, match="not an energy unit"):
        D.read_ase(tmp_path / "inf.xyz", SPECIES, energy_unit="GPa")
    with pytest.raises(D.DatasetError, match=r"inf.xyz, frame 0.*\['Ar', 'Kr'\] are not in"):
        D.read_ase(tmp_path / "inf.xyz", ["Xe"])


def test_filters(data):
    fmax = np.array([np.max(np.linalg.norm(s.forces, axis=1)) for s in data])
    epa = np.array([s.energy / s.n_atoms for s in data])
    cut = float(np.median(fmax))
    assert len(D.filter_dataset(data, max_force=cut)) == int(np.sum(fmax <= cut))
    lo = float(np.median(epa))
    assert len(D.filter_dataset(data, energy_per_atom=(lo, None))) == int(np.sum(epa >= lo))
    named = D.Dataset([D.Sample(**{**s.__dict__, "system": f"T475/{'10_diamond' if k < 5 else '0_mp-72'}/elastic/x"})
                       for k, s in enumerate(data)], data.species)
    msgs = []
    assert len(D.filter_dataset(named, exclude=["10_diamond"], log=msgs.append)) == len(data) - 5
    assert "5 by exclude" in msgs[0]


def test_split_reproducible(data):
    a = D.split_dataset(data, (0.5, 0.25, 0.25), seed=3)
    b = D.split_dataset(data, (0.5, 0.25, 0.25), seed=3)
    c = D.split_dataset(data, (0.5, 0.25, 0.25), seed=4)
    ids = [[id(s) for s in part] for part in a]
    assert ids == [[id(s) for s in part] for part in b]
    assert ids != [[id(s) for s in part] for part in c]
    assert [len(p) for p in a] == [6, 3, 3]
    assert sorted(sum(ids, [])) == sorted(id(s) for s in data)


def test_padded_batches_match_unpadded_evaluation(data):
    pot = lj()
    pd = D.pad_dataset(data, pot.cutoff, buckets=[8])  # two buckets: ≤8 and ≤16 atoms
    assert [b.n_pad for b in pd.buckets] == [8, 16]
    f = jax.jit(jax.vmap(lambda c, n: mechanics.energy_forces_virial(pot, c, n)))
    ref = jax.jit(lambda c, n: mechanics.energy_forces_virial(pot, c, n))
    check = {0, 4, 11}  # 4, 8 and 15 atoms (a cell smaller than the cutoff among them)
    seen = 0
    for idx, batch in pd.indexed_batches(5):
        assert not bool(jnp.any(batch.nbrs.overflow))
        u, F, W = f(batch.conf, batch.nbrs)
        for r, k in enumerate(idx):
            s = data[int(k)]
            np.testing.assert_array_equal(F[r, s.n_atoms:], 0.0)  # padded atoms feel nothing
            seen += 1
            if int(k) not in check:
                continue
            conf = s.configuration()
            if int(k) == 0:  # core's allocate (slow on CPU) once, for the cell smaller than the cutoff
                nl = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.3)
            else:  # unpadded list of exactly the pairs within the cutoff
                i, j, sh = D.neighbor_pairs(s.positions, s.box, pot.cutoff)
                nl = nb.NeighborList(jnp.asarray(i), jnp.asarray(j), jnp.asarray(sh), jnp.ones(i.size, bool),
                                     conf.positions, conf.box, jnp.asarray(False), jnp.asarray(i.size),
                                     jnp.zeros((1, 3)), pot.cutoff, 0.0)
            u0, f0, w0 = ref(conf, nl)
            np.testing.assert_allclose(u[r], u0, rtol=1e-12)
            np.testing.assert_allclose(F[r, :s.n_atoms], f0, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(W[r], w0, rtol=1e-10, atol=1e-12)
        assert not bool(jnp.any(batch.weight[len(idx):]))  # filler samples carry no weight
    assert seen == len(data)


def test_capacity_too_small_is_detected_and_grown(data):
    msgs = []
    pd = D.pad_dataset(data, 5.0, capacity=4, log=msgs.append)
    assert msgs and "capacity 4" in msgs[0]
    for b in pd.buckets:
        assert b.capacity >= b.arrays["count"].max()
    batch = next(pd.batches(4))
    assert not bool(jnp.any(batch.nbrs.overflow))


def test_read_saidi_ti_systems(shared_data, tmp_path):
    tar = shared_data / "dft" / "ti_pbe_saidi_iter0.tar.xz"
    if not tar.is_file():
        pytest.skip(f"{tar} not found")
    subprocess.run(["tar", "xJf", str(tar), "-C", str(tmp_path)], check=True)
    systems = D.find_deepmd_systems(tmp_path)
    assert len(systems) > 100
    hcp = [p for p in systems if "0_mp-72" in str(p) and "elastic" in str(p)][:2]
    ds = D.concatenate([D.read_deepmd(p, ["Ti"]) for p in hcp])
    assert len(ds) > 0 and all(s.has_virial for s in ds)
    epa = np.array([s.energy / s.n_atoms for s in ds])
    assert np.all((epa > -9) & (epa < -5))
    assert all(s.volume > 0 and s.forces.shape == (s.n_atoms, 3) for s in ds)
    diamond = [p for p in systems if "10_diamond" in str(p)][:1]
    assert len(D.read_deepmd(diamond[0], ["Ti"], exclude=["10_diamond"])) == 0
