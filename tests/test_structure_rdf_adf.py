"""RDF and ADF against brute-force NumPy references; crystal peaks; gradients; overflow honesty."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from fusepot.core import neighbors as nb
from fusepot.core.interfaces import Frame, StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import Configuration, from_ase
from fusepot.plugins.structure import ADF, RDF, curve_rms_deviation, per_frame_values
from fusepot.plugins.structure.adf import build_triplets

from test_structure_bruteforce import angles_brute, rdf_brute

TRICLINIC = np.array([[9.0, 0.0, 0.0], [2.5, 8.5, 0.0], [-1.5, 2.0, 9.5]])


def frame_of(pos, box, species=None):
    pos = jnp.asarray(pos)
    species = np.zeros(len(pos), int) if species is None else species
    return Frame(Configuration(pos, species, box), jnp.zeros_like(pos), jnp.ones(len(pos)), StatePoint(300.0))


def evaluate(obs, frame, cutoff=None):
    nbrs = nb.allocate(frame.conf.positions, frame.conf.box, cutoff or obs.neighbor_cutoff, skin=0.0)
    return np.asarray(jax.jit(lambda f, n: obs.per_frame(None, f, n))(frame, nbrs))


def fcc(reps=3, a=3.6, jitter=0.0, seed=0):
    conf, _ = from_ase(bulk("Cu", "fcc", a=a, cubic=True).repeat(reps))
    pos = np.asarray(conf.positions) + np.random.default_rng(seed).normal(0, jitter, conf.positions.shape)
    return pos, np.asarray(conf.box)


def random_frame(n=60, seed=1, box=TRICLINIC):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (n, 3)) @ box) + rng.normal(0, 4.0, (n, 3)) * 0  # unwrapped copies tested below


# -- RDF ---------------------------------------------------------------------------------------
def widths(box):
    v = abs(np.linalg.det(box))
    a, b, c = box
    return v / np.array([np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)), np.linalg.norm(np.cross(a, b))])


@pytest.mark.parametrize("kind", ["random_triclinic", "fcc_jittered", "fcc_perfect"])
def test_sharp_rdf_matches_brute_force(kind):
    if kind == "random_triclinic":
        pos, box = random_frame(), TRICLINIC
        pos = pos + np.random.default_rng(5).integers(-2, 3, pos.shape) @ box  # unwrapped input
    else:
        pos, box = fcc(jitter=0.05 if kind == "fcc_jittered" else 0.0)
    r_max = 0.49 * widths(box).min()
    obs = RDF(0.0, r_max, 83)  # 83 bins: crystal distances do not sit on bin edges
    got = evaluate(obs, frame_of(pos, box))
    ref = rdf_brute(pos, box, obs.edges)
    assert np.max(np.abs(got - ref)) < 1e-3, np.max(np.abs(got - ref))


def test_partial_rdfs_match_brute_force_and_sum_to_total():
    pos, box = random_frame(n=80, seed=3), TRICLINIC
    species = np.random.default_rng(4).integers(0, 2, len(pos))
    frame = frame_of(pos, box, species)
    r_max = 0.49 * widths(box).min()
    total = evaluate(RDF(0.0, r_max, 40), frame)
    n = np.bincount(species, minlength=2)
    acc = np.zeros_like(total)
    for a in range(2):
        for b in range(2):
            g = evaluate(RDF(0.0, r_max, 40, 0.0, (a, b)), frame)
            assert np.max(np.abs(g - rdf_brute(pos, box, RDF(0.0, r_max, 40).edges, species, (a, b)))) < 1e-3
            acc += n[a] * n[b] * g
    np.testing.assert_allclose(acc / len(pos) ** 2, total, atol=1e-12)


def test_rdf_beyond_half_cell_counts_all_images():
    """With the image-aware list, r_max may exceed half the cell: a perfect crystal's g(r) shells are
    those of the infinite crystal (fcc: 12, 6, 24, 12 neighbours at a/√2, a, a√(3/2), a√2)."""
    pos, box = fcc(reps=1, a=4.0)  # 4 atoms, 4 Å cell; r_max = 6 Å ≫ half the cell
    obs = RDF(0.0, 6.0, 97)
    g = evaluate(obs, frame_of(pos, box))
    n = obs.coordination_number(g, frame_of(pos, box))
    cn = np.asarray(n)[np.searchsorted(obs.edges[1:], [3.4, 4.5, 5.2, 6.0])]
    np.testing.assert_allclose(cn, [12, 18, 42, 54], atol=1e-9)


def test_fcc_first_shell_coordination_is_12():
    pos, box = fcc(jitter=0.03)
    obs = RDF(0.0, 5.2, 104)
    frame = frame_of(pos, box)
    g = evaluate(obs, frame)
    n = np.asarray(obs.coordination_number(g, frame))
    k = np.searchsorted(obs.edges[1:], 3.1)  # between the first (2.55 Å) and second (3.6 Å) shells
    assert abs(n[k] - 12.0) < 1e-9
    # smooth mode integrates to the same number (the Gaussians are well inside the gap)
    gs = evaluate(RDF(0.0, 5.2, 104, smoothing=0.05), frame)
    assert abs(np.asarray(obs.coordination_number(gs, frame))[k] - 12.0) < 1e-4


def test_smooth_rdf_is_differentiable_and_matches_finite_differences():
    pos, box = fcc(jitter=0.1)
    obs = RDF(2.0, 3.9, 30, smoothing=0.1)
    frame = frame_of(pos, box)
    nbrs = nb.allocate(frame.conf.positions, frame.conf.box, obs.neighbor_cutoff, skin=1.0)
    c = jnp.asarray(np.random.default_rng(0).normal(size=30))

    def f(x):
        fr = frame_of(x, box)
        return jnp.dot(c, obs.per_frame(None, fr, nbrs))

    x0 = jnp.asarray(pos)
    g = jax.grad(f)(x0)
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0
    dx = np.zeros_like(pos)
    dx[3, 1] = 1e-5
    fd = (f(x0 + dx) - f(x0 - dx)) / 2e-5
    np.testing.assert_allclose(float(g[3, 1]), float(fd), rtol=1e-5, atol=1e-8)
    # and the smooth curve is close to the sharp one on a scale of the smoothing
    sharp = evaluate(RDF(0.0, 5.2, 52), frame_of(*fcc(jitter=0.2)))
    smooth = evaluate(RDF(0.0, 5.2, 52, smoothing=0.05), frame_of(*fcc(jitter=0.2)))
    assert np.sum(np.abs(sharp - smooth)) / np.sum(sharp) < 0.1


def test_rdf_refuses_short_list_and_poisons_overflow():
    pos, box = fcc()
    obs = RDF(0.0, 4.5, 50)
    frame = frame_of(pos, box)
    with pytest.raises(ValueError, match="cutoff"):
        evaluate(obs, frame, cutoff=3.0)
    nbrs = nb.allocate(frame.conf.positions, box, obs.neighbor_cutoff, skin=0.0, capacity_factor=1.0)
    denser = frame_of(pos * 0.85, box * 0.85)  # the 4th shell (4.41 Å) enters the cutoff

    @jax.jit
    def run(n, f):
        n = nb.update(n, f.conf.positions, f.conf.box, force=True)
        return n.overflow, obs.per_frame(None, f, n)

    overflow, g = run(nbrs, denser)
    assert bool(overflow) and np.all(np.isnan(np.asarray(g)))


def test_rdf_plugin_params_species_and_units():
    pm = get_plugin_manager()
    obs = pm.build("observable", "rdf", {"r_max": 6.0, "n_bins": 60, "species": ["O", "Ti"]},
                   BuildContext(species=["O", "Ti"]))
    assert obs.species_pair == (0, 1) and obs.smoothing == pytest.approx(0.1) and obs.neighbor_cutoff > 6.0
    sharp = pm.build("observable", "rdf", {"r_max": 6.0, "mode": "sharp"}, BuildContext(species=["Ti"]))
    assert sharp.smoothing == 0.0
    with pytest.raises(ValueError):
        pm.build("observable", "rdf", {"species": ["Fe", "Ti"]}, BuildContext(species=["Ti"]))
    with pytest.raises(Exception):
        pm.build("observable", "rdf", {"r_max": 6.0, "mode": "sharp", "smoothing": 0.1}, BuildContext(species=["Ti"]))


# -- ADF ---------------------------------------------------------------------------------------
def adf_of(atoms, cutoff, n_bins=180, smoothing=0.0):
    conf, _ = from_ase(atoms)
    frame = frame_of(np.asarray(conf.positions), np.asarray(conf.box))
    nbrs = nb.allocate(frame.conf.positions, frame.conf.box, cutoff, skin=0.0)
    obs = ADF(cutoff, n_bins, smoothing).sized_for(frame, nbrs)
    return obs, np.asarray(jax.jit(lambda f, n: obs.per_frame(None, f, n))(frame, nbrs)), frame


def test_adf_fcc_peaks_and_weights():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    obs, p, _ = adf_of(atoms, cutoff=3.1)  # first shell only (2.55 Å; second at 3.6 Å)
    expected = {60.0: 24, 90.0: 12, 120.0: 24, 180.0: 6}  # angle pairs per atom, 66 in all
    mass = p * 1.0  # 1° bins
    for ang, k in expected.items():
        b = min(int(ang), 179)
        assert abs(mass[b - 1:b + 1].sum() - k / 66) < 1e-9, (ang, mass[b - 1:b + 1])
    assert abs(mass.sum() - 1.0) < 1e-12
    # smoothed: peaks at the same angles, still normalised (mirrored at 180°)
    _, ps, _ = adf_of(atoms, cutoff=3.1, n_bins=90, smoothing=2.0)
    assert abs(ps.sum() * 2.0 - 1.0) < 1e-6
    theta = np.linspace(1, 179, 90)
    peaks = [theta[i] for i in range(1, 89) if ps[i] > ps[i - 1] and ps[i] >= ps[i + 1] and ps[i] > 1e-3]
    assert np.allclose(peaks, [60, 90, 120], atol=1.01) and ps[-1] > ps[-2]  # edges of 2° bins


def test_adf_hcp_matches_brute_force_and_has_crystal_angles():
    atoms = bulk("Ti", "hcp", a=2.95, c=2.95 * np.sqrt(8 / 3)).repeat((4, 4, 3))
    obs, p, frame = adf_of(atoms, cutoff=3.3, n_bins=97)  # 97 bins: no crystal angle on a bin edge
    ref = angles_brute(np.asarray(frame.conf.positions), np.asarray(frame.conf.box), 3.3)
    width = 180.0 / 97
    h, _ = np.histogram(ref, bins=obs.edges)
    np.testing.assert_allclose(p, h / (len(ref) * width), atol=1e-12)
    # ideal hcp first shell: per atom 24×60°, 12×90°, 3×109.47°, 18×120°, 6×146.44°, 3×180° (66 pairs)
    for ang, k in ((60.0, 24), (90.0, 12), (109.47, 3), (120.0, 18), (146.44, 6), (180.0, 3)):
        b = min(int(ang / width), 96)
        assert abs(p[b] * width - k / 66) < 1e-9, (ang, p[b] * width, k / 66)


def test_adf_random_triclinic_matches_brute_force():
    pos, box = random_frame(n=120, seed=7), TRICLINIC
    frame = frame_of(pos, box)
    nbrs = nb.allocate(frame.conf.positions, box, 3.5, skin=0.3)
    obs = ADF(3.5, 36).sized_for(frame, nbrs)
    p, count = jax.jit(lambda f, n: (obs.per_frame(None, f, n), obs.triplet_count(f, n)))(frame, nbrs)
    ref = angles_brute(pos, box, 3.5)
    h, _ = np.histogram(ref, bins=obs.edges)
    assert int(count) == len(ref)
    assert np.max(np.abs(p - h / (len(ref) * 5.0))) < 1e-3


def test_triplet_buffer_overflow_is_flagged_and_grown():
    frame = frame_of(*fcc())
    nbrs = nb.allocate(frame.conf.positions, frame.conf.box, 3.1, skin=0.0)
    check = jax.jit(lambda o, f, n: (o.overflow(f, n), o.per_frame(None, f, n)), static_argnums=0)
    small = ADF(3.1, 90, triplet_capacity=100)
    overflow, p = check(small, frame, nbrs)
    assert bool(overflow) and np.all(np.isnan(np.asarray(p)))
    assert np.all(np.isnan(np.asarray(ADF(3.1, 90).per_frame(None, frame, nbrs))))  # unsized
    big = small.grow(frame, nbrs)
    assert big.triplet_capacity >= 108 * 66 and not bool(check(big, frame, nbrs)[0])
    t = jax.jit(build_triplets, static_argnums=(2, 3))(nbrs.senders, nbrs.mask, 108, big.triplet_capacity)
    assert int(t.count) == 108 * 66 and int(t.mask.sum()) == 108 * 66


def test_per_frame_values_sizes_buffers_and_lists():
    """The trajectory evaluator starts unsized and grows until nothing overflows."""
    from fusepot.core.interfaces import Trajectory
    pos, box = fcc(jitter=0.05)
    f = 3
    traj = Trajectory(jnp.stack([pos * s for s in (1.0, 0.98, 0.96)]), jnp.stack([box * s for s in (1.0, 0.98, 0.96)]),
                      jnp.zeros((f,) + pos.shape), jnp.zeros(f), jnp.arange(f) * 0.1, jnp.zeros(len(pos), int),
                      jnp.ones(len(pos)), StatePoint(300.0))
    vals, obs = per_frame_values(ADF(3.1, 90, triplet_capacity=10), traj)
    assert np.all(np.isfinite(np.asarray(vals))) and obs.triplet_capacity > 10


def test_curve_rms_deviation():
    x = np.linspace(0, 10, 101)
    y = np.sin(x)
    xe = np.linspace(1, 12, 57)
    assert curve_rms_deviation(x, y, xe, np.sin(xe)) < 2e-3  # interpolation error only
    assert abs(curve_rms_deviation(x, y + 0.5, x, y) - 0.5) < 1e-12
    assert abs(curve_rms_deviation(x, y + (x > 5), x, y, r_range=(6, 9)) - 1.0) < 1e-12
    with pytest.raises(ValueError):
        curve_rms_deviation(x, y, xe + 20, y[:57])


def test_smoothed_histogram_matches_explicit_gaussian_integrals():
    from math import erf, sqrt

    from fusepot.plugins.structure.binning import histogram
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(0, 10, 40), [0.05, 9.97]])  # two samples at the range ends
    w = rng.uniform(0.5, 1.5, x.size)
    edges = np.linspace(0, 10, 26)

    def explicit(xs):
        return np.array([sum(wi * 0.5 * (erf((b - xi) / (sqrt(2) * 0.3)) - erf((a - xi) / (sqrt(2) * 0.3)))
                             for xi, wi in zip(xs, w)) for a, b in zip(edges[:-1], edges[1:])])

    f = jax.jit(lambda x, w, r: histogram(x, w, 0.0, 10.0, 25, 0.3, reflect=r), static_argnums=2)
    np.testing.assert_allclose(f(x, w, False), explicit(x), atol=1e-6)
    mirrored = explicit(x) + explicit(-x) + explicit(20.0 - x)
    np.testing.assert_allclose(f(x, w, True), mirrored, atol=1e-6)
    assert abs(float(jnp.sum(f(x, w, True))) - w.sum()) < 1e-5
