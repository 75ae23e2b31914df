"""The one CLI: `chainpress --help/--version`, one flag vocabulary, and bad input answered
with one line and exit 2 (never a traceback) by every entry point."""
import errno
import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

BAD_INPUT = 2


def _run(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                "PYTHONPATH": str(REPO)})


def one_line_error(p, *needles):
    assert p.returncode == BAD_INPUT, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_lists_every_command_and_version():
    p = _run("--help")
    assert p.returncode == 0
    for cmd in ("bench", "compare", "run", "validate", "types", "seeds", "sensitivity", "kernels-bench",
                "gate-check", "isolation-check", "export", "serve", "predict"):
        assert f"  {cmd} " in p.stdout
    v = _run("--version")
    assert v.returncode == 0 and v.stdout.startswith("chainpress ")
    assert _run("bench", "--version").stdout == v.stdout


def test_readme_names_every_command_help_lists():
    import re

    from bench.cli import COMMANDS

    text = (REPO / "README.md").read_text()
    para = text[text.index("`chainpress --help` lists every job"):]
    assert re.findall(r"`([a-z-]+)`", para[:para.index(")")]) == list(COMMANDS)


def test_unknown_command_is_bad_input():
    one_line_error(_run("frobnicate"), "unknown command", "chainpress --help")


@pytest.mark.parametrize("cmd", [["bench"], ["run", "x.yaml"], ["compare", "a", "b"]])
def test_shared_flags_mean_the_same(cmd):
    p = _run(*cmd, "--help")
    assert p.returncode == 0
    for flag in ("--output", "-v, --verbose", "-q, --quiet"):
        assert flag in p.stdout, (cmd, flag)
    if cmd[0] != "compare":
        assert "--threads N" in p.stdout


def test_types_lists_fields_and_defaults():
    p = _run("types", "prune")
    assert p.returncode == 0 and p.stdout.startswith("prune:") and "heads = " in p.stdout


def _spec(tmp_path, model, stages, **top):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "t", "model": str(model), "stages": stages, **top}))
    return f


def test_binary_and_non_utf8_specs(tmp_path):
    b = tmp_path / "b.yaml"
    b.write_bytes(b"\x00\x01\x02binary")
    one_line_error(_run("validate", str(b)), "binary")
    n = tmp_path / "n.yaml"
    n.write_bytes("name: t\nstages: [{name: é}]\n".encode("latin-1"))
    one_line_error(_run("validate", str(n)), "not UTF-8")


def test_config_json_not_json(tiny_bert, tmp_path):
    (tiny_bert / "config.json").write_text("{not json")
    spec = _spec(tmp_path, tiny_bert, [{"name": "q", "type": "quantize_int8"}])
    one_line_error(_run("validate", str(spec)), "config.json is not valid JSON")
    one_line_error(_run("bench", "--model", str(tiny_bert), "--quick", "--output", str(tmp_path / "o")),
                   "config.json is not valid JSON")
    one_line_error(_run("sensitivity", str(tiny_bert), "--task", "sst2", "--output", str(tmp_path / "s")),
                   "config.json")


def test_model_without_tokenizer(tiny_bert, tmp_path):
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (tiny_bert / f).unlink(missing_ok=True)
    spec = _spec(tmp_path, tiny_bert, [{"name": "q", "type": "quantize_int8"}])
    one_line_error(_run("validate", str(spec)), "no tokenizer files")


def test_output_is_a_file(tiny_bert, tmp_path):
    spec = _spec(tmp_path, tiny_bert, [{"name": "q", "type": "quantize_int8"}])
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(_run("run", str(spec), "--output", str(f)), "is a file")
    one_line_error(_run("run", str(spec), "--output", "/proc/chainpress-out"), "cannot write")


@pytest.mark.parametrize("config,needle", [({"learning_rate": ".nan"}, "positive finite number"),
                                           ({"extra_args": {"no_such_arg": 1}}, "no_such_arg")])
def test_fine_tune_config_caught_by_validate(tiny_bert, tmp_path, config, needle):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "model": str(tiny_bert), "stages": [
        {"name": "a", "type": "finetune", "task": "sst2", "config": config}]}).replace("'.nan'", ".nan"))
    one_line_error(_run("validate", str(spec)), needle)


def test_parent_of_the_wrong_format_and_every_error_at_once(tiny_bert, tmp_path):
    spec = _spec(tmp_path, tiny_bert, [
        {"name": "a", "type": "finetune", "task": "sst2"},
        {"name": "q", "type": "quantize_onnx_int8", "parent": "a"},
        {"name": "p", "type": "prune", "parent": "source", "config": {"importance": "taylor"}},  # no task here
        {"name": "g", "type": "quantize_int8", "parent": "source", "gate": {"max_drop": 0.01}}])
    p = _run("validate", str(spec))
    assert p.returncode == BAD_INPUT and "Traceback" not in p.stderr
    assert "3 problems" in p.stderr
    assert "quantize_onnx_int8 stage reads onnx models, but stage 'a' is hf" in p.stderr
    assert "stages[2] (p): a prune stage calibrates or measures on a task" in p.stderr
    assert "stages[3] (g).gate: nothing to measure" in p.stderr


def test_disk_full_is_one_line_and_leaves_no_part_file(tmp_path, monkeypatch, capsys):
    from chain import jsonio
    from chain.cli import guarded

    target = tmp_path / "results.json"
    real_open = open

    def full(path, *a, **k):
        f = real_open(path, *a, **k)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, _):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))

        return Full()

    monkeypatch.setattr(jsonio, "open", full, raising=False)
    assert guarded(lambda: jsonio.write_json_atomic(target, {"a": 1})) == BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "no space left on device" in err and "results.json.part" in err
    assert list(tmp_path.iterdir()) == []


def test_run_exit_codes(tiny_bert, tmp_path):
    ok = _spec(tmp_path, tiny_bert, [{"name": "q", "type": "quantize_int8"}, {"name": "k", "type": "kernels",
                                                                              "parent": "source"}])
    p = _run("run", str(ok), "--output", str(tmp_path / "o"), "-q")
    assert p.returncode == 0, p.stderr[-2000:]  # the kernels stage is skipped for want of CUDA: still 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [s["status"] for s in res["stages"]] == ["ok", "skipped"]
