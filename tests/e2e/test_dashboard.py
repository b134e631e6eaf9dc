"""The dashboard in a real browser: Debian's Chromium driven by Playwright against uvicorn and a Celery worker on
PostgreSQL and Redis, with tiny models.

One stack, one browser and two models trained at the start (a classifier and a generator, through the API) are
shared by the module. Through the pages: a dataset is uploaded and a job submitted from the form (a bad
hyperparameter first, whose API message shows next to its field), its loss curve gains points while it trains and
its status reaches succeeded; the playground classifies (with the keyboard only) and streams a generation in
pieces; the models page moves an alias; every page passes the accessibility basics at 1280×800 and 390×844 with
no console error. With auth on, the shell loads without a key, a 401 asks for it once, and the key goes only in
the Authorization header — also on the event stream, which reconnects with Last-Event-ID across an API restart.

Screenshots go to $FTSERVE_TEST_ARTIFACTS/dashboard (git-ignored `test-artifacts/` is a good place), else to
the pytest temp dir; their paths are printed.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, Request, sync_playwright

from tests.conftest import REPO, live_stack
from tests.stack import Stack
from tests.tiny_gpt2 import TINY_GPT2
from tests.tinymodels import TINY_BERT, TINY_T5

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
EXAMPLES = REPO / "examples"
CLASSIFIER, GENERATOR = "reviews", "stories"
KEY = "dash-" + secrets.token_hex(8)
# What the UI job trains: long enough at one logged step each to be watched while it runs.
UI_JOB = {"max_steps": 120, "logging_steps": 1, "batch_size": 16, "eval_steps": 40}
WAIT_MS = 30_000


# --- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    with live_stack(tmp_path_factory.mktemp("dashboard"), hf_home, redis_url) as s:
        yield s


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> dict[str, str]:
    """A classifier and a generator, queued at the start so the worker trains them while the browser works."""
    jobs = {}
    for name, task, base, file, hp in [
        (CLASSIFIER, "classification", TINY_BERT, "sentiment.csv", {"max_steps": 8, "batch_size": 16}),
        (GENERATOR, "generation", TINY_GPT2, "stories.txt", {"max_steps": 8, "batch_size": 8, "block_size": 32}),
    ]:
        ds = stack.upload(EXAMPLES / file)
        assert ds.status_code == 201, ds.text
        r = stack.client.post("/jobs", json={"task": task, "base_model": base, "dataset": {"id": ds.json()["id"]},
                                             "model_name": name, "hyperparameters": hp})
        assert r.status_code == 201, r.text
        jobs[name] = r.json()["id"]
    return jobs


def trained(stack: Stack, seeded: dict[str, str], name: str) -> dict[str, Any]:
    job = stack.wait_job(seeded[name], timeout=300)
    assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))
    return job


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    b = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("FTSERVE_TEST_ARTIFACTS")
    path = Path(configured) / "dashboard" if configured else tmp_path_factory.mktemp("dashboard-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Tab:
    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def goto(self, fragment: str) -> None:
        self.page.goto(f"/ui#{fragment}" if fragment else "/ui")

    def unexpected_errors(self, *allowed: str) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]


@contextmanager
def tab(browser: Browser, base_url: str, *, size: dict[str, int] = DESKTOP) -> Iterator[Tab]:
    context = browser.new_context(base_url=base_url, viewport=size)
    context.set_default_timeout(WAIT_MS)
    t = Tab(context.new_page())
    t.page.on("console", lambda m: m.type == "error" and t.errors.append(f"{m.text} ({m.location.get('url')})"))
    t.page.on("pageerror", lambda e: t.errors.append(f"page error: {e}"))
    t.page.on("request", lambda r: t.requests.append(r))
    try:
        yield t
    finally:
        context.close()


def screenshot(page: Page, artifacts: Path, name: str) -> None:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def points(page: Page, selector: str) -> int:
    return int(page.get_attribute(selector, "data-points") or 0)


def wait_until(what: str, check: Callable[[], Any], *, page: Page | None = None, timeout: float = 60) -> Any:
    """Poll `check` until it holds. With a page, wait through it: Playwright's sync API hands the page's events
    (requests seen, console messages) over only while one of its calls runs."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if page is not None:
            page.wait_for_timeout(100)
        else:
            time.sleep(0.1)


def loss_events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    return [e for e in stack.events(job_id) if e["type"] == "metrics" and "loss" in (e["data"] or {})]


# --- tests -------------------------------------------------------------------------------------------------

def test_jobs_list_updates_by_polling(stack: Stack, seeded: dict[str, str], browser: Browser) -> None:
    with tab(browser, stack.base_url) as t:
        t.goto("/jobs")
        page = t.page
        for job_id in seeded.values():
            page.wait_for_selector(f"tr[data-job='{job_id}']")
        # A job submitted while the page is open appears, and its change of status shows, without a reload.
        ds = stack.upload(content=b"text,label\ngood,pos\nbad,neg\nfine,pos\nawful,neg\n", filename="tiny.csv").json()
        job = stack.client.post("/jobs", json={"task": "classification", "base_model": TINY_BERT,
                                               "dataset": {"id": ds["id"]}, "model_name": "scratch"}).json()
        row = f"tr[data-job='{job['id']}']"
        page.wait_for_selector(row)
        assert page.get_attribute(row, "data-status") in ("queued", "running")
        assert stack.client.post(f"/jobs/{job['id']}/cancel").status_code == 200
        page.wait_for_selector(f"{row}[data-status='cancelled']")
        # The status filter asks the API for one status only.
        page.get_by_label("Status").select_option("cancelled")
        page.wait_for_function("() => location.hash === '#/jobs?status=cancelled'")
        page.wait_for_selector(f"{row}[data-status='cancelled']")
        assert page.locator("tbody tr").count() == 1
        assert any("status=cancelled" in r.url and "/jobs?" in r.url for r in t.requests)
        assert t.unexpected_errors() == []


def test_a_job_from_the_form_trains_with_live_curves(stack: Stack, seeded: dict[str, str], browser: Browser,
                                                     artifacts: Path) -> None:
    with tab(browser, stack.base_url) as t:
        page = t.page
        t.goto("/new")
        # Submitted empty: each of the API's complaints lands under its own field.
        page.wait_for_selector("#hyperparameters input")
        page.get_by_role("button", name="Start training").click()
        for label in ("Or use an uploaded dataset", "Base model"):
            control = page.get_by_label(label, exact=True)
            page.locator(f"#{control.get_attribute('id')}-error").wait_for()
            assert control.get_attribute("aria-invalid") == "true", label
        assert "dataset" in page.locator("#form-error").inner_text()
        page.get_by_label("Upload a file").set_input_files(EXAMPLES / "sentiment.csv")
        page.wait_for_selector("#detected-columns .chip[data-column='label']")
        assert page.locator("#detected-columns .chip").all_inner_texts()[0].startswith("text")
        assert page.locator(".preview-table tbody tr").count() == 5
        assert page.get_by_label("Task").input_value() == "classification"  # guessed from the columns
        assert page.get_by_label("Label", exact=True).input_value() == "label"
        page.get_by_label("Base model").fill(TINY_BERT)
        page.get_by_label("Model name").fill(CLASSIFIER)
        for name, value in {**UI_JOB, "learning_rate": 5}.items():
            page.get_by_label(name.replace("_", " ").capitalize(), exact=True).fill(str(value))
        lr = page.get_by_label("Learning rate", exact=True)
        lr.press("Enter")  # submitted from the keyboard

        # The API's own message, next to the field it names.
        error = page.locator(f"#{lr.get_attribute('id')}-error")
        error.wait_for()
        assert "less than or equal to 1" in error.inner_text()
        assert lr.get_attribute("aria-invalid") == "true"
        assert "hyperparameters.learning_rate" in page.locator("#form-error").inner_text()
        assert page.evaluate("location.hash") == "#/new"

        lr.fill("0.001")
        page.get_by_role("button", name="Start training").click()
        page.wait_for_function("() => location.hash.startsWith('#/jobs/job_')")
        job_id = page.evaluate("location.hash").split("/")[-1]
        job = stack.client.get(f"/jobs/{job_id}").json()
        assert job["hyperparameters"]["learning_rate"] == 0.001
        assert job["hyperparameters"]["max_steps"] == UI_JOB["max_steps"]

        # The loss curve gains points while the job runs: read once while running, then again.
        loss = "#job-curves .chart[data-metric='loss']"
        page.wait_for_selector(f"{loss}:not([data-points='0'])", timeout=240_000)
        first = points(page, loss)
        # Still training after that read: the points that follow arrive while it trains.
        still = stack.client.get(f"/jobs/{job_id}").json()
        assert still["status"] == "running", f"the job was {still['status']} right after the first read ({first})"
        assert first < UI_JOB["max_steps"]
        wait_until("more loss points", lambda: points(page, loss) > first, page=page, timeout=120)
        page.wait_for_selector("#job-status .badge[data-status='succeeded']", timeout=240_000)

        # Every logged step once: as many points as the API has loss events (none lost or repeated).
        expected = len(loss_events(stack, job_id))
        assert expected == UI_JOB["max_steps"]
        wait_until("every loss point", lambda: points(page, loss) == expected, page=page, timeout=20)
        for metric in ("eval_loss", "eval_accuracy", "eval_f1_macro"):
            assert points(page, f"#job-curves .chart[data-metric='{metric}']") >= 2, metric
        page.wait_for_selector(".metric[data-metric='accuracy']")
        log_rows = page.locator(".log-table tbody tr")
        assert log_rows.count() == len(stack.events(job_id))
        assert page.locator(".log-table tbody tr[data-type='status']").last.inner_text().endswith("succeeded")
        assert page.get_by_role("link", name="Try it in the playground").is_visible()
        page.wait_for_timeout(300)  # the last frame of the charts
        screenshot(page, artifacts, "job-page")
        # The one 422 the test asked for is the only error the browser logged.
        assert t.unexpected_errors("status of 422") == []


def test_playground_classifies_with_the_keyboard_alone(stack: Stack, seeded: dict[str, str], browser: Browser,
                                                       artifacts: Path) -> None:
    trained(stack, seeded, CLASSIFIER)
    text = "a warm and funny film"
    with tab(browser, stack.base_url) as t:
        page = t.page
        t.goto("/playground/classify")
        page.wait_for_selector("#model-select option[value='reviews']", state="attached")
        # Only the keyboard: Tab to the model picker, choose a model, Tab to the text, type, Enter on the button.
        target = CLASSIFIER
        for _ in range(30):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "model-select":
                break
        else:
            raise AssertionError("Tab never reached the model picker")
        options = page.eval_on_selector_all("#model-select option", "os => os.map(o => o.value)")
        for _ in range(options.index(target)):
            page.keyboard.press("ArrowDown")
        assert page.input_value("#model-select") == target
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.name") == "text"
        page.keyboard.type(text)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Classify"
        page.keyboard.press("Enter")

        page.wait_for_selector("#scores .score")
        expected = stack.client.post("/classify", json={"model": target, "inputs": text, "top_k": None}).json()
        shown = page.eval_on_selector_all("#scores .score", "ls => ls.map(l => [l.dataset.label, +l.dataset.score])")
        assert [label for label, _ in shown] == [p["label"] for p in expected["predictions"][0]]
        for (_, score), p in zip(shown, expected["predictions"][0], strict=True):
            assert score == pytest.approx(p["score"], abs=1e-6)
        assert page.locator(".served-by [data-model]").inner_text() == expected["model"]
        assert page.locator("#scores .score.top .score-label").inner_text() == expected["predictions"][0][0]["label"]
        screenshot(page, artifacts, "playground-classify")
        assert t.unexpected_errors() == []


def test_playground_streams_a_generation_in_pieces(stack: Stack, seeded: dict[str, str], browser: Browser,
                                                   artifacts: Path) -> None:
    trained(stack, seeded, GENERATOR)
    prompt = "In the morning the fox"
    with tab(browser, stack.base_url) as t:
        page = t.page
        t.goto(f"/playground/generate?model={GENERATOR}")
        page.get_by_label("Prompt").fill(prompt)
        page.get_by_label("Max new tokens").fill("24")
        page.get_by_label("Min new tokens").fill("24")
        # Each piece as it lands in the page, with the time it landed.
        page.evaluate("""() => {
            window.__pieces = [];
            new MutationObserver(() => {
                const out = document.querySelector('#generation .produced');
                if (out) window.__pieces.push([performance.now(), out.textContent.length]);
            }).observe(document.getElementById('output'), {childList: true, subtree: true, characterData: true});
        }""")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_selector("#generation[data-done='true']")
        chunks = int(page.get_attribute("#generation", "data-chunks") or 0)
        text = page.locator("#generation .produced").inner_text()
        pieces = page.evaluate("window.__pieces")
        lengths = sorted({n for _, n in pieces if n > 0})
        assert chunks > 1 and len(lengths) > 1, (chunks, pieces)
        # The streamed text is the text the API generates (greedy), whole.
        r = stack.client.post("/generate", json={"model": GENERATOR, "prompt": prompt, "max_new_tokens": 24,
                                                 "min_new_tokens": 24})
        assert text == r.json()["generations"][0]["text"]
        assert "24 tokens" in page.locator("#generation-status").inner_text()
        screenshot(page, artifacts, "playground-generate")
        assert t.unexpected_errors() == []


@pytest.fixture(scope="module")
def two_versions(stack: Stack, seeded: dict[str, str]) -> int:
    """The classifier with two versions: the UI job made the second when it ran; else one more is trained."""
    trained(stack, seeded, CLASSIFIER)
    versions = stack.client.get(f"/models/{CLASSIFIER}").json()["versions"]
    if len(versions) < 2:
        ds = stack.upload(EXAMPLES / "sentiment.csv").json()
        r = stack.client.post("/jobs", json={"task": "classification", "base_model": TINY_BERT,
                                             "model_name": CLASSIFIER, "dataset": {"id": ds["id"]},
                                             "hyperparameters": {"max_steps": 4}})
        assert stack.wait_job(r.json()["id"])["status"] == "succeeded"
        versions = stack.client.get(f"/models/{CLASSIFIER}").json()["versions"]
    return len(versions)


def test_models_page_moves_an_alias(stack: Stack, two_versions: int, browser: Browser) -> None:
    with tab(browser, stack.base_url) as t:
        page = t.page
        t.goto("/models")
        page.get_by_role("link", name=CLASSIFIER, exact=True).click()
        page.wait_for_selector(".versions-table tbody tr")
        assert page.locator(".versions-table tbody tr").count() == two_versions
        # Metrics side by side: one column per metric, a cell per version.
        for metric in ("accuracy", "f1_macro", "eval_loss"):
            assert page.locator(f".versions-table td[data-metric='{metric}']").count() == two_versions

        def alias_row() -> str | None:
            return page.get_attribute(".versions-table .chip-alias[data-alias='production']", "data-version") \
                if page.locator(".versions-table .chip-alias[data-alias='production']").count() else None

        for version in (1, two_versions):
            page.get_by_label("Alias", exact=True).fill("production")
            page.get_by_label("Version", exact=True).select_option(str(version))
            page.get_by_role("button", name="Move alias", exact=True).click()
            wait_until(f"production on v{version}", lambda v=version: alias_row() == str(v), page=page, timeout=20)
            chip_row = page.locator(".versions-table tr", has=page.locator(".chip-alias[data-alias='production']"))
            assert chip_row.get_attribute("data-version") == str(version)
            assert stack.client.get(f"/models/{CLASSIFIER}").json()["aliases"] == {"production": version}

        # The chosen version: its card, rendered, and the curves of the job that made it.
        page.wait_for_selector(".model-card .markdown h3")
        assert page.locator(".model-card .markdown table").count() >= 1
        page.wait_for_selector("#version-curves .chart[data-metric='loss']:not([data-points='0'])")
        assert t.unexpected_errors() == []


@pytest.fixture(scope="module")
def reader_and_summarizer(stack: Stack) -> dict[str, str]:
    """A question-answering and a summarization model, trained when first needed: a few steps each, since the
    pages are under test here, not the models."""
    jobs = {}
    for name, task, base, file, hp in [
        ("shop-qa", "question-answering", TINY_BERT, "qa.jsonl",
         {"max_steps": 4, "batch_size": 8, "max_length": 96, "doc_stride": 32}),
        ("town-news", "summarization", TINY_T5, "summaries.jsonl",
         {"max_steps": 4, "batch_size": 8, "max_length": 128, "max_target_length": 24}),
    ]:
        ds = stack.upload(EXAMPLES / file).json()
        r = stack.client.post("/jobs", json={"task": task, "base_model": base, "dataset": {"id": ds["id"]},
                                             "model_name": name, "hyperparameters": hp})
        assert r.status_code == 201, r.text
        jobs[task] = r.json()["id"]
    for job_id in jobs.values():
        job = stack.wait_job(job_id, timeout=300)
        assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))
    return {task: job_id for task, job_id in jobs.items()}


def test_playground_highlights_the_answer_and_summarizes(stack: Stack, reader_and_summarizer: dict[str, str],
                                                         browser: Browser) -> None:
    context = ("Mira Lund opened a bakery in Oslo in 1998. At first only a few neighbours came by, but within a year "
               "people travelled from other towns to buy its bread.")
    question = "Who opened a bakery in Oslo?"
    document = "The town of Alder opened a new library on Saturday. Hundreds of people came to see it."
    with tab(browser, stack.base_url) as t:
        page = t.page
        t.goto("/playground/answer?model=shop-qa")
        page.get_by_label("Context").fill(context)
        page.get_by_label("Question").fill(question)
        page.get_by_role("button", name="Answer", exact=True).click()
        page.wait_for_selector("#answer-context mark", state="attached")
        expected = stack.client.post("/answer", json={"model": "shop-qa", "question": question,
                                                      "context": context}).json()["answers"][0]
        # The span the API gave, marked where it stands in the context, which is shown whole.
        assert page.locator("#answer-context mark").text_content() == context[expected["start"]:expected["end"]]
        assert page.locator("#answer-context").text_content() == context
        assert page.locator("#answer-text").text_content() == (expected["answer"] or "(no answer)")

        t.goto("/playground/summarize?model=town-news")
        page.get_by_label("Document").fill(document)
        page.get_by_text("Parameters").click()  # folded away by default
        page.get_by_label("Max new tokens").fill("12")
        page.get_by_role("button", name="Summarize", exact=True).click()
        page.wait_for_selector("#summary")
        r = stack.client.post("/summarize", json={"model": "town-news", "inputs": document, "max_new_tokens": 12})
        assert page.locator("#summary").text_content() == r.json()["summaries"][0]
        assert t.unexpected_errors() == []


def test_model_cards_render_with_raw_html_disabled(stack: Stack, browser: Browser) -> None:
    card = ("---\nlicense: mit\n---\n# Card <script>window.__ran = 1</script>\n\n"
            "<img src=x onerror=\"window.__ran=2\">\n\n"
            "Some **bold** and `code`, [a link](https://example.org) and [bad](javascript:window.__ran=3).\n\n"
            "| a | b |\n|---|---|\n| <b>1</b> | 2 |\n\n- one\n- two\n\n```\n<i>code</i>\n```\n")
    with tab(browser, stack.base_url) as t:
        t.goto("/jobs")
        t.page.wait_for_selector("h1")
        found = t.page.evaluate("""async (text) => {
            const { renderMarkdown } = await import('/ui/js/markdown.js');
            const el = renderMarkdown(text);
            document.body.append(el);
            await new Promise(r => setTimeout(r, 100));
            return { html: el.innerHTML, text: el.textContent, ran: window.__ran ?? null,
                     tags: [...el.querySelectorAll('*')].map(e => e.tagName.toLowerCase()),
                     hrefs: [...el.querySelectorAll('a')].map(a => a.getAttribute('href')) };
        }""", card)
    assert found["ran"] is None
    assert not {"script", "img", "b", "i"} & set(found["tags"]), found["tags"]
    assert {"h3", "strong", "code", "table", "ul", "pre", "details"} <= set(found["tags"])
    assert found["hrefs"] == ["https://example.org"]
    assert "<script>window.__ran = 1</script>" in found["text"] and "<b>1</b>" in found["text"]


# Pages and the element that says each has drawn.
PAGES = [("/jobs", "tbody tr"), ("/new", "#hyperparameters input"), ("/models", ".models-table tbody tr"),
         (f"/models/{CLASSIFIER}", "#version-curves .chart"), ("/playground/classify", "#model-select"),
         ("/playground/answer", "#model-select"), ("/playground/summarize", "#model-select"),
         ("/playground/generate", "#model-select")]

A11Y = """() => {
    const unlabelled = [...document.querySelectorAll('input, select, textarea')].filter(el =>
        !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
        .map(el => el.outerHTML.slice(0, 120));
    const offscreen = [...document.querySelectorAll('nav a, h1, main button, main a.btn')].filter(el => {
        const r = el.getBoundingClientRect();
        return r.width > 0 && (r.right > innerWidth + 1 || r.left < -1) && !el.closest('.table-wrap, .tabs, .nav');
    }).map(el => el.outerHTML.slice(0, 120));
    return { unlabelled, offscreen, overflow: document.scrollingElement.scrollWidth - innerWidth,
             h1: document.querySelectorAll('h1').length };
}"""


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
def test_every_page_passes_the_accessibility_basics(stack: Stack, seeded: dict[str, str], two_versions: int,
                                                    browser: Browser, size: dict[str, int]) -> None:
    trained(stack, seeded, GENERATOR)
    pages = [*PAGES, (f"/jobs/{seeded[CLASSIFIER]}", ".log-table tbody tr")]
    with tab(browser, stack.base_url, size=size) as t:
        for fragment, drawn in pages:
            t.goto(fragment)
            t.page.wait_for_selector(drawn)
            t.page.wait_for_load_state("networkidle")
            found = t.page.evaluate(A11Y)
            assert found["unlabelled"] == [], (fragment, found["unlabelled"])
            assert found["overflow"] <= 0, (fragment, f"the page is {found['overflow']}px wider than the screen")
            assert found["offscreen"] == [], (fragment, found["offscreen"])
            assert found["h1"] == 1, fragment
        assert t.unexpected_errors() == [], t.errors


# --- auth on -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    """Auth on, API only: its jobs stay queued (no worker), which is all the stream needs here."""
    with live_stack(tmp_path_factory.mktemp("dashboard_keyed"), hf_home, redis_url, workers=0,
                    FTSERVE_API_KEYS=f"alice:{KEY}") as s:
        s.client.headers["Authorization"] = f"Bearer {KEY}"
        yield s


def restart_api(stack: Stack) -> None:
    """As after a crash: killed at once, so every open stream breaks."""
    stack.stop("api", signal.SIGKILL)
    stack.start_api()
    wait_until("the API back", lambda: _ready(stack), timeout=120)


def _ready(stack: Stack) -> bool:
    try:
        return stack.client.get("/readyz").status_code == 200
    except Exception:
        return False


def test_with_auth_the_key_is_asked_once_and_sent_only_as_a_header(keyed: Stack, browser: Browser,
                                                                     artifacts: Path) -> None:
    ds = keyed.upload(content=b"text,label\ngood,pos\nbad,neg\n", filename="k.csv").json()
    job = keyed.client.post("/jobs", json={"task": "classification", "base_model": TINY_BERT,
                                           "dataset": {"id": ds["id"]}}).json()
    with tab(browser, keyed.base_url) as t:
        page = t.page
        shell = page.goto("/ui")
        assert shell is not None and shell.status == 200  # the page itself needs no key
        dialog = page.locator("#key-dialog")
        dialog.wait_for()
        assert "needs an API key" in page.locator("#key-reason").inner_text()
        screenshot(page, artifacts, "key-prompt")
        page.get_by_role("textbox", name="API key").fill("not-the-key")
        page.keyboard.press("Enter")
        page.wait_for_selector("#key-reason:has-text('refused')")
        page.get_by_role("textbox", name="API key").fill(KEY)
        page.keyboard.press("Enter")
        page.wait_for_selector(f"tr[data-job='{job['id']}']")
        assert not dialog.is_visible()
        assert page.evaluate("sessionStorage.getItem('ftserve.apiKey')") == KEY
        assert page.evaluate("localStorage.length") == 0  # this tab's session only

        # Kept for the session: a reload asks again for nothing.
        page.reload()
        page.wait_for_selector(f"tr[data-job='{job['id']}']")
        assert not dialog.is_visible()

        # The job page's stream is read with fetch() and the key; across an API restart it resumes after the
        # last event it had (Last-Event-ID), so the queued event is not repeated and the cancel arrives.
        t.goto(f"/jobs/{job['id']}")
        page.wait_for_selector(".log-table tbody tr[data-type='status']")
        page.wait_for_selector(".stream-state[data-state='live']")
        restart_api(keyed)
        wait_until("a resumed stream", lambda: any(
            r.url.endswith("/events") and r.headers.get("last-event-id") == "1" for r in t.requests),
            page=page, timeout=60)
        page.wait_for_selector(".stream-state[data-state='live']")
        assert keyed.client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        page.wait_for_selector("#job-status .badge[data-status='cancelled']")
        page.wait_for_selector(".log-table tbody tr:nth-child(2)")
        events = keyed.events(job["id"])
        assert page.locator(".log-table tbody tr").count() == len(events) == 2
        assert "cancelled" in page.locator(".log-table tbody tr").last.inner_text()

    # The key never entered a URL; every data call carried it in the header.
    assert not [r.url for r in t.requests if KEY in r.url]
    data_calls = [r for r in t.requests if "/ui" not in r.url and not r.url.endswith("/favicon.ico")]
    assert data_calls
    keyed_calls = [r for r in data_calls if r.headers.get("authorization") == f"Bearer {KEY}"]
    unkeyed = [r.url for r in data_calls if "authorization" not in r.headers]
    wrong = [r for r in data_calls if r.headers.get("authorization") == "Bearer not-the-key"]
    assert len(unkeyed) == 1 and len(wrong) == 1, (unkeyed, len(wrong))  # the two refused before the key was in
    assert len(keyed_calls) == len(data_calls) - 2
    # Expected: the two 401s, and the restart's refused connections.
    assert t.unexpected_errors("status of 401", "ERR_CONNECTION_REFUSED", "ERR_EMPTY_RESPONSE",
                               "ERR_INCOMPLETE_CHUNKED_ENCODING") == []
