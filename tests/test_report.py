"""The HTML report: spans coloured by the winning members, escaping of untrusted model text, evaluation
directories with links into each item's trace, the ``report`` command, and the pages in a real headless
Chromium (the script runs without console errors under the page's own Content-Security-Policy)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from fakes import EOS, ScriptedMember
from typer.testing import CliRunner

from adafuse.cli import app
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.errors import DataError
from adafuse.evaluation.runner import run_eval
from adafuse.evaluation.tasks import custom_task
from adafuse.report import build_report, write_report
from adafuse.report.html import PALETTE, result_report
from adafuse.result import Candidate, MemberTelemetry, Proposal, Result, Round, Telemetry

PAYLOAD = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
EVIL_NAME = 'evil"><script>document.body.setAttribute("data-pwned","2")</script>'


def handmade() -> Result:
    """Two rounds: both members agree on some markup-looking text (fast path), then a fused round whose
    winning candidate carries an HTML payload and a newline that the stop string cut off."""
    members = ["good", EVIL_NAME]
    r0 = Round(
        index=0,
        proposals=[Proposal(m, [0.9], False, ["<b>bold</b>"]) for m in members],
        candidates=[Candidate("<b>bold</b>", proposers=list(members))],
        chosen=0,
        committed="<b>bold</b>",
        fast_path=True,
    )
    r1 = Round(
        index=1,
        proposals=[
            Proposal("good", [0.2, 0.1], True, [PAYLOAD + "\n", " x"]),
            Proposal(EVIL_NAME, [0.8], False, [" x"]),
        ],
        candidates=[
            Candidate(PAYLOAD + "\n", proposers=["good"], scores={"good": 0.5, EVIL_NAME: 1.5}, combined=1.0),
            Candidate(" x", proposers=["good", EVIL_NAME], scores={"good": 2.0, EVIL_NAME: 0.5}, combined=1.25),
        ],
        chosen=0,
        committed=PAYLOAD + "\n",
        fast_path=False,
    )
    return Result(
        text="<b>bold</b>" + PAYLOAD,
        finish_reason="stop",
        rounds=[r0, r1],
        telemetry=Telemetry(members=[MemberTelemetry(m, 3, 10, 5, 4) for m in members], rounds=2, fast_path_rounds=1),
        models=members,
        config={"theta": 0.7, "stop": ["\n"]},
    )


def spans(html: str) -> list[str]:
    return re.findall(r'<span class="seg"[^>]*>', html)


# ------------------------------------------------------------------------------------------------ the page


def test_model_text_is_escaped_everywhere_and_only_our_script_is_on_the_page():
    html = build_report_for(handmade())
    assert html.count("<script") == 1 and "<b>bold</b>" not in html and "<img" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "&lt;img src=x onerror=" in html
    # Nothing may load from anywhere: a policy allowing only our own script (by hash) and inline styles.
    assert "default-src 'none'" in html and "script-src 'sha256-" in html


def test_spans_follow_the_rounds_with_the_winners_colours_and_the_cut_text_struck_through():
    html = build_report_for(handmade())
    first, second = spans(html)
    # Round 0: both members proposed the winner, so stripes of both colours; round 1: one member, one colour.
    assert "repeating-linear-gradient" in first and PALETTE[0] in first and PALETTE[1] in first
    assert "repeating-linear-gradient" not in second and PALETTE[0] in second
    assert 'data-round-ref="t-r0"' in first and 'data-round-ref="t-r1"' in second
    assert '<s class="cut">' in html  # the newline the stop string cut off
    assert html.count('<section class="round"') == 2 and 'class="chosen"' in html
    assert html.count('<svg class="chart"') == 2


def test_a_trace_that_does_not_spell_its_text_is_shown_plainly():
    result = handmade()
    result.text = "something else"
    html = build_report_for(result)
    assert not spans(html) and "do not spell the final text" in html


def build_report_for(result: Result) -> str:
    return result_report(result, "t")


def test_bad_inputs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        build_report(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"not": "a result"}')
    with pytest.raises(DataError, match="not an adafuse result"):
        build_report(tmp_path / "x.json")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="not an evaluation directory"):
        build_report(tmp_path / "dir")


def test_the_report_command_writes_the_page_and_fails_in_one_line(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text(handmade().to_json())
    out = tmp_path / "sub" / "report.html"
    res = CliRunner().invoke(app, ["report", str(trace), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope.json"), "--out", str(out)])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and res.output.startswith("error: ")


# ------------------------------------------------------------------------------------- evaluation directories

ANSWERS = {
    "What is the capital of France?": (["Paris"], " Paris"),
    "Who wrote Hamlet?": (["Shakespeare"], " Shakespeare"),
    "What is two plus two?": (["four"], " five"),
}


def speller(word_level: bool):
    """A member that answers each question with ANSWERS' text and a newline: ``word_level`` ones in whole
    words and unsure of the first (they branch), character-level ones letter by letter and sure."""

    def script(text: str) -> dict[str, float]:
        head, _, written = text.rpartition("\nAnswer:")
        target = ANSWERS.get(head.rpartition("Question: ")[2], ([], " unknown"))[1] + "\n"
        if not target.startswith(written) or written == target:
            return {EOS: 0.9}
        if word_level:
            return {target[len(written) :].split("\n")[0] or "\n": 0.6, " the": 0.3}
        return {target[len(written)]: 0.9}

    return script


def fake_ensemble() -> Ensemble:
    words = [a for _, a in ANSWERS.values()] + [" the", "\n", "Question", "Answer"]
    return Ensemble([ScriptedMember("words", words, speller(True)), ScriptedMember("letters", ["\n"], speller(False))])


def make_eval_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": g}) + "\n" for q, (g, _) in ANSWERS.items()))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer each question.\n\nQuestion: What is one plus one?\nAnswer: two\n")
    task = custom_task(data, prompt, kind="qa", name="tiny")
    ens = fake_ensemble()
    out = tmp_path / "run"
    run_eval(task, ens, DecodeConfig(), out, progress=False)
    # The runner keeps each item's trace in its predictions line; drop the last one's (as an item that
    # failed has none) so the page shows both cases.
    preds = out / "predictions.jsonl"
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert all("trace" in r for r in records)
    del records[-1]["trace"]
    preds.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def test_an_eval_dir_lists_every_item_with_its_correctness_and_links_to_its_trace(tmp_path):
    run = make_eval_dir(tmp_path)
    html = build_report(run)
    for i in range(len(ANSWERS)):
        assert f'href="#item-{i}"' in html and f'id="item-{i}"' in html
    assert html.count('<td class="good">✓</td>') == 2 and html.count('<td class="bad">✗</td>') == 1
    assert "2 of 3 items have a trace" in html and "No trace recorded" in html
    # Each traced item's answer is made of its rounds' spans, with ids unique on the page.
    refs = re.findall(r'data-round-ref="([^"]+)"', html)
    assert refs and all(f'id="{r}"' in html for r in refs) and len(set(refs)) == len(refs)
    # " Paris" was proposed by both members (the letter-level one spelled it out), so it is striped.
    assert any("repeating-linear-gradient" in s for s in spans(html))


# ------------------------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing and we are root; skipped only if impossible."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=900)
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, env=env, timeout=1800)
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("chromium is not installed and could not be installed (needs root and apt-get with network)")


def browse(chromium: str, page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def check_in_browser(chromium: str, page: Path, tmp: Path, n_spans: int, width: int = 1400, height: int = 900) -> Path:
    """Load the page: the script ran (it marks the body with the number of spans it wired up and shows the
    first round in the side panel), nothing went to the console (no script error, no policy violation),
    injected markup did nothing; then a screenshot of the given size."""
    dom = browse(chromium, page, tmp, "--dump-dom")
    assert f'data-report-ready="{n_spans}"' in dom.stdout
    panel = dom.stdout.split('id="panel-body"', 1)[1]
    assert panel.lstrip(">").startswith('<section class="round"')
    assert not re.search(r"<body[^>]*data-pwned", dom.stdout)  # the injected handlers never ran
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    shot = tmp / (page.stem + ".png")
    browse(chromium, page, tmp, f"--screenshot={shot}", f"--window-size={width},{height}", "--hide-scrollbars")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (width, height)
    assert len(data) > 20_000  # a rendered page, not a blank one
    return shot


def test_handmade_trace_in_a_real_browser(chromium, tmp_path):
    page = write_report_from(handmade(), tmp_path)
    check_in_browser(chromium, page, tmp_path, n_spans=2)


def write_report_from(result: Result, tmp_path: Path) -> Path:
    trace = tmp_path / "trace.json"
    trace.write_text(result.to_json())
    return write_report(trace, tmp_path / "report.html", title="adafuse trace")


def test_eval_dir_report_in_a_real_browser(chromium, tmp_path):
    page = write_report(make_eval_dir(tmp_path), tmp_path / "eval.html")
    check_in_browser(chromium, page, tmp_path, n_spans=len(spans(page.read_text())))


@pytest.mark.models
def test_report_of_a_real_generation_in_a_real_browser(chromium, zoo_members, tmp_path):
    ens = Ensemble(zoo_members)
    result = ens.generate(
        "Question: Which British king married Mary of Teck?\nAnswer:", DecodeConfig(stop=("\n",), max_new_tokens=12)
    )
    assert result.rounds
    # Through JSON, as `adafuse generate --json` hands it over.
    page = write_report_from(Result.from_dict(json.loads(result.to_json())), tmp_path)
    html = page.read_text()
    assert len(spans(html)) == len(result.rounds)
    assert html.count('<svg class="chart"') == len(zoo_members)
    shot = check_in_browser(chromium, page, tmp_path, n_spans=len(result.rounds))
    if os.environ.get("ADAFUSE_SAVE_REPORT_PNG"):
        shutil.copyfile(shot, os.environ["ADAFUSE_SAVE_REPORT_PNG"])
