"""The browser demo: every endpoint called through `gradio_client` on a tiny trained model, and the page driven in a
real headless Chromium (Debian's `chromium` + `chromium-driver`; the test skips, saying why, where they are absent)."""

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

gradio = pytest.importorskip("gradio", reason="the demo's optional dependency: pip install -e '.[demo]'")
from conftest import SHARED_SAMPLE, free_port, load_script, slow
from gradio_client import Client, handle_file  # noqa: E402

from modeling_xattn.training.apps.demo import MAX_UPLOAD_MB, XAttnDemo, build_demo, serve  # noqa: E402
from modeling_xattn.training.data.synthetic import synthetic_dataset  # noqa: E402
from modeling_xattn.training.inference import load_model, rank_gallery  # noqa: E402

demo_script = load_script("demo")


@pytest.fixture(scope="module")
def model_folder(trained_copy):
    return trained_copy


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos the test writes (PNG and JPEG), and a file named .jpg that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, row in enumerate(synthetic_dataset(3, seed=11)):
        path = folder / f"photo{index}.{'png' if index % 2 else 'jpg'}"
        row["image"].save(path)
        paths.append(str(path))
    bad = folder / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    return paths, str(bad)


@pytest.fixture(scope="module")
def served(model_folder):
    model, processor = load_model(str(model_folder))
    demo = build_demo(model, processor)
    port = free_port()
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)  # with the demo's own limits
    yield f"http://127.0.0.1:{port}/", XAttnDemo(model, processor)
    demo.close()


@torch.inference_mode()
def expected_caption(tasks, path, beams):
    pixel_values = tasks.processor(images=Image.open(path).convert("RGB"))["pixel_values"]
    ids = tasks.model.generate(pixel_values, num_beams=beams)
    return tasks.processor.batch_decode(ids, skip_special_tokens=True)[0]


def test_every_endpoint_through_gradio_client(served, photos):
    url, tasks = served
    paths, bad = photos
    client = Client(url, verbose=False)
    assert {"/caption", "/classify", "/rank", "/attention"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"])

    greedy = client.predict(handle_file(paths[0]), "greedy", 3, api_name="/caption")
    beam = client.predict(handle_file(paths[0]), "beam", 3, api_name="/caption")
    assert greedy == expected_caption(tasks, paths[0], 1) and greedy.strip()
    assert beam == expected_caption(tasks, paths[0], 3)

    labels = client.predict(handle_file(paths[1]), "a red circle is left of a blue square", api_name="/classify")
    confidences = {item["label"]: item["confidence"] for item in labels["confidences"]}
    assert set(confidences) == set(tasks.model.config.id2label.values())
    assert abs(sum(confidences.values()) - 1) < 1e-3 and labels["label"] == max(confidences, key=confidences.get)

    gallery, note = client.predict([handle_file(p) for p in paths + [bad]], "a green triangle", api_name="/rank")
    assert len(gallery) == 3 and "broken.jpg" in note
    pixel_values = tasks.processor(images=[Image.open(p).convert("RGB") for p in paths])["pixel_values"]
    scores, _, _ = rank_gallery(tasks.model, tasks.processor, pixel_values, ["a green triangle"], direction="t2i",
                                exhaustive=True)
    best_first = [os.path.basename(paths[i]) for i in scores[:, 0].argsort(descending=True).tolist()]
    assert [item["caption"].split(" ", 1)[1].split(":")[0] for item in gallery] == best_first

    drawn = client.predict(handle_file(paths[2]), "a blue square", api_name="/attention")
    assert Image.open(drawn).size[0] > 200

    for beams in (0, 2.5):
        with pytest.raises(Exception, match="whole number of beams from 1 to 16"):
            client.predict(handle_file(paths[0]), "beam", beams, api_name="/caption")
    for call in (lambda: client.predict(handle_file(bad), "greedy", 3, api_name="/caption"),
                 lambda: client.predict(handle_file(bad), "a circle", api_name="/classify"),
                 lambda: client.predict([handle_file(bad)], "a circle", api_name="/rank")):
        with pytest.raises(Exception, match="broken.jpg is not a readable image|None of the 1 uploads"):
            call()


def test_the_untrained_classifier_note_follows_the_classification_weight(processor):
    from modeling_xattn import XAttnConfig, XAttnForMultiTask

    for overrides, trained in (({}, True), ({"lambda_ce": 0.0}, False),
                               ({"problem_type": "multi_label_classification", "num_labels": 5}, True)):
        model = XAttnForMultiTask(XAttnConfig.from_preset("tiny", **overrides))
        assert XAttnDemo(model, processor).classifier_trained is trained, overrides


def test_demo_script_names_a_model_it_cannot_load(tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        demo_script.main(["--model", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="cannot load a model from it"):
        demo_script.main(["--model", str(tmp_path)])


def test_demo_script_serves_on_localhost_by_default(monkeypatch, model_folder):
    launched = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **options: launched.update(options, queue=self._queue))
    demo_script.main(["--model", str(model_folder)])
    queue = launched.pop("queue")
    assert launched == {"server_name": "127.0.0.1", "server_port": 7860, "max_file_size": 20 * 1024 * 1024}
    assert (queue.default_concurrency_limit, queue.max_size) == (2, 64)


def declared_size_png(path, width: int, height: int) -> None:
    """A tiny PNG whose header declares `width` x `height` pixels: a decompression bomb in a few bytes."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(path)
    data = bytearray(Path(path).read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # the IHDR chunk's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # its CRC over type and data
    Path(path).write_bytes(bytes(data))


def test_limits_under_parallel_requests_oversized_uploads_and_bombs(served, photos, tmp_path):
    """Many clients at once all get their caption; an upload over the size limit is refused before it is read, a
    declared-gigapixel PNG is refused by name, and the server still answers afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    url, tasks = served
    paths, _ = photos
    expected = expected_caption(tasks, paths[0], 1)

    def caption(path=paths[0]):
        return Client(url, verbose=False).predict(handle_file(path), "greedy", 2, api_name="/caption")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: caption(), range(16)))
    assert answers == [expected] * 16

    oversized = tmp_path / "oversized.png"
    oversized.write_bytes(b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1))
    with pytest.raises(Exception, match="exceeds the maximum file size of 20971520 bytes"):
        caption(str(oversized))  # gradio_client reads the limit from the server and does not send it
    import httpx  # a client that does send it: the server stops reading at the limit

    with oversized.open("rb") as body:
        refused = httpx.post(f"{url}gradio_api/upload", files={"files": ("oversized.png", body)}, timeout=60)
    assert refused.status_code >= 400 and "maximum allowed size" in refused.text
    bomb = tmp_path / "bomb.png"
    declared_size_png(bomb, 40_000, 40_000)  # 1.6 gigapixels declared, 70 bytes on disk
    with pytest.raises(Exception, match="bomb.png is not a readable image"):
        caption(str(bomb))
    assert caption() == expected  # still serving


def browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium here: .ci/run installs Debian's chromium and chromium-driver with apt; "
                    "where apt cannot, this test cannot run")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) drives the browser")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    # the driver is given, so selenium never fetches one
    return webdriver.Chrome(service=Service(driver), options=options)


@slow
def test_page_in_a_headless_browser(served, photos, tmp_path):
    """Load the page, upload a real photo (the COCO sample's first, or one the test writes), press Caption and find
    the caption in the page; then an unreadable upload, whose message must appear in the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, tasks = served
    paths, bad = photos
    photo = str(sorted(SHARED_SAMPLE.glob("*.jpg"))[0]) if SHARED_SAMPLE.exists() else paths[0]
    browser = browser_or_skip()
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 120)
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#caption-photo input[type=file]"))
        upload.send_keys(photo)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#caption-photo img"))
        browser.find_element(By.CSS_SELECTOR, "#caption-button").click()
        output = browser.find_element(By.CSS_SELECTOR, "#caption-output textarea")
        wait.until(lambda b: output.get_attribute("value"))
        assert output.get_attribute("value") == expected_caption(tasks, photo, tasks.default_beams)
        browser.save_screenshot(str(tmp_path / "demo.png"))

        browser.find_element(By.CSS_SELECTOR, "#caption-photo button[aria-label='Remove Image']").click()
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#caption-photo input[type=file]"))
        upload.send_keys(bad)
        time.sleep(1)
        browser.find_element(By.CSS_SELECTOR, "#caption-button").click()
        wait.until(lambda b: "broken.jpg is not a readable image" in b.find_element(By.TAG_NAME, "body").text)
        assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.quit()


def test_space_entry_point(monkeypatch, tmp_path, model_folder):
    """`app.py` (what a Space runs) serves the model its variables name, where the Space's own settings say."""
    import runpy

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XATTN_MODEL", raising=False)
    app = runpy.run_path(str(Path(__file__).resolve().parents[1] / "app.py"))
    with pytest.raises(SystemExit, match="set XATTN_MODEL"):
        app["main"]()
    launched = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **options: launched.append((self.title, options)))
    monkeypatch.setenv("XATTN_MODEL", str(model_folder))
    app["main"]()
    # the host and port are the Space's (Gradio reads them from its environment); the limits are the demo's
    assert launched == [(f"XAttn: {model_folder.name}", {"max_file_size": 20 * 1024 * 1024})]


def test_space_requirements_are_the_package_dependencies():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.strip() for line in (root / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == dependencies
    front = (root / "README.md").read_text().split("---\n")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
