"""An export made by an older recipe is detected and prepared again (upgraded installs, old caches).

The export itself (torch → ONNX → int8 → verification, minutes) is replaced by a stand-in that
writes a manifest: this test is about which directory gets rebuilt, when, under the lock, and the
message; the real export runs at the start of every fresh test session (tests/conftest.py).
"""

from __future__ import annotations

import json

from hivemem.embed import model, prepare


def _fake_build(calls: list[int]):
    def build(work, *, threads):
        calls.append(1)
        manifest = {"recipe": model.RECIPE, "default": "fp32", "variants": {}}
        (work / "manifest.json").write_text(json.dumps(manifest))
        return manifest

    return build


def test_old_recipe_is_prepared_again_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HIVEMEM_HOME", str(tmp_path))
    calls: list[int] = []
    monkeypatch.setattr(prepare, "_build", _fake_build(calls))
    old = model.model_dir()
    old.mkdir(parents=True)
    (old / "manifest.json").write_text(json.dumps({"default": "int8", "variants": {}}))  # recipe 1: no key
    (old / "model-int8.onnx").write_bytes(b"stale")

    manifest = prepare.ensure_prepared()
    assert manifest["recipe"] == model.RECIPE and calls == [1]
    assert "older recipe (1, now" in capsys.readouterr().err
    assert not (model.model_dir() / "model-int8.onnx").exists()  # the old directory was replaced whole

    assert prepare.ensure_prepared() == manifest and calls == [1]  # current now: no second export
    assert capsys.readouterr().err == ""


def test_missing_model_is_prepared_with_the_first_use_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HIVEMEM_HOME", str(tmp_path))
    calls: list[int] = []
    monkeypatch.setattr(prepare, "_build", _fake_build(calls))
    prepare.ensure_prepared()
    assert calls == [1] and "for first use" in capsys.readouterr().err
