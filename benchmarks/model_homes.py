"""A private ``HIVEMEM_HOME`` per tree for the before/after benchmarks: one copy for
``service_memory.py``, ``service_callers.py`` and ``local_engines.py``.

Since the model's tables are mapped from their own file (``hivemem.embed.mapped``), a tree converts
the home it runs in, and a tree before that change would load the converted files (ORT maps
external data by itself): the comparison would be of one layout. So each tree gets a home of hard
links to the prepared model (the developer's cache is never rewritten), in the layout an older
version wrote — each graph in one file, no ``files`` in the manifest — and one engine of the tree
is built there before any round (a tree that maps converts its copy then, not during a round).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

MODEL = "all-MiniLM-L6-v2"


def _prepared() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hivemem.embed.model import model_dir, prepared_manifest

    prepared_manifest()
    return model_dir()


def load_onnx(graph: Path) -> Any:
    """``onnx.load`` of a prepared graph and its data file (if split) from a private copy: onnx
    refuses external data with several hard links, and test homes hard-link the prepared files."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        for part in graph.parent.glob(graph.name + "*"):
            shutil.copyfile(part, Path(tmp) / part.name)
        return onnx.load(str(Path(tmp) / graph.name))


def legacy_models(to: Path) -> Path:
    """``to/models/<model>``: the prepared model as an older version laid it out (hard links, and
    graphs joined back into one file with onnx where they are split)."""
    src = _prepared()
    dst = to / "models" / MODEL
    dst.mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text())
    for report in manifest["variants"].values():
        report.pop("files", None)
    for f in src.iterdir():
        if f.name.startswith(".") or f.name.endswith(".onnx.data") or f.name == "manifest.json":
            continue
        if f.name.endswith(".onnx") and (src / f"{f.name}.data").exists():
            import onnx

            onnx.save(load_onnx(f), str(dst / f.name))  # loads the external data, saves one file
            continue
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return to


def tree_home(work: Path, label: str, tree: Path) -> Path:
    """A home for ``tree``'s runs (see the module docs), with one engine of the tree built in it."""
    home = legacy_models(work / f"home-{label}")
    env = {**os.environ, "PYTHONPATH": str(tree), "HIVEMEM_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    code = "from hivemem.embed.engine import make_backend\nmake_backend('onnx').encode(['warm'])\n"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, check=True)
    return home


def table_mapping() -> dict[str, float]:
    """Size and resident MB of this process's mappings of the model's data file (``.onnx.data``),
    and of its largest anonymous mapping (where the table lives when it is copied)."""
    out = {"data_size_mb": 0.0, "data_rss_mb": 0.0, "largest_anon_mb": 0.0}
    name = None
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split(maxsplit=5)
                name = parts[5].strip() if len(parts) == 6 else ""
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if name.endswith(".onnx.data"):
                    out["data_size_mb"] += (hi - lo) / 2**20
            elif line.startswith("Rss:") and name is not None:
                mb = int(line.split()[1]) / 1024
                if name.endswith(".onnx.data"):
                    out["data_rss_mb"] += mb
                elif name == "":
                    out["largest_anon_mb"] = max(out["largest_anon_mb"], mb)
    return out
