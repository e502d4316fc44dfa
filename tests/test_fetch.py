"""`fusepot data fetch`: checksum policy, atomic output, conversion to DeePMD systems, errors (exit 2).

The archive built here mimics the layout of the titanium paper's Data_DFT_and_Exp.zip as the
paper's and chemtrain's loaders read it (see examples/titanium/data/paper_dataset.yaml): a top
folder "Data DFT and EXP", a nested zip DFT_data/InitAndBulk_256atoms_curatedData.zip holding
261022_AllInitAndBulk_256atoms_with_types_curatedData/{box,coord,energy,force,virial,types}.npy
in eV and Å, with box rows = lattice vectors and types 0 = Init (virial used), 1 = Bulk.
"""
import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from fusepot.core import cli, units
from fusepot.core.datasets import read_dataset

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples" / "titanium" / "data" / "paper_dataset.yaml"
FOLDER = "261022_AllInitAndBulk_256atoms_with_types_curatedData"
N_FRAMES, N_ATOMS = 7, 4
TYPES = np.array([0, 0, 1, 0, 1, 1, 1])


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    box = np.stack([np.diag([5.9, 5.1, 4.7]) + rng.normal(0, 0.05, (3, 3)) for _ in range(N_FRAMES)])
    return {
        "box": box.reshape(N_FRAMES, 9),
        "coord": rng.uniform(0, 4.5, (N_FRAMES, 3 * N_ATOMS)),
        "energy": rng.normal(-7.8 * N_ATOMS, 0.3, N_FRAMES),
        "force": rng.normal(0, 0.8, (N_FRAMES, 3 * N_ATOMS)),
        "virial": rng.normal(0, 2.0, (N_FRAMES, 9)),
        "types": TYPES.copy(),
    }


def npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def make_zip(path: Path, data: dict, drop=(), inner_bytes=None) -> str:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for k, v in data.items():
            if k not in drop:
                z.writestr(f"{FOLDER}/{k}.npy", npy(v))
        z.writestr(f"__MACOSX/{FOLDER}/._box.npy", b"junk")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Data DFT and EXP/readme_data.md", "The folder DFT_data contains the samples for DFT training.\n")
        z.writestr("Data DFT and EXP/DFT_data/InitAndBulk_256atoms_curatedData.zip",
                   inner.getvalue() if inner_bytes is None else inner_bytes)
        z.writestr("Data DFT and EXP/Exp_data/Exp_EC/EC_From_ExpLatticeConstants.txt", "T C11\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(*extra):
    return cli.main(["data", "fetch", *map(str, extra)])


@pytest.fixture
def archive(tmp_path):
    data = arrays()
    z = tmp_path / "Data_DFT_and_Exp.zip"
    return z, make_zip(z, data), data


def test_fetch_converts_the_paper_layout_exactly(tmp_path, archive, capsys):
    z, sha, data = archive
    out = tmp_path / "ti"
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bulk", "init", "provenance.json"]
    assert not (out / "bulk" / "set.000" / "virial.npy").exists()  # Bulk virials are not labels
    assert (out / "init" / "type_map.raw").read_text().split() == ["Ti"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["sha256"] == sha and prov["verified"] == "--sha256" and "Röcken" in prov["citation"]
    ds = read_dataset(out, ["Ti"])
    assert len(ds) == N_FRAMES
    frames = {name: prov["systems"][name]["source_frames"] for name in ("bulk", "init")}
    assert frames == {"bulk": [2, 4, 5, 6], "init": [0, 1, 3]}
    order = frames["bulk"] + frames["init"]  # read_dataset sorts systems by path
    for s, k in zip(ds, order):
        # eV and Å in the archive: values pass through unchanged, bit for bit
        assert np.array_equal(s.box, data["box"][k].reshape(3, 3))
        assert np.array_equal(s.positions, data["coord"][k].reshape(N_ATOMS, 3))
        assert np.array_equal(s.forces, data["force"][k].reshape(N_ATOMS, 3))
        assert s.energy == data["energy"][k]
        assert s.has_virial == (TYPES[k] == 0)
        if s.has_virial:
            assert np.array_equal(s.virial, data["virial"][k].reshape(3, 3))
    assert "sha256 verified" in capsys.readouterr().err


def test_units_and_box_layout_are_converted(tmp_path, archive):
    z, sha, data = archive
    src = yaml.safe_load(SOURCE.read_text())
    src["convert"]["units"] = {"energy": "kJ/mol", "length": "nm"}
    src["convert"]["box_vectors"] = "columns"
    src["convert"].pop("groups")
    src["convert"]["system_name"] = "all"
    y = tmp_path / "src.yaml"
    y.write_text(yaml.safe_dump(src, allow_unicode=True))
    out = tmp_path / "ti"
    assert fetch(y, "--from-file", z, "--sha256", sha, "--out", out) == 0
    ds = read_dataset(out / "all", ["Ti"])
    e, l = units.to_internal(1.0, "kJ/mol"), units.to_internal(1.0, "nm")
    for k, s in enumerate(ds):
        np.testing.assert_allclose(s.box, data["box"][k].reshape(3, 3).T * l, rtol=1e-15)
        np.testing.assert_allclose(s.positions, data["coord"][k].reshape(-1, 3) * l, rtol=1e-15)
        np.testing.assert_allclose(s.forces, data["force"][k].reshape(-1, 3) * (e / l), rtol=1e-15)
        np.testing.assert_allclose(s.energy, data["energy"][k] * e, rtol=1e-15)
        np.testing.assert_allclose(s.virial, data["virial"][k].reshape(3, 3) * e, rtol=1e-15)
        assert s.has_virial


def no_output(out: Path):
    assert not out.exists() and not out.with_name(out.name + ".new").exists()


def test_wrong_checksum_writes_nothing(tmp_path, archive, capsys):
    z, sha, _ = archive
    out = tmp_path / "ti"
    assert fetch(SOURCE, "--from-file", z, "--sha256", "0" * 64, "--out", out) == 2
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and sha in err
    no_output(out)


def test_unknown_checksum_needs_a_flag(tmp_path, archive, capsys):
    z, sha, _ = archive
    out = tmp_path / "ti"
    assert fetch(SOURCE, "--from-file", z, "--out", out) == 2
    assert "sha256 is not known" in capsys.readouterr().err
    no_output(out)
    assert fetch(SOURCE, "--from-file", z, "--out", out, "--no-verify") == 0
    err = capsys.readouterr().err
    assert "WARNING: --no-verify" in err and sha in err
    assert json.loads((out / "provenance.json").read_text())["verified"].startswith("NOT VERIFIED")
    assert fetch(SOURCE, "--from-file", z, "--out", tmp_path / "x", "--no-verify", "--sha256", sha) == 2
    assert fetch(SOURCE, "--from-file", z, "--out", tmp_path / "x", "--sha256", "abc") == 2
    assert "64 hexadecimal" in capsys.readouterr().err


def test_existing_output_is_never_overwritten(tmp_path, archive, capsys):
    z, sha, _ = archive
    out = tmp_path / "ti"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", out) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", empty) == 0  # an empty folder is fine


def test_corrupt_archives(tmp_path, archive, capsys):
    z, _, data = archive
    bad = tmp_path / "bad.zip"
    bad.write_bytes(z.read_bytes()[: z.stat().st_size // 2])  # truncated download
    sha = hashlib.sha256(bad.read_bytes()).hexdigest()
    assert fetch(SOURCE, "--from-file", bad, "--sha256", sha, "--out", tmp_path / "a") == 2
    assert "not a readable zip archive" in capsys.readouterr().err
    no_output(tmp_path / "a")
    nested = tmp_path / "nested.zip"
    sha = make_zip(nested, data, inner_bytes=b"PK\x03\x04 this is not a zip")
    assert fetch(SOURCE, "--from-file", nested, "--sha256", sha, "--out", tmp_path / "b") == 2
    assert "InitAndBulk_256atoms_curatedData.zip: not a readable zip archive" in capsys.readouterr().err
    no_output(tmp_path / "b")


def test_missing_array_and_shape_errors_name_file_and_frame(tmp_path, capsys):
    data = arrays()
    z = tmp_path / "nf.zip"
    sha = make_zip(z, data, drop=("force",))
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert f"{FOLDER}/force.npy: missing from the archive" in err
    no_output(tmp_path / "a")

    short = dict(data, force=data["force"][:5])
    sha = make_zip(z, short)
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "force.npy: 5 frames, but the box array has 7 (no labels from frame 5 on)" in err

    nan = dict(data, energy=data["energy"].copy())
    nan["energy"][3] = np.nan
    sha = make_zip(z, nan)
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", tmp_path / "c") == 2
    assert "energy.npy, frame 3: contains NaN or inf" in capsys.readouterr().err

    wide = dict(data, force=np.zeros((N_FRAMES, 3 * N_ATOMS + 3)))
    sha = make_zip(z, wide)
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", tmp_path / "d") == 2
    assert "force.npy: shape (7, 15), expected (n_frames, 12)" in capsys.readouterr().err

    lab = dict(data, types=np.array([0, 0, 1, 0, 2, 1, 1]))
    sha = make_zip(z, lab)
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", tmp_path / "e") == 2
    assert "types.npy, frame 4: label 2 is not one of" in capsys.readouterr().err

    pickled = dict(data, coord=np.array([c for c in data["coord"]] + [None], dtype=object)[:-1])
    sha = make_zip(z, pickled)
    assert fetch(SOURCE, "--from-file", z, "--sha256", sha, "--out", tmp_path / "f") == 2
    assert "pickled Python objects" in capsys.readouterr().err
    for name in "bcdef":
        no_output(tmp_path / name)


def test_bad_source_fields_are_named(tmp_path, archive, capsys):
    z, sha, _ = archive
    src = yaml.safe_load(SOURCE.read_text())
    cases = [
        (lambda d: d.pop("url"), "url: required field is missing"),
        (lambda d: d.update(sha256="xyz"), "sha256: a SHA-256 is 64 hexadecimal digits"),
        (lambda d: d["convert"].update(format="hdf5"), "convert.format: unknown recipe 'hdf5'"),
        (lambda d: d["convert"]["units"].update(energy="furlong"), "convert.units.energy"),
        (lambda d: d["convert"]["units"].update(length="eV"), "convert.units.length: 'eV' is not a length unit"),
        (lambda d: d["convert"]["arrays"].pop("coord"), "convert.arrays.coord: required field is missing"),
        (lambda d: d["convert"].update(member=["../etc"]), "convert.member"),
        (lambda d: d.update(colour="red"), "colour: unknown field"),
    ]
    for k, (edit, msg) in enumerate(cases):
        d = yaml.safe_load(yaml.safe_dump(src))
        edit(d)
        y = tmp_path / f"s{k}.yaml"
        y.write_text(yaml.safe_dump(d))
        assert fetch(y, "--from-file", z, "--sha256", sha, "--out", tmp_path / f"o{k}") == 2, msg
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
    assert fetch(tmp_path / "nope.yaml", "--out", tmp_path / "o") == 2


def test_download_streams_and_verifies(tmp_path, archive, capsys):
    z, sha, _ = archive

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        src = yaml.safe_load(SOURCE.read_text())
        src["url"] = f"http://127.0.0.1:{server.server_address[1]}/{z.name}"
        src["sha256"] = sha
        y = tmp_path / "src.yaml"
        y.write_text(yaml.safe_dump(src, allow_unicode=True))
        out = tmp_path / "dl"
        assert fetch(y, "--out", out, "--keep-archive") == 0
        assert (out / "archive" / z.name).read_bytes() == z.read_bytes()
        assert json.loads((out / "provenance.json").read_text())["verified"] == "the source's sha256"
        src["url"] = src["url"].replace(z.name, "missing.zip")
        y.write_text(yaml.safe_dump(src, allow_unicode=True))
        assert fetch(y, "--out", tmp_path / "dl2") == 1  # a failed download is not bad input
        assert "HTTP 404" in capsys.readouterr().err
        no_output(tmp_path / "dl2")
    finally:
        server.shutdown()
        server.server_close()
