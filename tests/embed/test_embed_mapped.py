"""The model's lookup tables in their own file, mapped by ONNX Runtime (``hivemem.embed.mapped``).

The word-embedding table (45 MiB) used to be copied into every process that runs a local engine;
split into ``<graph>.data`` it is mapped from the file: same vectors bit for bit, a home of an
older version converted at its next start, and a damaged file refused with ``ModelDamaged``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hivemem
from hivemem.embed import mapped

onnx = pytest.importorskip("onnx")  # the dev extra: builds and reads models to compare with

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["a cat sat on the mat", "the quarterly report is due on Friday", "zebras graze", "x"]


def _tiny_model(path: Path) -> dict[str, np.ndarray]:
    """ids → Gather(table) → MatMul(weight) + Gather(both) → MatMul: only ``table`` is a lookup-only
    tensor; ``weight`` feeds a product and ``both`` a lookup and a product (both stay inline)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    tensors = {
        "table": rng.standard_normal((2048, 256), dtype=np.float32),  # 2 MiB
        "weight": rng.standard_normal((256, 1024), dtype=np.float32),  # 1 MiB
        "both": rng.standard_normal((1024, 256), dtype=np.float32),
        "small": rng.standard_normal((16, 256), dtype=np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("MatMul", ["rows", "weight"], ["wide"]),
        helper.make_node("Gather", ["both", "ids"], ["rows2"]),
        helper.make_node("MatMul", ["wide", "both"], ["narrow"]),
        helper.make_node("Add", ["narrow", "rows2"], ["sum"]),
        helper.make_node("Gather", ["small", "ids16"], ["rows3"]),
        helper.make_node("Add", ["sum", "rows3"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("ids16", TensorProto.INT64, ["n"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 256])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return tensors


def _run(path: Path) -> np.ndarray:
    import onnxruntime as ort

    ids = np.array([0, 5, 1023, 1000, 5], dtype=np.int64)
    out = ort.InferenceSession(str(path)).run(None, {"ids": ids, "ids16": ids % 16})[0]
    assert isinstance(out, np.ndarray)
    return out


@pytest.mark.fast
def test_split_moves_only_the_lookup_tables_and_runs_bit_identically(tmp_path: Path) -> None:
    from onnx import numpy_helper

    graph = tmp_path / "tiny.onnx"
    tensors = _tiny_model(graph)
    before, size = _run(graph), graph.stat().st_size
    graph.chmod(0o600)
    written = mapped.split(graph)
    assert written is not None and written == mapped.record(graph)  # hashed as written, = read back
    assert graph.stat().st_mode & 0o777 == 0o600
    assert mapped.data_path(graph).stat().st_mode & 0o777 == (0o400 if os.name == "posix" else 0o600)
    assert graph.stat().st_size < size - tensors["table"].nbytes + 4096  # the table left the graph
    proto = onnx.load(str(graph), load_external_data=False)
    external = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert external == {
        "table": {"location": "tiny.onnx.data", "offset": "0", "length": str(tensors["table"].nbytes)}
    }
    onnx.checker.check_model(str(graph))  # a valid model for onnx itself, not only for ORT
    loaded = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(graph)).graph.initializer}
    assert all(np.array_equal(loaded[k], v) for k, v in tensors.items())
    assert np.array_equal(_run(graph), before)
    assert mapped.split(graph) is None  # split already: left as it is


@pytest.mark.fast
def test_split_aligns_every_table_for_mapping(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    tables = {f"t{i}": np.full((300 + i, 1024), i, dtype=np.float32) for i in range(3)}  # odd sizes
    nodes = [helper.make_node("Gather", [k, "ids"], [f"o{k}"]) for k in tables]
    nodes.append(helper.make_node("Concat", [f"o{k}" for k in tables], ["out"], axis=1))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3072])],
        [numpy_helper.from_array(v, k) for k, v in tables.items()],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert mapped.split(path)
    proto = onnx.load(str(path), load_external_data=False)
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in proto.graph.initializer]
    assert len(offsets) == 3 and all(o % mapped.ALIGN == 0 for o in offsets)
    import onnxruntime as ort

    out = ort.InferenceSession(str(path)).run(None, {"ids": np.array([1, 299], dtype=np.int64)})[0]
    assert np.array_equal(out, np.concatenate([v[[1, 299]] for v in tables.values()], axis=1))


@pytest.mark.fast
def test_split_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x3a\xff\xff\xff\xff\x0f")  # field 7 announcing 4 GiB
    with pytest.raises(ValueError):
        mapped.split(junk)


def _legacy_home(tmp_path: Path, hivemem_home: Path) -> Path:
    """A home as an older version prepared it: each variant's graph in one file, no ``files`` in
    the manifest (rebuilt from the test home's model with onnx, whatever its layout)."""
    src = hivemem_home / "models" / MODEL
    dst = tmp_path / "old-home" / "models" / MODEL
    dst.mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text())
    for name, report in manifest["variants"].items():
        report.pop("files", None)
        if name == manifest["default"]:
            # onnx refuses external data with several hard links (the test home links the
            # prepared files), so it reads a private copy of the graph and its data file
            copy = tmp_path / "onnx-copy"
            copy.mkdir()
            for part in src.glob(report["file"] + "*"):
                shutil.copyfile(part, copy / part.name)
            onnx.save(onnx.load(str(copy / report["file"])), str(dst / report["file"]))
            shutil.rmtree(copy)
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def _old_vectors(directory: Path) -> np.ndarray:
    """Vectors from the single-file graph as the engine loaded it before this change."""
    from hivemem.embed.onnx_backend import OnnxBackend

    manifest = json.loads((directory / "manifest.json").read_text())
    graph = directory / manifest["variants"][manifest["default"]]["file"]
    backend = OnnxBackend(graph, directory / "tokenizer.json", model_id="old")
    try:
        return backend.encode(TEXTS)
    finally:
        backend.close()


def _engine_vectors(home: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    from hivemem.embed.engine import make_backend

    monkeypatch.setenv("HIVEMEM_HOME", str(home))
    backend = make_backend("onnx")
    try:
        return backend.encode(TEXTS)
    finally:
        backend.close()  # type: ignore[attr-defined]


@pytest.mark.model
def test_an_older_home_is_converted_at_its_next_start(
    tmp_path: Path, hivemem_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _legacy_home(tmp_path, hivemem_home)
    manifest = json.loads((directory / "manifest.json").read_text())
    graph = directory / manifest["variants"][manifest["default"]]["file"]
    old = _old_vectors(directory)
    assert not mapped.data_path(graph).exists()
    for name in (graph.name, mapped.data_path(graph).name, "manifest.json"):  # left by a killed try
        (directory / f".{name}.x9k2qz").write_bytes(b"\0" * 4096)

    new = _engine_vectors(tmp_path / "old-home", monkeypatch)

    assert np.array_equal(new, old)  # bit for bit
    assert mapped.data_path(graph).stat().st_size > 40 << 20  # the word-embedding table
    assert graph.stat().st_size < 16 << 20
    files = json.loads((directory / "manifest.json").read_text())["variants"][manifest["default"]]["files"]
    assert set(files) == {graph.name, mapped.data_path(graph).name}
    assert files == mapped.record(graph)
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temporary left
    assert np.array_equal(_engine_vectors(tmp_path / "old-home", monkeypatch), old)  # once only


@pytest.mark.model
@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_a_home_that_cannot_be_converted_keeps_working_in_the_old_layout(
    tmp_path: Path,
    hivemem_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    small_tmpfs: Any,
    capfd: pytest.CaptureFixture[str],
    trouble: str,
) -> None:
    legacy = _legacy_home(tmp_path, hivemem_home)
    old = _old_vectors(legacy)
    need = sum(f.stat().st_size for f in legacy.iterdir())
    # full: room for the old files, not for the converted ones next to them
    disk = small_tmpfs(need + (200 << 20 if trouble == "read-only" else 8 << 20))
    shutil.copytree(legacy.parent.parent, disk / "home", dirs_exist_ok=True)
    (disk / "home" / "models" / f".{MODEL}.lock").touch()
    if trouble == "read-only":
        done = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
    before = sorted(p.name for p in (disk / "home" / "models" / MODEL).iterdir())

    assert np.array_equal(_engine_vectors(disk / "home", monkeypatch), old)
    assert np.array_equal(_engine_vectors(disk / "home", monkeypatch), old)  # a worker's next engine

    assert capfd.readouterr().err.count("stays in its old layout") == 1  # once per process
    assert sorted(p.name for p in (disk / "home" / "models" / MODEL).iterdir()) == before  # nothing left


def _copied_home(tmp_path: Path, hivemem_home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A private, converted copy of the test home's default variant (real copies: a test damages
    them; the other variants are not copied, nothing here loads them)."""
    _engine_vectors(hivemem_home, monkeypatch)  # the test home converted, if it was not yet
    src = hivemem_home / "models" / MODEL
    manifest = json.loads((src / "manifest.json").read_text())
    graph = manifest["variants"][manifest["default"]]["file"]
    dst = tmp_path / "copy" / "models" / MODEL
    dst.mkdir(parents=True)
    for name in ("manifest.json", "tokenizer.json", graph, mapped.data_path(Path(graph)).name):
        shutil.copy2(src / name, dst / name)
    return tmp_path / "copy", dst / graph


@pytest.mark.model
@pytest.mark.parametrize("damage", ["truncated", "one byte changed", "missing", "graph changed"])
def test_a_damaged_file_is_refused_with_a_clear_error(
    tmp_path: Path, hivemem_home: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    home, graph = _copied_home(tmp_path, hivemem_home, monkeypatch)
    data = mapped.data_path(graph)
    assert np.array_equal(_engine_vectors(home, monkeypatch), _engine_vectors(hivemem_home, monkeypatch))
    data.chmod(0o600)  # read-only as written (mapped.split): only a deliberate change gets past that
    if damage == "truncated":
        os.truncate(data, data.stat().st_size // 2)
    elif damage == "missing":
        data.unlink()
    else:
        target = data if damage == "one byte changed" else graph
        with open(target, "r+b") as f:
            f.seek(target.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(hivemem.ModelDamaged, match="model prepare --force") as info:
        _engine_vectors(home, monkeypatch)
    assert isinstance(info.value, hivemem.ModelNotPrepared)
    assert str(graph.parent) in str(info.value)


@pytest.mark.model
def test_a_copied_home_is_checked_by_content_and_accepted(
    tmp_path: Path, hivemem_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, graph = _copied_home(tmp_path, hivemem_home, monkeypatch)
    os.utime(mapped.data_path(graph), ns=(1, 1))  # another mtime, the same bytes
    assert np.array_equal(_engine_vectors(home, monkeypatch), _engine_vectors(hivemem_home, monkeypatch))
    manifest = json.loads((graph.parent / "manifest.json").read_text())
    files = manifest["variants"][manifest["default"]]["files"]
    assert files[mapped.data_path(graph).name]["mtime_ns"] == 1  # confirmed once: no hash next time
    assert mapped.check(graph.parent, files) == {}


def _recorded(directory: Path) -> dict[str, Any] | None:
    """The manifest's record (``files``) of the default variant in ``directory``."""
    manifest = json.loads((directory / "manifest.json").read_text())
    files: dict[str, Any] | None = manifest["variants"][manifest["default"]].get("files")
    return files


@pytest.mark.fast
def test_a_graph_found_split_is_checked_against_its_data_file(tmp_path: Path) -> None:
    graph = tmp_path / "tiny.onnx"
    _tiny_model(graph)
    mapped._check_split(graph)  # not split: nothing to check
    assert mapped.split(graph) is not None
    mapped._check_split(graph)
    data = mapped.data_path(graph)
    data.chmod(0o600)
    with open(data, "ab") as f:
        f.write(b"\0")  # longer than split wrote it
    with pytest.raises(hivemem.ModelDamaged, match="needs 2097152"):
        mapped._check_split(graph)
    os.truncate(data, 1000)
    with pytest.raises(hivemem.ModelDamaged, match="1000 bytes"):
        mapped._check_split(graph)
    data.unlink()
    with pytest.raises(hivemem.ModelDamaged, match="missing"):
        mapped._check_split(graph)


@pytest.mark.model
@pytest.mark.parametrize("then", ["intact", "truncated"])
def test_a_conversion_stopped_before_its_record_is_checked_at_the_next_start(
    tmp_path: Path,
    hivemem_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    then: str,
) -> None:
    """The files renamed into place, then the manifest's write fails (ENOSPC, raised by a wrapper:
    a disk that fills exactly there is not reproducible). Before: the start said the home "stays in
    its old layout" (it was mapped), and the next one recorded whatever was on disk as good."""
    import errno

    directory = _legacy_home(tmp_path, hivemem_home)
    manifest = json.loads((directory / "manifest.json").read_text())
    graph = directory / manifest["variants"][manifest["default"]]["file"]
    data = mapped.data_path(graph)
    old = _old_vectors(directory)
    write = mapped._write_atomically

    def manifest_full(path: Path, *args: Any) -> Any:
        if path.name == "manifest.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, *args)

    monkeypatch.setattr(mapped, "_write_atomically", manifest_full)
    assert np.array_equal(_engine_vectors(tmp_path / "old-home", monkeypatch), old)
    err = capfd.readouterr().err
    assert "stays in its old layout" not in err and "could not record it" in err
    assert data.exists() and _recorded(directory) is None  # mapped, not recorded
    monkeypatch.setattr(mapped, "_write_atomically", write)
    if then == "truncated":
        data.chmod(0o600)
        os.truncate(data, 1000)
        with pytest.raises(hivemem.ModelDamaged, match=r"1000 bytes.*model prepare --force"):
            _engine_vectors(tmp_path / "old-home", monkeypatch)
    else:
        assert np.array_equal(_engine_vectors(tmp_path / "old-home", monkeypatch), old)
        files = json.loads((directory / "manifest.json").read_text())["variants"][manifest["default"]][
            "files"
        ]
        assert files == mapped.record(graph)


@pytest.mark.model
def test_recording_a_confirmed_mtime_does_not_wait_for_the_lock(
    tmp_path: Path, hivemem_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the start waited for the lock (a `prepare --force` holds it for minutes) only to
    save the next start a hash."""
    import threading

    from hivemem.embed.engine import make_backend
    from hivemem.embed.model import lock_path
    from hivemem.infra.locks import locked

    home, graph = _copied_home(tmp_path, hivemem_home, monkeypatch)
    data = mapped.data_path(graph)
    os.utime(data, ns=(1, 1))  # a copied home: the SHA-256 decides, then the mtime is recorded
    monkeypatch.setenv("HIVEMEM_HOME", str(home))
    started = threading.Event()

    def start() -> None:
        make_backend("onnx").close()  # type: ignore[attr-defined]
        started.set()

    with locked(lock_path(), mode=0o644):  # a `prepare --force` at work
        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        # a deadlock detector, not a timing threshold: the old code waited here until the release
        started_while_locked = started.wait(timeout=120)
    thread.join()
    assert started_while_locked
    manifest_path = graph.parent / "manifest.json"
    assert json.loads(manifest_path.read_text())["variants"]
    files = json.loads(manifest_path.read_text())["variants"][
        json.loads(manifest_path.read_text())["default"]
    ]
    assert files["files"][data.name]["mtime_ns"] != 1  # skipped while busy
    make_backend("onnx").close()  # type: ignore[attr-defined]
    files = json.loads(manifest_path.read_text())["variants"][
        json.loads(manifest_path.read_text())["default"]
    ]
    assert files["files"][data.name]["mtime_ns"] == 1  # recorded once the lock was free


@pytest.mark.model
@pytest.mark.parametrize("gone", ["data", "graph"])
def test_a_file_replaced_after_the_check_is_refused_with_a_clear_error(
    tmp_path: Path, hivemem_home: Path, monkeypatch: pytest.MonkeyPatch, gone: str
) -> None:
    """`prepare --force` removes the directory, then renames the new one in: a start between the
    check and ONNX Runtime opening the files got ORT's raw error before."""
    home, graph = _copied_home(tmp_path, hivemem_home, monkeypatch)
    ensure_mapped = mapped.ensure_mapped

    def then_removed(*args: Any) -> dict[str, Any]:
        manifest = ensure_mapped(*args)
        (mapped.data_path(graph) if gone == "data" else graph).unlink()
        return manifest

    monkeypatch.setattr(mapped, "ensure_mapped", then_removed)
    with pytest.raises(hivemem.ModelDamaged, match="model prepare --force") as info:
        _engine_vectors(home, monkeypatch)
    assert str(graph) in str(info.value)


CONVERT = """
import hashlib, sys
from hivemem.embed import mapped
from hivemem.embed.engine import make_backend
split = mapped.split
def counted(*args, **kwargs):
    print("hivemem-test: split", file=sys.stderr, flush=True)
    return split(*args, **kwargs)
mapped.split = counted
b = make_backend("onnx")
print(hashlib.sha256(b.encode(sys.argv[1:]).tobytes()).hexdigest())
"""


@pytest.mark.model
@pytest.mark.slow
def test_processes_starting_together_convert_an_older_home(tmp_path: Path, hivemem_home: Path) -> None:
    directory = _legacy_home(tmp_path, hivemem_home)
    digest = hashlib.sha256(_old_vectors(directory).tobytes()).hexdigest()
    env = {**os.environ, "HIVEMEM_HOME": str(tmp_path / "old-home")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT, *TEXTS],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert {out.strip() for out, _ in outs} == {digest}
    assert all("stays in its old layout" not in err for _, err in outs)
    assert sum(err.count("hivemem-test: split") for _, err in outs) == 1  # the others waited, then read
    manifest = json.loads((directory / "manifest.json").read_text())
    graph = directory / manifest["variants"][manifest["default"]]["file"]
    assert manifest["variants"][manifest["default"]]["files"] == mapped.record(graph)
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]


MAPS = """
import json, re, sys
import hivemem
emb = hivemem.Embedder(cache=False)
emb.embed(["a cat sat on the mat", "zebras graze near the river"])
anon, data = 0, []
name = None
for line in open("/proc/self/smaps"):
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        parts = line.split(maxsplit=5)
        name = parts[5].strip() if len(parts) == 6 else ""
    elif line.startswith("Rss:"):
        kb = int(line.split()[1])
        if name == "":
            anon = max(anon, kb)
        elif name.endswith(".onnx.data"):
            data.append(name)
print(json.dumps({"largest_anon_kb": anon, "data": data}))
emb.close()
"""


@pytest.mark.model
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_the_table_is_mapped_from_its_file_not_copied(hivemem_home: Path) -> None:
    """Before: the table was one 44.7 MiB anonymous mapping in every process with a local engine."""
    out = subprocess.run([sys.executable, "-c", MAPS], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["data"] and all(Path(p).parent == hivemem_home / "models" / MODEL for p in seen["data"])
    assert seen["largest_anon_kb"] < 30 * 1024


@pytest.mark.fast
def test_advise_random_finds_the_mappings_of_a_file(tmp_path: Path) -> None:
    import mmap

    path = tmp_path / "t.data"
    path.write_bytes(b"\1" * (1 << 20))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        advised = mapped.advise_random(path)
        assert m[12345] == 1
    assert advised == ((1 << 20) if sys.platform.startswith("linux") else 0)
    assert mapped.advise_random(tmp_path / "nothing.data") == 0
